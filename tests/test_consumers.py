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
