"""The WebSocket consumer through the real ASGI app and the real Redis."""

import asyncio

import pytest
import redis.asyncio
from channels.testing import WebsocketCommunicator

from mltrack.asgi import application
from sessions import events
from sessions.models import ApiToken
from tests.conftest import REDIS_URL

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]

ORIGIN = (b"origin", b"http://127.0.0.1")


async def connect(path, cookie=None, headers=(ORIGIN,)):
    headers = list(headers) + ([(b"cookie", cookie)] if cookie else [])
    communicator = WebsocketCommunicator(application, path, headers=headers)
    connected, code = await communicator.connect()
    return communicator, connected, code


async def test_it_refuses_anonymous_users():
    communicator, connected, code = await connect("/ws/training/")
    assert not connected
    await communicator.disconnect()


async def test_it_streams_a_users_own_session_events(alice, make_session):
    from channels.db import database_sync_to_async

    session = await database_sync_to_async(make_session)()
    communicator, connected, _ = await connect("/ws/training/", await _login(alice))
    assert connected
    await database_sync_to_async(events.push_status)(session, "training_started")
    message = await communicator.receive_json_from(timeout=5)
    assert message["type"] == "training_started"
    assert message["session"]["id"] == session.pk
    await communicator.disconnect()


async def test_it_hides_other_users_sessions(bob, make_session):
    from channels.db import database_sync_to_async

    session = await database_sync_to_async(make_session)()
    communicator, connected, code = await connect(
        f"/ws/training/{session.pk}/", await _login(bob)
    )
    assert not connected
    # Nor does bob's all-sessions stream carry alice's events.
    communicator, connected, _ = await connect("/ws/training/", await _login(bob))
    await database_sync_to_async(events.push_status)(session, "training_started")
    assert await communicator.receive_nothing(timeout=0.5)
    await communicator.disconnect()


async def test_it_accepts_a_bearer_token_without_origin(alice, make_session):
    from channels.db import database_sync_to_async

    session = await database_sync_to_async(make_session)()
    _, raw = await database_sync_to_async(ApiToken.issue)(alice)
    communicator, connected, _ = await connect(
        f"/ws/training/{session.pk}/",
        headers=[(b"authorization", f"Bearer {raw}".encode())],
    )
    assert connected
    await communicator.disconnect()
    communicator, connected, _ = await connect(
        "/ws/training/", headers=[(b"authorization", b"Bearer wrong"), ORIGIN]
    )
    assert not connected


async def test_it_refuses_a_foreign_origin(alice):
    communicator, connected, _ = await connect(
        "/ws/training/",
        await _login(alice),
        headers=[(b"origin", b"http://evil.example")],
    )
    assert not connected


async def test_it_answers_browser_messages_without_acting(alice):
    communicator, connected, _ = await connect("/ws/training/", await _login(alice))
    await communicator.send_to(text_data="not json {")
    reply = await communicator.receive_json_from(timeout=5)
    assert reply["type"] == "error"
    await communicator.disconnect()


async def _login(user):
    """A session cookie for `user`, as the browser would send it."""
    from channels.db import database_sync_to_async
    from django.test import Client

    def log_in():
        client = Client()
        client.force_login(user)
        return f"sessionid={client.cookies['sessionid'].value}".encode()

    return await database_sync_to_async(log_in)()


async def test_sockets_of_one_process_share_one_subscription(alice, make_session):
    from channels.db import database_sync_to_async

    session = await database_sync_to_async(make_session)()
    cookie = await _login(alice)
    path = f"/ws/training/{session.pk}/"
    first, connected_first, _ = await connect(path, cookie)
    second, connected_second, _ = await connect(path, cookie)
    assert connected_first and connected_second
    assert await _subscribers() == 1  # the process, not each socket
    await database_sync_to_async(events.push_status)(session, "training_started")
    for communicator in (first, second):
        message = await communicator.receive_json_from(timeout=5)
        assert message["type"] == "training_started"
        assert await communicator.receive_nothing(timeout=0.2)
    await first.disconnect()
    await second.disconnect()
    assert events.session_audience(session.pk) not in events.local_fanout().viewers


async def test_a_lost_subscription_closes_sockets_so_pages_backfill(
    alice, make_session
):
    """Redis restarting drops the subscription, and what was published meanwhile
    is gone: the sockets must not stay open as if live. They are closed with 1013
    (try again); the next socket subscribes again and hears new events."""
    from channels.db import database_sync_to_async

    session = await database_sync_to_async(make_session)()
    cookie = await _login(alice)
    first, connected, _ = await connect("/ws/training/", cookie)
    assert connected
    client = redis.asyncio.Redis.from_url(REDIS_URL)
    (ours,) = [
        c
        for c in await client.client_list(_type="pubsub")
        if c["name"] == events.subscriber_name()
    ]
    assert await client.client_kill_filter(_id=ours["id"]) == 1
    closed = await first.receive_output(timeout=5)
    assert closed == {"type": "websocket.close", "code": events.CLOSE_TRY_AGAIN}
    second, connected, _ = await connect("/ws/training/", cookie)
    assert connected
    assert await _subscribers() == 1
    await database_sync_to_async(events.push_status)(session, "training_started")
    message = await second.receive_json_from(timeout=5)
    assert message["type"] == "training_started"
    await second.disconnect()
    await client.aclose()


async def test_it_refuses_a_socket_while_redis_is_down(alice, settings):
    cookie = await _login(alice)
    await _reset_fanout()
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens there
    try:
        communicator, connected, _ = await connect("/ws/training/", cookie)
        assert not connected  # the page retries with backoff
    finally:
        await _reset_fanout()


async def _reset_fanout() -> None:
    """Forget this loop's fan-out, so the next socket makes one from settings."""
    import asyncio

    fanout = events._fanouts.pop(asyncio.get_running_loop(), None)
    if fanout is not None and fanout.listener is not None:
        fanout.listener.cancel()


async def _subscribers() -> int:
    """This process's subscriptions to the events channel (other processes on the
    tests' Redis, such as a live stack's daphne, have subscriptions of their own)."""
    client = redis.asyncio.Redis.from_url(REDIS_URL)
    try:
        for _ in range(50):
            ours = [
                c
                for c in await client.client_list(_type="pubsub")
                if c["name"] == events.subscriber_name()
            ]
            if ours:
                return len(ours)
            await asyncio.sleep(0.02)  # a subscription can take a moment to show
        return 0
    finally:
        await client.aclose()


class RecordingSocket:
    """Stands in for the browser end of a WebSocket: records what it is sent, and
    can be slow to write, as a socket of a busy process is."""

    def __init__(self, write_seconds: float = 0.0) -> None:
        self.frames: list[str] = []
        self.write_seconds = write_seconds

    async def send(self, text_data: str | None = None) -> None:
        import asyncio

        self.frames.append(text_data)
        await asyncio.sleep(self.write_seconds)

    async def close(self, code: int | None = None) -> None:
        pass


async def test_events_that_arrive_while_writing_go_out_as_one_batch_frame():
    import json

    fanout = events.LocalFanout(REDIS_URL)
    slow, elsewhere = RecordingSocket(write_seconds=0.2), RecordingSocket()
    await fanout.join("run-1", slow)
    await fanout.join("run-2", elsewhere)
    client = redis.asyncio.Redis.from_url(REDIS_URL)

    async def publish(audience: str, event: dict) -> None:
        message = events.wire_message([audience], json.dumps(event))
        await client.publish(events.events_channel(REDIS_URL), message)

    async def frames(count: int) -> list[dict]:
        for _ in range(200):
            if len(slow.frames) >= count:
                break
            await asyncio.sleep(0.01)
        return [json.loads(frame) for frame in slow.frames]

    await publish("run-1", {"type": "training_progress", "epoch": 1})
    await frames(1)
    # Epochs 2-4 arrive while epoch 1 is still being written.
    for epoch in (2, 3, 4):
        await publish("run-1", {"type": "training_progress", "epoch": epoch})
    first, second = await frames(2)
    assert first == {"type": "training_progress", "epoch": 1}
    assert second["type"] == "batch"
    assert [event["epoch"] for event in second["events"]] == [2, 3, 4]
    # Once written, nothing else is queued for either socket.
    await fanout.flushing
    assert len(slow.frames) == 2 and elsewhere.frames == []
    fanout.listener.cancel()
    await client.aclose()


async def test_a_message_of_several_events_goes_out_as_one_batch_frame():
    # The worker pushes fast epochs a few at a time, their events in one
    # message (tasks._EpochSaver): each viewer gets them in order.
    import json

    fanout = events.LocalFanout(REDIS_URL)
    viewer, elsewhere = RecordingSocket(), RecordingSocket()
    await fanout.join("run-1", viewer)
    await fanout.join("run-2", elsewhere)
    client = redis.asyncio.Redis.from_url(REDIS_URL)
    texts = [
        json.dumps({"type": "training_progress", "epoch": epoch}) for epoch in (5, 6, 7)
    ]
    message = events.wire_message(["run-1", "staff"], *texts)
    assert events.parse_wire_message(message) == (["run-1", "staff"], texts)
    await client.publish(events.events_channel(REDIS_URL), message)
    for _ in range(200):
        if viewer.frames:
            break
        await asyncio.sleep(0.01)
    await fanout.flushing
    (frame,) = [json.loads(text) for text in viewer.frames]
    assert frame["type"] == "batch"
    assert [event["epoch"] for event in frame["events"]] == [5, 6, 7]
    assert elsewhere.frames == []
    fanout.listener.cancel()
    await client.aclose()
