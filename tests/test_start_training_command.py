from __future__ import annotations

import json
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.utils.timezone import now

from sessions.management.commands.start_training import (
    EXIT_FAILED,
    EXIT_STOPPED,
    Command,
    progress_line,
)
from sessions.models import TrainingSession

pytestmark = pytest.mark.django_db


@pytest.fixture
def root(django_user_model):
    return django_user_model.objects.create_superuser("root", "", "root-password-1")


def start(*args: str, **options) -> str:
    out = StringIO()
    call_command("start_training", *args, stdout=out, **options)
    return out.getvalue()


def test_it_queues_a_session_like_the_api(
    root, django_capture_on_commit_callbacks, settings, event_tap
):
    settings.SITE_URL = "https://mltrack.example.com"

    with django_capture_on_commit_callbacks() as callbacks:
        out = start(
            "mlp",
            "--dataset=iris",
            "--epochs=7",
            "--param",
            "hidden_layer_sizes=32,16",
            "--param",
            "learning_rate=0.01",
            "--param=stratify=false",
        )
    session = TrainingSession.objects.get()
    assert (session.owner, session.model_type, session.dataset) == (root, "mlp", "iris")
    assert session.status == "queued" and session.total_epochs == 7
    assert session.params["hidden_layer_sizes"] == [32, 16]
    assert session.params["learning_rate"] == 0.01
    assert session.params["stratify"] is False
    assert len(callbacks) == 1  # run_training.delay_on_commit
    assert f"Queued session {session.pk}: " in out
    assert f"Page: https://mltrack.example.com/sessions/{session.pk}/" in out
    event = event_tap.next()
    assert event["type"] == "training_status"
    assert event["session"]["id"] == session.pk


def test_it_uses_the_defaults_of_the_form(root):
    start("randomforest")
    session = TrainingSession.objects.get()
    assert session.dataset == "digits" and session.total_epochs == 20


@pytest.mark.parametrize(
    "args, body",
    [
        (["xgboost"], {"modelType": "xgboost"}),
        (
            ["randomforest", "--dataset", "mnist"],
            {"modelType": "randomforest", "dataset": "mnist"},
        ),
        (["logistic", "--epochs", "0"], {"modelType": "logistic", "epochs": "0"}),
        (["logistic", "--epochs", "ten"], {"modelType": "logistic", "epochs": "ten"}),
        (
            ["randomforest", "--param", "max_depth=deep", "--param", "trees=3"],
            {"modelType": "randomforest", "params": {"max_depth": "deep", "trees": 3}},
        ),
    ],
)
def test_bad_input_gets_the_apis_message_and_creates_nothing(root, client, args, body):
    client.force_login(root)
    api = client.post(
        "/api/ml/start-training", json.dumps(body), content_type="application/json"
    )
    assert api.status_code == 400
    TrainingSession.objects.all().delete()

    with pytest.raises(CommandError) as error:
        start(*args)
    assert str(error.value) == api.json()["error"]
    assert not TrainingSession.objects.exists()


@pytest.mark.parametrize(
    "param, message",
    [
        ("max_depth", "--param must look like KEY=VALUE, not 'max_depth'"),
        ("=3", "--param must look like KEY=VALUE, not '=3'"),
    ],
)
def test_it_rejects_a_malformed_param(root, param, message):
    with pytest.raises(CommandError, match=message):
        start("randomforest", "--param", param)
    assert not TrainingSession.objects.exists()


def test_it_rejects_a_param_given_twice(root):
    with pytest.raises(CommandError, match="--param max_depth is given twice"):
        start("randomforest", "--param", "max_depth=3", "--param", "max_depth=4")
    assert not TrainingSession.objects.exists()


def test_a_null_param_means_no_limit(root):
    start("randomforest", "--param", "max_depth=null")
    assert TrainingSession.objects.get().params["max_depth"] is None


def test_it_starts_for_the_given_user(root, alice):
    start("logistic", "--user", "alice")
    assert TrainingSession.objects.get().owner == alice


def test_it_rejects_an_unknown_user(root):
    with pytest.raises(CommandError, match="No active user named 'zoe'"):
        start("logistic", "--user", "zoe")
    assert not TrainingSession.objects.exists()


def test_it_needs_a_user_when_there_is_no_superuser(alice):
    with pytest.raises(CommandError, match="no superuser to own the session"):
        start("logistic")
    assert not TrainingSession.objects.exists()


def test_it_needs_a_user_when_there_are_several_superusers(root, django_user_model):
    django_user_model.objects.create_superuser("ops", "", "ops-password-1")
    with pytest.raises(CommandError, match=r"several superusers \(ops, root\)"):
        start("logistic")
    assert not TrainingSession.objects.exists()


def test_the_report_of_a_failed_run_exits_non_zero(make_session):
    session = make_session()
    session.mark_failed("The loss became NaN at epoch 3; try a smaller learning rate.")
    out = StringIO()
    with pytest.raises(CommandError) as error:
        Command(stdout=out).report(session)
    assert error.value.returncode == EXIT_FAILED
    assert "The loss became NaN at epoch 3" in str(error.value)
    assert f"Session {session.pk} failed after 0/3 epochs" in out.getvalue()


def test_the_report_of_a_stopped_run_exits_non_zero(make_session):
    session = make_session()
    session.mark_running("task")
    session.record_epoch(1, {"val_accuracy": 0.8, "val_loss": 0.5})
    session.mark_stopped()
    out = StringIO()
    with pytest.raises(CommandError) as error:
        Command(stdout=out).report(session)
    assert error.value.returncode == EXIT_STOPPED
    assert "val_accuracy  0.8000" in out.getvalue()
    assert "Best val_accuracy: 0.8000" in out.getvalue()


def test_the_progress_line_shows_epoch_metrics_and_time_left(make_session):
    session = make_session(total_epochs=20)
    assert "waiting for a worker" in progress_line(session)
    session.mark_running("task")
    for epoch in range(1, 6):
        session.record_epoch(epoch, {"val_loss": 0.5 / epoch, "val_accuracy": 0.9})
    TrainingSession.objects.filter(pk=session.pk).update(
        started_at=now() - timedelta(seconds=10)
    )
    session.refresh_from_db()
    line = progress_line(session, width=120)
    assert line.startswith("[########" + "." * 22 + "]  25.0%")
    assert "epoch 5/20  loss 0.1000  acc 0.9000  30 s left  running" in line
    assert len(progress_line(session, width=60)) < 60
    session.record_epoch(6, {"val_loss": 2e-05, "val_accuracy": 1.0})
    session.refresh_from_db()
    assert "loss 2e-05  acc 1.0000" in progress_line(session)


def test_it_trains_on_a_csv_file(root, tmp_path, settings):
    settings.MEDIA_ROOT = tmp_path / "media"
    rows = ["size,weight,kind"] + [
        f"{i},{i * 2 + (i % 3)},{'big' if i > 10 else 'small'}" for i in range(1, 21)
    ]
    path = tmp_path / "things.csv"
    path.write_text("\n".join(rows) + "\n")
    start("logistic", "--dataset=csv", f"--csv={path}", "--target-column=kind")
    session = TrainingSession.objects.get()
    assert session.dataset == "csv" and session.target_column == "kind"
    assert session.data_file.read().decode() == path.read_text()


def test_a_csv_without_its_target_column_gets_the_apis_message(root, tmp_path):
    path = tmp_path / "things.csv"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(CommandError, match="Name the column that holds the classes"):
        start("logistic", "--dataset=csv", f"--csv={path}")
    with pytest.raises(CommandError, match="--csv: no such file"):
        start("logistic", "--dataset=csv", f"--csv={tmp_path / 'nope.csv'}")
    assert not TrainingSession.objects.exists()
