"""Train scikit-learn models epoch by epoch. Knows nothing about Django.

`fit()` takes cleaned parameters (see `catalog.clean_params`), calls `on_epoch`
after every epoch with that epoch's metrics, and asks `should_stop` between epochs
(and between chunks of a long epoch). scikit-learn is imported inside the
functions so the web process, which imports this module's callers, never loads it.
"""

from __future__ import annotations

import abc
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

METRIC_NAMES = (
    "train_loss",
    "val_loss",
    "train_accuracy",
    "val_accuracy",
    "learning_rate",
    "precision",
    "recall",
    "f1",
)


class TrainingError(Exception):
    """A failure a person can act on; its message is shown as the session's error."""


@dataclass
class EpochResult:
    epoch: int
    metrics: dict[str, float | None]
    duration: float


@dataclass
class FitResult:
    epochs_done: int
    stopped: bool
    report: dict[str, Any] = field(default_factory=dict)


@dataclass
class Dataset:
    X: Any
    y: Any
    feature_names: list[str]
    class_names: list[str]


# Limits on an uploaded CSV: enough rows to split and score, few enough distinct
# text values per column that one-hot encoding stays meaningful.
CSV_MIN_ROWS = 10
CSV_MIN_ROWS_PER_CLASS = 2
CSV_MAX_CATEGORIES = 50
# Beyond this a column's variance overflows a float and standardizing yields NaN.
CSV_MAX_ABS_VALUE = 1e100
_MISSING = {"", "na", "n/a", "nan", "null", "none", "?"}


class DataError(TrainingError):
    """An uploaded data file that cannot be trained on. `field` names the form
    field to blame: "csvFile" for the file itself, "targetColumn" for the target."""

    def __init__(self, message: str, field: str = "csvFile") -> None:
        super().__init__(message)
        self.field = field


def _as_number(cell: str) -> float | None:
    try:
        return float(cell)
    except ValueError:
        return None


def parse_csv(text: str, target_column: str) -> Dataset:
    """Turn CSV text with a header row into features and class labels.

    Numeric columns are kept (missing cells take the column mean); text columns with
    at most CSV_MAX_CATEGORIES distinct values are one-hot encoded. Raise DataError,
    naming the column or row, for anything that cannot be trained on.
    """
    import csv

    import numpy as np

    sample = text[:8192]
    try:
        dialect: Any = csv.Sniffer().sniff(sample, delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel
    try:
        rows = [row for row in csv.reader(text.splitlines(), dialect) if row]
    except csv.Error as exc:
        raise DataError(f"The file is not a readable CSV: {exc}") from None
    if not rows:
        raise DataError("The file is empty")
    header = [name.strip() for name in rows[0]]
    body = rows[1:]
    if len(header) < 2:
        raise DataError(
            "The file needs a header row and at least two columns (features and "
            "a target); is it comma-separated?"
        )
    if len(set(header)) != len(header):
        raise DataError("The header row repeats a column name")
    if target_column not in header:
        raise DataError(
            f"No column named {target_column!r}; the columns are {', '.join(header)}",
            field="targetColumn",
        )
    for number, row in enumerate(body, start=2):
        if len(row) != len(header):
            raise DataError(
                f"Row {number} has {len(row)} fields but the header has {len(header)}"
            )
    if len(body) < CSV_MIN_ROWS:
        raise DataError(
            f"The file has {len(body)} data rows; at least {CSV_MIN_ROWS} are needed"
        )

    target_index = header.index(target_column)
    labels = [row[target_index].strip() for row in body]
    for number, label in enumerate(labels, start=2):
        if label.lower() in _MISSING:
            raise DataError(
                f"Row {number} has no value in the target column {target_column!r}",
                field="targetColumn",
            )
    counts: dict[str, int] = {}
    for label in labels:
        counts[label] = counts.get(label, 0) + 1
    if len(counts) < 2:
        raise DataError(
            f"The target column {target_column!r} has only one class; at least two "
            "are needed",
            field="targetColumn",
        )
    rare = [label for label, n in counts.items() if n < CSV_MIN_ROWS_PER_CLASS]
    if rare:
        raise DataError(
            f"Every class needs at least {CSV_MIN_ROWS_PER_CLASS} rows; "
            f"{', '.join(repr(r) for r in rare[:5])} "
            f"{'has' if len(rare) == 1 else 'have'} fewer (is {target_column!r} "
            "really a class column?)",
            field="targetColumn",
        )
    numeric_labels = all(_as_number(label) is not None for label in counts)
    class_names = sorted(
        counts, key=(lambda v: (float(v), v)) if numeric_labels else None
    )
    class_index = {label: i for i, label in enumerate(class_names)}
    y = np.array([class_index[label] for label in labels])

    columns: list[Any] = []
    feature_names: list[str] = []
    for index, name in enumerate(header):
        if index == target_index:
            continue
        cells = [row[index].strip() for row in body]
        present = [c for c in cells if c.lower() not in _MISSING]
        if not present:
            raise DataError(f"Column {name!r} is empty")
        numbers = [_as_number(c) for c in present]
        if all(n is not None for n in numbers):
            for number, cell in enumerate(cells, start=2):
                value = _as_number(cell)
                if value is not None and not abs(value) <= CSV_MAX_ABS_VALUE:
                    raise DataError(
                        f"Column {name!r} row {number} holds {cell}, which is not a "
                        f"finite number below {CSV_MAX_ABS_VALUE:g} in size"
                    )
            mean = sum(n for n in numbers if n is not None) / len(numbers)
            columns.append([mean if c.lower() in _MISSING else float(c) for c in cells])
            feature_names.append(name)
            continue
        categories = sorted(set(present))
        if len(categories) > CSV_MAX_CATEGORIES:
            raise DataError(
                f"Column {name!r} is not numeric and has {len(categories)} distinct "
                f"values, too many to encode as categories (at most "
                f"{CSV_MAX_CATEGORIES}); remove it or make it numeric"
            )
        for category in categories:
            columns.append([1.0 if c == category else 0.0 for c in cells])
            feature_names.append(f"{name}={category}")
    if not columns:
        raise DataError("The file has no feature columns besides the target")
    X = np.array(columns, dtype=float).T
    return Dataset(X, y, feature_names, class_names)


def load_csv(path: str, target_column: str) -> Dataset:
    try:
        with open(path, encoding="utf-8-sig") as handle:
            text = handle.read()
    except FileNotFoundError:
        raise DataError(
            "The CSV file of this session is no longer on the server; upload it "
            "again in a new session"
        ) from None
    except UnicodeDecodeError:
        raise DataError("The CSV file is not UTF-8 text") from None
    return parse_csv(text, target_column)


def import_libraries() -> None:
    """Import the parts of scikit-learn that fit() uses, ahead of the first run."""
    import sklearn.datasets  # noqa: F401
    import sklearn.ensemble  # noqa: F401
    import sklearn.linear_model  # noqa: F401
    import sklearn.metrics  # noqa: F401
    import sklearn.model_selection  # noqa: F401
    import sklearn.neural_network  # noqa: F401
    import sklearn.preprocessing  # noqa: F401


def load_dataset(
    name: str,
    params: dict[str, Any],
    csv_path: str | None = None,
    target_column: str | None = None,
) -> Dataset:
    import numpy as np
    from sklearn import datasets

    if name == "csv":
        if not csv_path or not target_column:
            raise DataError("A CSV session needs its uploaded file and target column")
        return load_csv(csv_path, target_column)
    if name == "synthetic":
        X, y = datasets.make_classification(
            n_samples=params["samples"],
            n_features=params["features"],
            n_informative=max(2, params["features"] // 2),
            n_redundant=0,
            n_classes=params["classes"],
            random_state=params["random_state"],
        )
        return Dataset(
            X,
            y,
            [f"x{i}" for i in range(X.shape[1])],
            [str(c) for c in range(params["classes"])],
        )
    loaders = {
        "iris": datasets.load_iris,
        "digits": datasets.load_digits,
        "wine": datasets.load_wine,
        "breast_cancer": datasets.load_breast_cancer,
    }
    if name not in loaders:
        raise TrainingError(f"Unknown data set {name!r}")
    bunch = loaders[name]()
    feature_names = [str(f) for f in getattr(bunch, "feature_names", [])] or [
        f"x{i}" for i in range(bunch.data.shape[1])
    ]
    return Dataset(
        np.asarray(bunch.data, dtype=float),
        bunch.target,
        feature_names,
        [str(c) for c in bunch.target_names],
    )


def scheduled_learning_rate(params: dict[str, Any], epoch: int, total: int) -> float:
    """The learning rate for a 1-based epoch under the run's schedule."""
    base = params["learning_rate"]
    schedule = params.get("schedule", "constant")
    if schedule == "step":
        return base * params["decay"] ** ((epoch - 1) // params["step_size"])
    if schedule == "cosine":
        progress = (epoch - 1) / max(1, total - 1)
        return base * 0.5 * (1 + math.cos(math.pi * progress))
    return base


class _Trainer(abc.ABC):
    """One model type's idea of an epoch. Subclasses set up `model` and run epochs."""

    def __init__(self, params: dict[str, Any], classes: Any, total_epochs: int) -> None:
        self.params = params
        self.classes = classes
        self.total_epochs = total_epochs
        self.model: Any = None

    @abc.abstractmethod
    def run_epoch(
        self, epoch: int, X: Any, y: Any, should_stop: Callable[[], bool]
    ) -> None:
        """Train one epoch in place on (X, y)."""

    def learning_rate(self, epoch: int) -> float | None:
        return None

    def feature_importances(self) -> list[float] | None:
        values = getattr(self.model, "feature_importances_", None)
        return None if values is None else [float(v) for v in values]


class _ForestTrainer(_Trainer):
    # Trees are added in chunks so a stop request is seen inside a long epoch.
    chunk = 5

    def __init__(self, params: dict[str, Any], classes: Any, total_epochs: int) -> None:
        super().__init__(params, classes, total_epochs)
        from sklearn.ensemble import RandomForestClassifier

        max_features = params["max_features"]
        self.model = RandomForestClassifier(
            n_estimators=0,
            warm_start=True,
            max_depth=params["max_depth"],
            min_samples_leaf=params["min_samples_leaf"],
            max_features=None if max_features == "all" else max_features,
            random_state=params["random_state"],
            n_jobs=1,
        )

    def run_epoch(
        self, epoch: int, X: Any, y: Any, should_stop: Callable[[], bool]
    ) -> None:
        target = epoch * self.params["trees_per_epoch"]
        while self.model.n_estimators < target:
            if self.model.n_estimators and should_stop():
                raise _StopInsideEpoch
            self.model.n_estimators = min(target, self.model.n_estimators + self.chunk)
            self.model.fit(X, y)


class _BoostingTrainer(_Trainer):
    def __init__(self, params: dict[str, Any], classes: Any, total_epochs: int) -> None:
        super().__init__(params, classes, total_epochs)
        from sklearn.ensemble import GradientBoostingClassifier

        self.model = GradientBoostingClassifier(
            n_estimators=0,
            warm_start=True,
            learning_rate=params["learning_rate"],
            max_depth=params["max_depth"],
            subsample=params["subsample"],
            random_state=params["random_state"],
        )

    def run_epoch(
        self, epoch: int, X: Any, y: Any, should_stop: Callable[[], bool]
    ) -> None:
        # Stages are added in chunks so a stop request is seen inside a long epoch.
        target = epoch * self.params["stages_per_epoch"]
        while self.model.n_estimators < target:
            if self.model.n_estimators and should_stop():
                raise _StopInsideEpoch
            self.model.n_estimators = min(target, self.model.n_estimators + 10)
            self.model.fit(X, y)

    def learning_rate(self, epoch: int) -> float | None:
        return self.params["learning_rate"]


class _MLPTrainer(_Trainer):
    def __init__(self, params: dict[str, Any], classes: Any, total_epochs: int) -> None:
        super().__init__(params, classes, total_epochs)
        from sklearn.neural_network import MLPClassifier

        self.model = MLPClassifier(
            hidden_layer_sizes=tuple(params["hidden_layer_sizes"]),
            solver=params.get("solver", "adam"),
            activation=params.get("activation", "relu"),
            momentum=params.get("momentum", 0.9),
            learning_rate_init=params["learning_rate"],
            batch_size=params["batch_size"],
            alpha=params["alpha"],
            shuffle=True,
            random_state=params["random_state"],
        )
        import numpy as np

        self.rng = np.random.default_rng(params["random_state"])

    def run_epoch(
        self, epoch: int, X: Any, y: Any, should_stop: Callable[[], bool]
    ) -> None:
        rate = self.learning_rate(epoch)
        # A batch larger than a small data set is the whole set (without a warning).
        self.model.batch_size = min(self.params["batch_size"], len(y))
        # The optimizer reads its base rate from the one it created on the first call.
        optimizer = getattr(self.model, "_optimizer", None)
        if optimizer is None:
            self.model.learning_rate_init = rate
        else:
            optimizer.learning_rate_init = rate
        _one_pass(self.model, X, y, self.classes, self.rng, should_stop)

    def learning_rate(self, epoch: int) -> float | None:
        return scheduled_learning_rate(self.params, epoch, self.total_epochs)


class _LogisticTrainer(_Trainer):
    def __init__(self, params: dict[str, Any], classes: Any, total_epochs: int) -> None:
        super().__init__(params, classes, total_epochs)
        import numpy as np
        from sklearn.linear_model import SGDClassifier

        self.rng = np.random.default_rng(params["random_state"])
        self.model = SGDClassifier(
            loss="log_loss",
            learning_rate="constant",
            eta0=params["learning_rate"],
            alpha=params["alpha"],
            random_state=params["random_state"],
        )

    def run_epoch(
        self, epoch: int, X: Any, y: Any, should_stop: Callable[[], bool]
    ) -> None:
        self.model.eta0 = self.learning_rate(epoch)
        _one_pass(self.model, X, y, self.classes, self.rng, should_stop, shuffle=True)

    def learning_rate(self, epoch: int) -> float | None:
        return scheduled_learning_rate(self.params, epoch, self.total_epochs)

    def feature_importances(self) -> list[float] | None:
        return None


# Rows per partial_fit call: an epoch over more rows is fed in chunks, so a stop
# request is seen inside a long epoch too. Smaller data sets train in one call.
CHUNK_ROWS = 10_000


def _one_pass(
    model: Any,
    X: Any,
    y: Any,
    classes: Any,
    rng: Any,
    should_stop: Callable[[], bool],
    shuffle: bool = False,
) -> None:
    """One epoch of partial_fit over (X, y), in chunks of CHUNK_ROWS rows."""
    rows = len(y)
    if rows <= CHUNK_ROWS:
        order = rng.permutation(rows) if shuffle else slice(None)
        model.partial_fit(X[order], y[order], classes=classes)
        return
    order = rng.permutation(rows)
    for start in range(0, rows, CHUNK_ROWS):
        if start and should_stop():
            raise _StopInsideEpoch
        chunk = order[start : start + CHUNK_ROWS]
        model.partial_fit(X[chunk], y[chunk], classes=classes)


TRAINERS: dict[str, type[_Trainer]] = {
    "randomforest": _ForestTrainer,
    "gradientboosting": _BoostingTrainer,
    "mlp": _MLPTrainer,
    "logistic": _LogisticTrainer,
}


class _StopInsideEpoch(Exception):
    pass


class _Diverged(Exception):
    """The model's outputs are no longer finite numbers."""


def _check_finite(model: Any) -> None:
    """Raise _Diverged when the model's internal loss or weights are not finite.

    scikit-learn clips probabilities before the log loss, so a diverging model can
    still report a finite loss: its weights and its own loss are the honest signal.
    """
    import numpy as np

    loss = getattr(model, "loss_", None)
    if loss is not None and not math.isfinite(loss):
        raise _Diverged
    for name in ("coefs_", "intercepts_", "coef_", "intercept_"):
        values = getattr(model, name, None)
        if values is None:
            continue
        arrays = values if isinstance(values, list) else [values]
        if not all(np.isfinite(a).all() for a in arrays):
            raise _Diverged


def _train_epoch(
    trainer: _Trainer, epoch: int, X: Any, y: Any, should_stop: Callable[[], bool]
) -> None:
    import warnings

    with warnings.catch_warnings():
        # Overflow warnings are how numpy announces a diverging model; it is
        # reported as a failed run instead.
        warnings.simplefilter("ignore", RuntimeWarning)
        try:
            trainer.run_epoch(epoch, X, y, should_stop)
        except ValueError as exc:
            # MLP: "Solver produced non-finite parameter weights"; SGD:
            # "Floating-point under-/overflow occurred at epoch #n".
            text = str(exc)
            if "non-finite" in text or "overflow" in text:
                raise _Diverged from exc
            raise
    _check_finite(trainer.model)


def _scores(model: Any, X: Any, y: Any, classes: Any) -> tuple[float, float, Any]:
    import numpy as np
    from sklearn.metrics import accuracy_score, log_loss

    with np.errstate(all="ignore"):
        proba = model.predict_proba(X)
    if not np.isfinite(proba).all():
        raise _Diverged
    predicted = classes[proba.argmax(axis=1)]
    return (
        float(log_loss(y, proba, labels=classes)),
        float(accuracy_score(y, predicted)),
        predicted,
    )


def fit(
    model_type: str,
    dataset: str,
    params: dict[str, Any],
    epochs: int,
    on_epoch: Callable[[EpochResult], None],
    should_stop: Callable[[], bool] = lambda: False,
    csv_path: str | None = None,
    target_column: str | None = None,
) -> FitResult:
    """Train for up to `epochs` epochs; return what was done and the final report.

    Raise TrainingError when the run cannot go on (bad data, a loss that became NaN).
    """
    import numpy as np
    from sklearn.metrics import (
        classification_report,
        confusion_matrix,
        precision_recall_fscore_support,
    )
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    if model_type not in TRAINERS:
        raise TrainingError(f"Unknown model type {model_type!r}")
    started = time.monotonic()
    data = load_dataset(dataset, params, csv_path, target_column)
    classes = np.unique(data.y)
    try:
        X_train, X_val, y_train, y_val = train_test_split(
            data.X,
            data.y,
            test_size=params["validation_split"],
            stratify=data.y if params["stratify"] else None,
            random_state=params["random_state"],
        )
    except ValueError as exc:
        raise TrainingError(f"Cannot split the data for validation: {exc}") from exc
    scaler = StandardScaler().fit(X_train)
    X_train, X_val = scaler.transform(X_train), scaler.transform(X_val)
    trainer = TRAINERS[model_type](params, classes, epochs)

    done = 0
    stopped = False
    val_predicted = None
    for epoch in range(1, epochs + 1):
        if should_stop():
            stopped = True
            break
        epoch_started = time.monotonic()
        try:
            _train_epoch(trainer, epoch, X_train, y_train, should_stop)
            train_loss, train_accuracy, _ = _scores(
                trainer.model, X_train, y_train, classes
            )
            val_loss, val_accuracy, val_predicted = _scores(
                trainer.model, X_val, y_val, classes
            )
        except _StopInsideEpoch:
            stopped = True
            break
        except _Diverged:
            raise TrainingError(
                f"The loss became NaN or infinite at epoch {epoch}: the model "
                "diverged. Try a smaller learning rate (or the adam solver)."
            ) from None
        if not all(math.isfinite(v) for v in (train_loss, val_loss)):
            raise TrainingError(
                f"The loss became {'NaN' if math.isnan(train_loss) else 'infinite'} at "
                f"epoch {epoch}: the model diverged. Try a smaller learning rate."
            )
        precision, recall, f1, _ = precision_recall_fscore_support(
            y_val, val_predicted, average="macro", zero_division=0
        )
        on_epoch(
            EpochResult(
                epoch=epoch,
                metrics={
                    "train_loss": train_loss,
                    "val_loss": val_loss,
                    "train_accuracy": train_accuracy,
                    "val_accuracy": val_accuracy,
                    "learning_rate": trainer.learning_rate(epoch),
                    "precision": float(precision),
                    "recall": float(recall),
                    "f1": float(f1),
                },
                duration=time.monotonic() - epoch_started,
            )
        )
        done = epoch

    report: dict[str, Any] = {"totalSeconds": time.monotonic() - started}
    if val_predicted is not None:
        labels = [
            data.class_names[i] if i < len(data.class_names) else str(c)
            for i, c in enumerate(classes)
        ]
        report["classes"] = labels
        report["confusionMatrix"] = confusion_matrix(
            y_val, val_predicted, labels=classes
        ).tolist()
        per_class = classification_report(
            y_val,
            val_predicted,
            labels=classes,
            target_names=labels,
            output_dict=True,
            zero_division=0,
        )
        report["perClass"] = {
            name: {k: float(v) for k, v in per_class[name].items()} for name in labels
        }
        importances = trainer.feature_importances()
        if importances is not None:
            report["featureImportances"] = dict(
                sorted(
                    zip(data.feature_names, importances, strict=True),
                    key=lambda kv: kv[1],
                    reverse=True,
                )
            )
    return FitResult(epochs_done=done, stopped=stopped, report=report)
