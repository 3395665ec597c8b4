from __future__ import annotations

import json
import math
from typing import Any

from django import forms
from django.conf import settings

from sessions import catalog, events, training
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
    # Only with dataset "csv": the file and the name of its class column.
    csvFile = forms.FileField(
        required=False,
        error_messages={
            "invalid": "csvFile must be an uploaded file (multipart/form-data)",
            "empty": "csvFile is empty",
        },
    )
    targetColumn = forms.CharField(required=False, max_length=200, strip=True)

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
        if dataset == catalog.CSV_DATASET:
            self._check_csv(data)
        elif data.get("csvFile"):
            self.add_error("csvFile", 'csvFile is only used with dataset "csv"')
        return data

    def _check_csv(self, data: dict[str, Any]) -> None:
        """Read the upload now, so a file that cannot be trained on is refused
        before any session exists, with a message naming the field to fix."""
        upload = data.get("csvFile")
        target = data.get("targetColumn")
        if not upload:
            if "csvFile" not in self.errors:
                self.add_error("csvFile", 'Upload a CSV file for dataset "csv"')
            return
        limit = settings.MLTRACK_MAX_UPLOAD_MB
        if upload.size > limit * 2**20:
            self.add_error(
                "csvFile",
                f"The file is {upload.size / 2**20:.1f} MB; the limit is {limit} MB",
            )
            return
        if not target:
            self.add_error("targetColumn", "Name the column that holds the classes")
            return
        upload.seek(0)
        try:
            text = upload.read().decode("utf-8-sig")
        except UnicodeDecodeError:
            self.add_error("csvFile", "The file is not UTF-8 text; is it a CSV?")
            return
        finally:
            upload.seek(0)
        try:
            parsed = training.parse_csv(text, target)
        except training.DataError as exc:
            self.add_error(exc.field, str(exc))
            return
        self._check_split(data, parsed)

    def _check_split(self, data: dict[str, Any], parsed: training.Dataset) -> None:
        # The held-out split must have room for every class, or stratifying fails.
        params = data.get("params")
        if not isinstance(params, dict) or "validation_split" not in params:
            return
        rows, classes = len(parsed.y), len(parsed.class_names)
        held_out = math.ceil(rows * params["validation_split"])
        if params["stratify"] and min(held_out, rows - held_out) < classes:
            message = (
                f"validation_split {params['validation_split']:g} holds out "
                f"{held_out} of {rows} rows, fewer than the {classes} classes: use "
                "a larger share, more rows or stratify false"
            )
            self.param_errors["params.validation_split"] = message
            self.add_error("params", message)

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
        is_csv = data["dataset"] == catalog.CSV_DATASET
        session = TrainingSession.objects.create(
            owner=owner,
            model_type=data["modelType"],
            dataset=data["dataset"],
            params=data["params"],
            total_epochs=data["epochs"],
            data_file=data["csvFile"] if is_csv else "",
            target_column=data["targetColumn"] if is_csv else "",
        )
        # Announced before a worker can take it: announced after, a fast worker's
        # "running" reached viewers before "queued" (on SQLite the announcement's
        # INSERT waited for the worker's write lock).
        events.push_status(session, "training_status")
        run_training.delay_on_commit(session.pk)
        return session
