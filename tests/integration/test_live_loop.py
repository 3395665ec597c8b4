"""The whole loop on real processes: the API over HTTP to daphne, a Celery worker
process training for real, Redis carrying events, a WebSocket client receiving them."""

import asyncio
import statistics
import time

import pytest
import websockets

from sessions.models import ApiToken, EpochMetric, TrainingSession
from tests.conftest import call_api, ws_events

pytestmark = pytest.mark.django_db(transaction=True)


async def watch_run(stack, token, body):
    """Open /ws/training/, start a run, and collect its events until it finishes."""
    ws_url = stack.url.replace("http", "ws") + "/ws/training/"
    received = []
    async with websockets.connect(
        ws_url, additional_headers={"Authorization": f"Bearer {token}"}
    ) as socket:
        created = await asyncio.to_thread(
            call_api, stack, "POST", "/api/ml/start-training", token, body
        )
        assert created["session"]["status"] == "queued"
        session_id = created["session"]["id"]
        while True:
            raw = await asyncio.wait_for(socket.recv(), timeout=120)
            arrived = time.time()
            for event in ws_events(raw):
                if event["session"]["id"] != session_id:
                    continue
                event["arrivedAt"] = arrived
                received.append(event)
                if event["type"] in (
                    "training_completed",
                    "training_failed",
                    "training_stopped",
                ):
                    return session_id, received


def test_a_run_started_through_the_api_streams_every_epoch_live(live_stack, alice):
    _, token = ApiToken.issue(alice)
    started = time.monotonic()
    session_id, received = asyncio.run(
        watch_run(
            live_stack,
            token,
            {"modelType": "randomforest", "dataset": "digits", "epochs": 20},
        )
    )
    wall = time.monotonic() - started

    # training_status announces the queued state before the worker takes the run.
    types = [e["type"] for e in received if e["type"] != "training_status"]
    assert received[0]["session"]["status"] == "queued"
    assert types[0] == "training_started"
    assert types[-1] == "training_completed"
    progress = [e for e in received if e["type"] == "training_progress"]
    assert [e["epoch"] for e in progress] == list(range(1, 21))
    assert all(e["metrics"]["val_accuracy"] > 0.5 for e in progress)
    session = TrainingSession.objects.get(pk=session_id)
    assert session.status == "completed" and session.current_epoch == 20
    assert list(
        EpochMetric.objects.filter(session=session).values_list("epoch", flat=True)
    ) == list(range(1, 21))

    latencies = [(e["arrivedAt"] - e["savedAt"]) * 1000 for e in progress]
    print(
        f"\nLIVE LOOP: 20 epochs; save->WebSocket latency median "
        f"{statistics.median(latencies):.1f} ms, worst {max(latencies):.1f} ms; "
        f"session {session.duration_seconds:.2f} s (training), {wall:.2f} s end to end"
    )


def test_stopping_a_run_keeps_its_finished_epochs(live_stack, alice):
    _, token = ApiToken.issue(alice)

    async def run_and_stop():
        ws_url = live_stack.url.replace("http", "ws") + "/ws/training/"
        async with websockets.connect(
            ws_url, additional_headers={"Authorization": f"Bearer {token}"}
        ) as socket:
            created = await asyncio.to_thread(
                call_api,
                live_stack,
                "POST",
                "/api/ml/start-training",
                token,
                {"modelType": "randomforest", "dataset": "digits", "epochs": 500},
            )
            session_id = created["session"]["id"]
            while True:
                raw = await asyncio.wait_for(socket.recv(), timeout=120)
                for event in ws_events(raw):
                    if event["type"] == "training_progress" and event["epoch"] == 3:
                        await asyncio.to_thread(
                            call_api,
                            live_stack,
                            "POST",
                            f"/api/ml/stop-training/{session_id}",
                            token,
                        )
                    if event["type"] == "training_stopped":
                        return session_id, event

    session_id, final = asyncio.run(run_and_stop())
    session = TrainingSession.objects.get(pk=session_id)
    assert session.status == "stopped" and final["session"]["status"] == "stopped"
    epochs = list(session.epochs.values_list("epoch", flat=True))
    assert epochs == list(range(1, len(epochs) + 1)) and 3 <= len(epochs) < 500


def test_a_viewer_that_reads_late_still_gets_every_event_whole_and_in_order(
    live_stack, alice
):
    # The fan-out writes frames straight to daphne's sockets while they can take
    # them and leaves the rest to Twisted (events.frame_writer): a viewer that
    # stops reading fills its socket, and what follows must queue behind what
    # is already waiting, frame by frame, while a prompt viewer keeps up.
    import json

    import redis

    from sessions import events

    _, token = ApiToken.issue(alice, name="late reader")
    ws_url = live_stack.url.replace("http", "ws") + "/ws/training/"
    headers = {"Authorization": f"Bearer {token}"}
    count, padding = 120, "x" * 100_000  # ~12 MB: more than both socket buffers

    async def scenario():
        prompt_events: list[dict] = []
        async with (
            websockets.connect(
                ws_url, additional_headers=headers, max_size=None
            ) as prompt,
            # max_queue=1: the client stops reading after one waiting frame.
            websockets.connect(
                ws_url, additional_headers=headers, max_size=None, max_queue=1
            ) as late,
        ):
            publisher = redis.Redis.from_url(live_stack.redis_url)
            for number in range(count):
                text = json.dumps(
                    {"type": "test_event", "number": number, "padding": padding}
                )
                publisher.publish(
                    events.events_channel(live_stack.redis_url),
                    events.wire_message([events.user_audience(alice.pk)], text),
                )
            publisher.close()
            while len(prompt_events) < count:
                raw = await asyncio.wait_for(prompt.recv(), timeout=30)
                prompt_events += ws_events(raw)
            late_events: list[dict] = []
            while len(late_events) < count:
                raw = await asyncio.wait_for(late.recv(), timeout=30)
                late_events += ws_events(raw)
        return prompt_events, late_events

    prompt_events, late_events = asyncio.run(scenario())
    for received in (prompt_events, late_events):
        assert [e["number"] for e in received] == list(range(count))
        assert all(e["padding"] == padding for e in received)
