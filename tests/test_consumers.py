"""The WebSocket consumer through the real ASGI app and the Redis channel layer."""

import pytest
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator

from mltrack.asgi import application
from sessions import events
from sessions.models import ApiToken

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


@pytest.fixture(autouse=True)
def _fresh_layer():
    from asgiref.sync import async_to_sync

    yield
    async_to_sync(get_channel_layer().flush)()


async def test_sockets_of_one_process_share_one_group_membership(alice, make_session):
    from channels.db import database_sync_to_async

    session = await database_sync_to_async(make_session)()
    cookie = await _login(alice)
    path = f"/ws/training/{session.pk}/"
    first, connected_first, _ = await connect(path, cookie)
    second, connected_second, _ = await connect(path, cookie)
    assert connected_first and connected_second
    group = events.EVENTS_GROUP
    assert await _members(group) == 1  # the process, not each socket
    await database_sync_to_async(events.push_status)(session, "training_started")
    for communicator in (first, second):
        message = await communicator.receive_json_from(timeout=5)
        assert message["type"] == "training_started"
        assert await communicator.receive_nothing(timeout=0.2)
    await first.disconnect()
    await second.disconnect()
    assert events.session_audience(session.pk) not in events.local_fanout().viewers


async def test_a_flushed_channel_layer_does_not_leave_the_process_deaf(
    alice, make_session
):
    from channels.db import database_sync_to_async

    session = await database_sync_to_async(make_session)()
    cookie = await _login(alice)
    first, _, _ = await connect("/ws/training/", cookie)
    # Redis forgets the group (flushed by another process, or expired).
    layer = get_channel_layer()
    group = events.EVENTS_GROUP
    await layer.connection(layer.consistent_hash(group)).delete(layer._group_key(group))
    assert await _members(group) == 0
    # The next socket to connect renews the process's membership for all.
    second, _, _ = await connect("/ws/training/", cookie)
    await database_sync_to_async(events.push_status)(session, "training_started")
    for communicator in (first, second):
        message = await communicator.receive_json_from(timeout=5)
        assert message["type"] == "training_started"
    await first.disconnect()
    await second.disconnect()


async def _members(group: str) -> int:
    layer = get_channel_layer()
    connection = layer.connection(layer.consistent_hash(group))
    return await connection.zcard(layer._group_key(group))


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
    import asyncio
    import json

    from channels.layers import InMemoryChannelLayer

    fanout = events.LocalFanout(InMemoryChannelLayer())
    slow, elsewhere = RecordingSocket(write_seconds=0.2), RecordingSocket()
    await fanout.join("run-1", slow)
    await fanout.join("run-2", elsewhere)

    async def publish(group: str, event: dict) -> None:
        text = json.dumps(event)
        message = events.event_message([group], text)
        await fanout.layer.group_send(events.EVENTS_GROUP, message)

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
    assert elsewhere.frames == []
    await asyncio.sleep(0.3)
    assert len(slow.frames) == 2
    for task in fanout.tasks:
        task.cancel()
