"""run_training in-process, on the real database and the real Redis channel layer."""

import pytest
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

from sessions import events
from sessions.models import TrainingSession
from sessions.tasks import run_training

pytestmark = pytest.mark.django_db(transaction=True)


def listen(group):
    layer = get_channel_layer()
    channel = async_to_sync(layer.new_channel)()
    async_to_sync(layer.group_add)(group, channel)
    return layer, channel


def drain(layer, channel, until_type, limit=100):
    received = []

    async def read():
        import asyncio

        while len(received) < limit:
            message = await asyncio.wait_for(layer.receive(channel), timeout=10)
            received.append(message["data"])
            if message["data"]["type"] == until_type:
                return

    async_to_sync(read)()
    return received


def test_it_trains_saves_every_epoch_and_pushes_events(make_session):
    session = make_session(total_epochs=4)
    layer, channel = listen(events.session_group(session.pk))

    summary = run_training(session.pk)

    session.refresh_from_db()
    assert session.status == TrainingSession.Status.COMPLETED, session.error
    assert "completed after 4 epochs" in summary
    assert list(session.epochs.values_list("epoch", flat=True)) == [1, 2, 3, 4]
    assert session.report["confusionMatrix"]
    received = drain(layer, channel, "training_completed")
    assert [e["type"] for e in received] == (
        ["training_started"] + ["training_progress"] * 4 + ["training_completed"]
    )
    assert [e["epoch"] for e in received[1:5]] == [1, 2, 3, 4]
    assert received[2]["stats"]["etaSeconds"] is not None
    assert received[-1]["session"]["progress"] == 100.0


def test_it_does_not_start_a_session_stopped_while_queued(make_session):
    session = make_session()
    session.request_stop()
    assert "not started" in run_training(session.pk)
    assert session.epochs.count() == 0


def test_a_bad_configuration_fails_the_session_with_a_message(make_session):
    session = make_session(model_type="nosuchmodel", params={})
    run_training(session.pk)
    session.refresh_from_db()
    assert session.status == TrainingSession.Status.FAILED
    assert "nosuchmodel" in session.error
    assert "Traceback" in session.traceback
