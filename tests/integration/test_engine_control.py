"""Stop, failure, divergence and diagnostics on a real Celery worker process, with
events read from the real Redis channel layer."""

import numpy as np
import pytest
from django.core.files.base import ContentFile

from sessions import catalog, events
from sessions.models import TrainingSession
from sessions.tasks import run_training
from tests.conftest import EventTap
from tests.integration.engine_workers import Worker, new_queue, wait_for

pytestmark = pytest.mark.django_db(transaction=True)

Status = TrainingSession.Status


@pytest.fixture(scope="module")
def worker(django_db_setup, tmp_path_factory):
    queue = new_queue()
    log = tmp_path_factory.mktemp("engine-control") / "worker.log"
    running = Worker(queue, log).wait_ready()
    yield running
    running.stop()


def params(model_type, dataset, **overrides):
    cleaned, errors = catalog.clean_params(model_type, dataset, overrides)
    assert errors == {}
    return cleaned


def reloaded(session):
    session.refresh_from_db()
    return session


def finished(session):
    return reloaded(session).status in (Status.COMPLETED, Status.FAILED, Status.STOPPED)


def noise_csv(rows=300, features=10, seed=0):
    """Random features and random labels: nothing to learn, everything to memorize."""
    rng = np.random.default_rng(seed)
    header = ",".join([f"f{i}" for i in range(features)] + ["label"])
    lines = [
        ",".join(f"{v:.4f}" for v in rng.normal(size=features))
        + ("," + ("yes" if rng.integers(2) else "no"))
        for _ in range(rows)
    ]
    return header + "\n" + "\n".join(lines) + "\n"


def test_stopping_a_running_session_keeps_its_epochs(worker, make_session):
    session = make_session(
        model_type="randomforest",
        dataset="digits",
        total_epochs=5000,
        params=params("randomforest", "digits", trees_per_epoch=2),
    )
    run_training.apply_async((session.pk,), queue=worker.queue)
    wait_for(lambda: reloaded(session).current_epoch >= 3, 120)

    assert session.request_stop()
    wait_for(lambda: finished(session), 120)
    assert session.status == Status.STOPPED
    epochs = list(session.epochs.values_list("epoch", flat=True))
    assert epochs == list(range(1, len(epochs) + 1)) and 3 <= len(epochs) < 5000
    assert session.report["confusionMatrix"]


def test_a_training_error_fails_the_session_and_the_worker_goes_on(
    worker, make_session
):
    broken = make_session(
        dataset="csv",
        params=params("randomforest", "csv"),
        data_file="uploads/gone.csv",
        target_column="label",
    )
    following = make_session(model_type="logistic", dataset="wine", total_epochs=3)
    run_training.apply_async((broken.pk,), queue=worker.queue)
    run_training.apply_async((following.pk,), queue=worker.queue)

    wait_for(lambda: finished(broken), 120)
    assert broken.status == Status.FAILED
    assert "no longer on the server" in broken.error
    assert "Traceback" in broken.traceback
    wait_for(lambda: finished(following), 120)
    assert following.status == Status.COMPLETED
    assert following.epochs.count() == 3


def test_a_diverging_run_fails_at_once_with_the_reason(worker, make_session):
    session = make_session(
        model_type="mlp",
        dataset="iris",
        total_epochs=50,
        params=params(
            "mlp",
            "iris",
            solver="sgd",
            activation="identity",
            learning_rate=10,
            momentum=0.9,
        ),
    )
    run_training.apply_async((session.pk,), queue=worker.queue)
    wait_for(lambda: finished(session), 120)
    assert session.status == Status.FAILED
    assert "became NaN or infinite at epoch" in session.error
    assert "learning rate" in session.error
    # Epochs before the divergence are kept; the run did not go on to epoch 50.
    assert session.epochs.count() == session.current_epoch < 50


def test_overfitting_is_flagged_on_the_session_and_in_progress_events(
    worker, make_session
):
    session = make_session(
        model_type="mlp",
        dataset="csv",
        total_epochs=12,
        params=params(
            "mlp", "csv", hidden_layer_sizes=[128, 128], alpha=0, learning_rate=0.01
        ),
        data_file=ContentFile(noise_csv().encode(), name="noise.csv"),
        target_column="label",
    )
    tap = EventTap()
    run_training.apply_async((session.pk,), queue=worker.queue)
    received = tap.until(*events.FINAL_EVENTS.values(), timeout=120)
    tap.close()
    reloaded(session)
    assert session.status == Status.COMPLETED, session.error
    kinds = [d["kind"] for d in session.diagnostics]
    assert kinds == ["overfitting"]
    progress = [e for e in received if e["type"] == "training_progress"]
    assert len(progress) == 12
    flagged = [e for e in progress if e["stats"]["diagnostics"]]
    assert flagged and flagged[0]["epoch"] == session.diagnostics[0]["epoch"]
    assert flagged[-1]["session"]["diagnostics"][0]["kind"] == "overfitting"
    # Flagging does not stop the run: the losses went on moving apart.
    last = progress[-1]["metrics"]
    assert last["train_loss"] < progress[0]["metrics"]["train_loss"]
    assert last["val_loss"] > progress[0]["metrics"]["val_loss"]
