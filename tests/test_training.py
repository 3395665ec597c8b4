"""The trainer on its own: no Django, real scikit-learn, small data."""

import math

import pytest

from sessions import catalog, training


def params(model_type, dataset="iris", **overrides):
    cleaned, errors = catalog.clean_params(model_type, dataset, overrides)
    assert errors == {}
    return cleaned


def run(model_type, epochs=3, dataset="iris", should_stop=lambda: False, **overrides):
    seen = []
    result = training.fit(
        model_type,
        dataset,
        params(model_type, dataset, **overrides),
        epochs,
        on_epoch=seen.append,
        should_stop=should_stop,
    )
    return result, seen


@pytest.mark.parametrize("model_type", list(catalog.MODEL_TYPES))
def test_it_trains_every_model_type_epoch_by_epoch(model_type):
    result, seen = run(model_type, epochs=3)
    assert [e.epoch for e in seen] == [1, 2, 3]
    assert result.epochs_done == 3 and not result.stopped
    for epoch in seen:
        assert set(epoch.metrics) == set(training.METRIC_NAMES)
        for name in (
            "train_loss",
            "val_loss",
            "train_accuracy",
            "val_accuracy",
            "precision",
            "recall",
            "f1",
        ):
            assert math.isfinite(epoch.metrics[name])
        assert 0 <= epoch.metrics["val_accuracy"] <= 1
        assert epoch.duration > 0
    assert len(result.report["confusionMatrix"]) == 3
    assert set(result.report["perClass"]) == {"setosa", "versicolor", "virginica"}


def test_random_forest_reports_no_learning_rate_and_has_feature_importances():
    result, seen = run("randomforest")
    assert all(e.metrics["learning_rate"] is None for e in seen)
    assert len(result.report["featureImportances"]) == 4


def test_the_same_seed_gives_the_same_metrics():
    _, first = run("randomforest", random_state=7)
    _, second = run("randomforest", random_state=7)
    assert [e.metrics for e in first] == [e.metrics for e in second]


def test_random_forest_learns_digits():
    _, seen = run("randomforest", epochs=5, dataset="digits")
    assert seen[-1].metrics["val_accuracy"] > 0.9


@pytest.mark.parametrize(
    "dataset", [d for d in catalog.DATASETS if d != catalog.CSV_DATASET]
)
def test_it_trains_on_every_dataset(dataset):
    overrides = {"samples": 200} if dataset == "synthetic" else {}
    result, seen = run("logistic", epochs=2, dataset=dataset, **overrides)
    assert len(seen) == 2


def test_it_stops_at_an_epoch_boundary_keeping_finished_epochs():
    seen = []
    result = training.fit(
        "logistic",
        "iris",
        params("logistic"),
        10,
        on_epoch=seen.append,
        should_stop=lambda: len(seen) >= 4,
    )
    assert result.stopped and result.epochs_done == 4 and len(seen) == 4


def test_step_and_cosine_schedules_shape_the_learning_rate():
    _, step = run(
        "logistic", epochs=4, schedule="step", step_size=2, decay=0.5, learning_rate=0.1
    )
    assert [e.metrics["learning_rate"] for e in step] == pytest.approx(
        [0.1, 0.1, 0.05, 0.05]
    )
    _, cosine = run("mlp", epochs=3, schedule="cosine", learning_rate=0.01)
    assert [e.metrics["learning_rate"] for e in cosine] == pytest.approx(
        [0.01, 0.005, 0.0]
    )
