"""What can be trained: model types, data sets and their parameters.

Plain data with no scikit-learn import, so the web process can validate a request
and describe the choices without loading the ML stack. `training.py` reads the
cleaned parameters this module produces.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

SCHEDULES = ("constant", "step", "cosine")


@dataclass(frozen=True)
class Param:
    name: str
    kind: str  # "int", "float", "choice", "bool" or "layers"
    default: Any
    help: str
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()
    nullable: bool = False

    def clean(self, value: Any) -> Any:
        """Return the value converted to this parameter's type, or raise ValueError
        with a message a person can act on."""
        if value is None or value == "":
            if self.nullable:
                return None
            raise ValueError("is required")
        if self.kind == "bool":
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on"):
                return True
            if isinstance(value, str) and value.lower() in ("false", "0", "no", "off"):
                return False
            raise ValueError("must be true or false")
        if self.kind == "choice":
            if value not in self.choices:
                raise ValueError(f"must be one of {', '.join(self.choices)}")
            return value
        if self.kind == "layers":
            return self._clean_layers(value)
        number = self._to_number(value)
        if self.minimum is not None and number < self.minimum:
            raise ValueError(f"must be at least {self.minimum:g}")
        if self.maximum is not None and number > self.maximum:
            raise ValueError(f"must be at most {self.maximum:g}")
        return number

    def _to_number(self, value: Any) -> int | float:
        if isinstance(value, bool):
            raise ValueError(
                f"must be {'an integer' if self.kind == 'int' else 'a number'}"
            )
        try:
            if self.kind == "int":
                if isinstance(value, float) and not value.is_integer():
                    raise ValueError
                return int(value) if not isinstance(value, str) else int(value.strip())
            number = float(value)
        except (TypeError, ValueError):
            what = "an integer" if self.kind == "int" else "a number"
            raise ValueError(f"must be {what}, not {value!r}") from None
        if number != number or number in (float("inf"), float("-inf")):
            raise ValueError("must be a finite number")
        return number

    def _clean_layers(self, value: Any) -> list[int]:
        if isinstance(value, str):
            parts = [p.strip() for p in value.split(",") if p.strip()]
        elif isinstance(value, list | tuple):
            parts = list(value)
        else:
            raise ValueError('must be layer sizes such as "64,32"')
        if not 1 <= len(parts) <= 5:
            raise ValueError("must list between 1 and 5 layer sizes")
        sizes = []
        for part in parts:
            try:
                size = int(part)
            except (TypeError, ValueError):
                raise ValueError(
                    f'must be layer sizes such as "64,32", not {value!r}'
                ) from None
            if not 1 <= size <= 1024:
                raise ValueError("each layer size must be between 1 and 1024")
            sizes.append(size)
        return sizes

    def describe(self) -> dict[str, Any]:
        described = asdict(self)
        described["choices"] = list(self.choices)
        return described


@dataclass(frozen=True)
class Choice:
    key: str
    label: str
    description: str
    params: tuple[Param, ...] = field(default_factory=tuple)

    def describe(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "label": self.label,
            "description": self.description,
            "params": [p.describe() for p in self.params],
        }


_SCHEDULE_PARAMS = (
    Param(
        "schedule", "choice", "constant", "Learning-rate schedule", choices=SCHEDULES
    ),
    Param("step_size", "int", 10, "Epochs between decays (step schedule)", 1, 10_000),
    Param("decay", "float", 0.5, "Factor applied every step_size epochs", 0.01, 1.0),
)

# Parameters every model type takes: how the data is split and the random seed.
COMMON_PARAMS = (
    Param(
        "validation_split",
        "float",
        0.2,
        "Share of rows held out for validation",
        0.05,
        0.5,
    ),
    Param("stratify", "bool", True, "Keep class proportions in the split"),
    Param(
        "random_state",
        "int",
        42,
        "Seed: the same seed gives the same metrics",
        0,
        2**31 - 1,
    ),
)

MODEL_TYPES: dict[str, Choice] = {
    c.key: c
    for c in (
        Choice(
            "randomforest",
            "Random Forest",
            "An epoch adds a batch of trees (warm_start).",
            (
                Param("trees_per_epoch", "int", 10, "Trees added each epoch", 1, 500),
                Param(
                    "max_depth",
                    "int",
                    None,
                    "Maximum tree depth (empty: unlimited)",
                    1,
                    100,
                    nullable=True,
                ),
                Param(
                    "min_samples_leaf", "int", 1, "Minimum samples in a leaf", 1, 1000
                ),
                Param(
                    "max_features",
                    "choice",
                    "sqrt",
                    "Features tried at each split",
                    choices=("sqrt", "log2", "all"),
                ),
            ),
        ),
        Choice(
            "gradientboosting",
            "Gradient Boosting",
            "An epoch adds boosting stages (warm_start); reports its learning rate.",
            (
                Param(
                    "stages_per_epoch",
                    "int",
                    5,
                    "Boosting stages added each epoch",
                    1,
                    200,
                ),
                Param(
                    "learning_rate", "float", 0.1, "Shrinkage of each stage", 0.001, 1.0
                ),
                Param("max_depth", "int", 3, "Depth of each regression tree", 1, 20),
                Param(
                    "subsample", "float", 1.0, "Share of rows used per stage", 0.1, 1.0
                ),
            ),
        ),
        Choice(
            "mlp",
            "Neural Network (MLP)",
            "An epoch is one pass of partial_fit over the shuffled training data.",
            (
                Param(
                    "hidden_layer_sizes", "layers", [64, 32], "Neurons per hidden layer"
                ),
                Param(
                    "learning_rate", "float", 0.001, "Initial learning rate", 1e-6, 10.0
                ),
                *_SCHEDULE_PARAMS,
                Param(
                    "solver",
                    "choice",
                    "adam",
                    "Optimizer (sgd uses momentum)",
                    choices=("adam", "sgd"),
                ),
                Param(
                    "activation",
                    "choice",
                    "relu",
                    "Hidden-layer activation",
                    choices=("relu", "tanh", "logistic", "identity"),
                ),
                Param("momentum", "float", 0.9, "Momentum (sgd solver)", 0.0, 0.999),
                Param("batch_size", "int", 64, "Rows per gradient step", 1, 4096),
                Param("alpha", "float", 1e-4, "L2 penalty", 0.0, 10.0),
            ),
        ),
        Choice(
            "logistic",
            "Logistic Regression (SGD)",
            "An epoch is one partial_fit pass of SGD with log loss over shuffled data.",
            (
                Param(
                    "learning_rate", "float", 0.01, "Initial learning rate", 1e-6, 100.0
                ),
                *_SCHEDULE_PARAMS,
                Param("alpha", "float", 1e-4, "Regularization strength", 0.0, 10.0),
            ),
        ),
    )
}

CSV_DATASET = "csv"

DATASETS: dict[str, Choice] = {
    c.key: c
    for c in (
        Choice("iris", "Iris", "150 flowers, 4 features, 3 classes (scikit-learn)."),
        Choice(
            "digits", "Digits", "1,797 8x8 images of digits, 64 features, 10 classes."
        ),
        Choice("wine", "Wine", "178 wines, 13 features, 3 classes."),
        Choice(
            "breast_cancer", "Breast cancer", "569 tumours, 30 features, 2 classes."
        ),
        Choice(
            "synthetic",
            "Synthetic",
            "make_classification: size, features and classes are parameters.",
            (
                Param("samples", "int", 2000, "Rows generated", 20, 200_000),
                Param("features", "int", 20, "Features per row", 2, 500),
                Param("classes", "int", 3, "Number of classes", 2, 20),
            ),
        ),
        Choice(
            CSV_DATASET,
            "Your CSV file",
            "An uploaded CSV with a header row; you pick the target column. Numeric "
            "columns are used as they are, text columns are one-hot encoded.",
        ),
    )
}

DEFAULT_EPOCHS = 20
EXTERNAL_MODEL_TYPE = "external"


def clean_params(
    model_type: str, dataset: str, raw: dict[str, Any]
) -> tuple[dict, dict]:
    """Validate raw parameters against the model type and data set.

    Return (cleaned parameters with defaults filled in, errors by parameter name).
    Unknown names are errors too: a typo must not silently fall back to a default.
    """
    declared = [
        *MODEL_TYPES[model_type].params,
        *DATASETS[dataset].params,
        *COMMON_PARAMS,
    ]
    by_name = {p.name: p for p in declared}
    cleaned: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for name in raw:
        if name not in by_name:
            known = ", ".join(sorted(by_name))
            errors[name] = (
                f"Unknown parameter {name!r} for {model_type} on {dataset}; "
                f"known: {known}"
            )
    for param in declared:
        value = raw.get(param.name, param.default)
        try:
            cleaned[param.name] = param.clean(value)
        except ValueError as exc:
            errors[param.name] = f"{param.name} {exc}"
    if dataset == "synthetic" and not errors:
        _check_synthetic(cleaned, errors)
    return cleaned, errors


def _check_synthetic(params: dict[str, Any], errors: dict[str, str]) -> None:
    # make_classification needs classes <= 2**informative and enough rows per class.
    informative = max(2, params["features"] // 2)
    if params["classes"] > 2**informative:
        errors["classes"] = (
            f"classes must be at most {2**informative} with "
            f"{params['features']} features"
        )
    if params["samples"] < params["classes"] * 10:
        errors["samples"] = "samples must be at least 10 per class"


def describe() -> dict[str, Any]:
    return {
        "modelTypes": [m.describe() for m in MODEL_TYPES.values()],
        "datasets": [d.describe() for d in DATASETS.values()],
        "commonParams": [p.describe() for p in COMMON_PARAMS],
    }
