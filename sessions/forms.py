from __future__ import annotations

import json
from typing import Any

from django import forms
from django.conf import settings

from sessions import catalog
from sessions.models import TrainingSession


class StartTrainingForm(forms.Form):
    """The one set of rules for starting a run: used by the page, the JSON API and
    the start_training command, so all three give the same messages.

    Field names are the API's (camelCase), so an error names the field the caller sent.
    """

    modelType = forms.ChoiceField(
        choices=[(k, c.label) for k, c in catalog.MODEL_TYPES.items()],
        error_messages={
            "invalid_choice": "Unknown model type %(value)s; choose one of "
            + ", ".join(catalog.MODEL_TYPES)
        },
    )
    dataset = forms.ChoiceField(
        choices=[(k, c.label) for k, c in catalog.DATASETS.items()],
        required=False,
        error_messages={
            "invalid_choice": "Unknown data set %(value)s; choose one of "
            + ", ".join(catalog.DATASETS)
        },
    )
    epochs = forms.IntegerField(
        required=False,
        min_value=1,
        max_value=settings.MLTRACK_MAX_EPOCHS,
        error_messages={
            "min_value": "epochs must be at least %(limit_value)s",
            "max_value": "epochs must be at most %(limit_value)s",
            "invalid": "epochs must be a whole number",
        },
    )
    params = forms.JSONField(required=False)

    def clean_dataset(self) -> str:
        return self.cleaned_data.get("dataset") or "digits"

    def clean_epochs(self) -> int:
        epochs = self.cleaned_data.get("epochs")
        return catalog.DEFAULT_EPOCHS if epochs is None else epochs

    def clean_params(self) -> dict[str, Any]:
        params = self.cleaned_data.get("params")
        if params in (None, ""):
            return {}
        if isinstance(params, str):
            try:
                params = json.loads(params)
            except ValueError:
                raise forms.ValidationError("params must be a JSON object") from None
        if not isinstance(params, dict):
            raise forms.ValidationError("params must be a JSON object")
        return params

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        self.param_errors: dict[str, str] = {}
        model_type, dataset = data.get("modelType"), data.get("dataset")
        if model_type and dataset and "params" in data:
            cleaned, errors = catalog.clean_params(model_type, dataset, data["params"])
            for name, message in errors.items():
                self.param_errors[f"params.{name}"] = message
                self.add_error("params", message)
            data["params"] = cleaned
        return data

    def field_errors(self) -> dict[str, str]:
        """One message per field; parameters are named "params.<name>"."""
        errors = {name: " ".join(messages) for name, messages in self.errors.items()}
        if getattr(self, "param_errors", None):
            del errors["params"]
            errors.update(self.param_errors)
        return errors

    def save(self, owner: Any) -> TrainingSession:
        from sessions.tasks import run_training

        data = self.cleaned_data
        session = TrainingSession.objects.create(
            owner=owner,
            model_type=data["modelType"],
            dataset=data["dataset"],
            params=data["params"],
            total_epochs=data["epochs"],
        )
        run_training.delay_on_commit(session.pk)
        return session
