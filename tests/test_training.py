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


def test_gradient_boosting_reports_its_learning_rate_and_adds_stages():
    result, seen = run(
        "gradientboosting", epochs=3, learning_rate=0.3, stages_per_epoch=4
    )
    assert [e.metrics["learning_rate"] for e in seen] == [0.3, 0.3, 0.3]
    assert seen[-1].metrics["train_loss"] < seen[0].metrics["train_loss"]
    assert len(result.report["featureImportances"]) == 4


def test_a_diverging_model_fails_with_the_reason():
    seen = []
    with pytest.raises(training.TrainingError, match="NaN or infinite at epoch"):
        training.fit(
            "mlp",
            "iris",
            params(
                "mlp",
                solver="sgd",
                activation="identity",
                learning_rate=10,
                momentum=0.9,
            ),
            50,
            on_epoch=seen.append,
        )
    # Every epoch reported before the failure had finite losses.
    assert 0 < len(seen) < 50
    assert all(math.isfinite(e.metrics["train_loss"]) for e in seen)


CSV_TEXT = "\n".join(
    ["size,colour,weight,kind"]
    + [
        f"{size},{colour},{weight},{kind}"
        for i in range(60)
        for size, colour, weight, kind in [
            (
                i % 7 + (10 if i % 3 == 0 else 0),
                ("red", "green", "blue")[i % 3],
                "" if i == 5 else 1.5 * (i % 3) + (i % 5) / 10,
                ("apple", "pear", "plum")[i % 3],
            )
        ]
    ]
)


def test_a_csv_becomes_numeric_features_and_class_labels():
    data = training.parse_csv(CSV_TEXT, "kind")
    assert data.class_names == ["apple", "pear", "plum"]
    assert data.feature_names == [
        "size",
        "colour=blue",
        "colour=green",
        "colour=red",
        "weight",
    ]
    assert data.X.shape == (60, 5)
    assert math.isfinite(data.X[4, 4])  # the empty weight took the column mean


@pytest.mark.parametrize("model_type", list(catalog.MODEL_TYPES))
def test_every_model_type_trains_on_an_uploaded_csv(tmp_path, model_type):
    path = tmp_path / "fruit.csv"
    path.write_text(CSV_TEXT)
    seen = []
    result = training.fit(
        model_type,
        "csv",
        params(model_type, "csv"),
        3,
        on_epoch=seen.append,
        csv_path=str(path),
        target_column="kind",
    )
    assert result.epochs_done == 3
    assert set(result.report["perClass"]) == {"apple", "pear", "plum"}
    assert seen[-1].metrics["val_accuracy"] > 0.5


@pytest.mark.parametrize(
    ("text", "target", "field", "message"),
    [
        ("", "y", "csvFile", "empty"),
        ("a\n1\n2", "a", "csvFile", "at least two columns"),
        ("a,b,a\n1,2,3", "b", "csvFile", "repeats a column"),
        ("a,b\n" + "1,x\n" * 12, "c", "targetColumn", "No column named 'c'"),
        ("a,b\n1,x\n2", "b", "csvFile", "Row 3 has 1 fields"),
        ("a,b\n" + "1,x\n2,y\n" * 3, "b", "csvFile", "at least 10 are needed"),
        ("a,b\n" + "1,x\n" * 12, "b", "targetColumn", "only one class"),
        ("a,b\n" + "1,x\n" * 11 + "2,y\n", "b", "targetColumn", "'y' has fewer"),
        ("a,b\n" + "1,\n" + "1,x\n2,y\n" * 6, "b", "targetColumn", "Row 2 has no"),
        (
            "a,b\n" + "".join(f"id{i},{i % 2}\n" for i in range(60)),
            "b",
            "csvFile",
            "60 distinct values, too many",
        ),
        ("a,b\n" + "1e300,x\n2,y\n" * 6, "b", "csvFile", "not a finite number"),
        ("a,b\n" + "inf,x\n2,y\n" * 6, "b", "csvFile", "not a finite number"),
        ("a,b\n" + ",x\n,y\n" * 6, "b", "csvFile", "Column 'a' is empty"),
    ],
)
def test_a_csv_that_cannot_be_trained_on_is_rejected(text, target, field, message):
    with pytest.raises(training.DataError, match=message) as raised:
        training.parse_csv(text, target)
    assert raised.value.field == field


def test_a_session_whose_csv_is_gone_fails_with_an_actionable_message(tmp_path):
    with pytest.raises(training.DataError, match="no longer on the server"):
        training.fit(
            "logistic",
            "csv",
            params("logistic", "csv"),
            2,
            on_epoch=lambda e: None,
            csv_path=str(tmp_path / "gone.csv"),
            target_column="kind",
        )


def test_a_stop_request_is_seen_inside_a_long_boosting_epoch():
    calls = []

    def should_stop():
        calls.append(1)
        return len(calls) > 2  # the check before epoch 1, then one inside it

    result, seen = run(
        "gradientboosting", epochs=2, stages_per_epoch=50, should_stop=should_stop
    )
    assert result.stopped and seen == [] and len(calls) == 3


@pytest.mark.parametrize("model_type", ["logistic", "mlp"])
def test_a_long_partial_fit_epoch_checks_the_stop_flag_between_chunks(model_type):
    calls = []

    def should_stop():
        calls.append(1)
        return len(calls) >= 3  # epoch 1's start, after chunk 1, after chunk 2

    seen = []
    result = training.fit(
        model_type,
        "synthetic",
        params(model_type, "synthetic", samples=60_000, features=10, classes=2),
        5,
        on_epoch=seen.append,
        should_stop=should_stop,
    )
    assert result.stopped and result.epochs_done == 0 and seen == []
    assert len(calls) == 3
