"""The fan-out's frames written straight to daphne's sockets (events.frame_writer),
with the real autobahn, daphne and Twisted classes and real sockets."""

import asyncio
import functools
import socket

import pytest
from autobahn.websocket.protocol import PreparedMessage
from daphne.server import Server
from daphne.ws_protocol import WebSocketProtocol
from twisted.internet import tcp
from twisted.internet.asyncioreactor import AsyncioSelectorReactor
from twisted.internet.protocol import Protocol

from sessions import events


@pytest.mark.parametrize("length", [0, 125, 126, 65535, 65536, 200_000])
def test_a_frame_is_the_bytes_autobahn_would_write(length):
    text = ("é" + "x" * length)[:length] if length else ""
    expected = PreparedMessage(
        text.encode("utf-8"), isBinary=False, applyMask=False, doNotCompress=True
    ).payloadHybi
    assert events.websocket_text_frame(text) == expected


@pytest.fixture
def connection():
    """A Twisted TCP connection (the kind daphne's sockets are) over a real socket
    pair, on a reactor of its own; and the peer's end."""
    loop = asyncio.new_event_loop()
    reactor = AsyncioSelectorReactor(loop)
    ours, peer = socket.socketpair()
    transport = tcp.Server(ours, Protocol(), ("127.0.0.1", 0), None, 0, reactor)
    peer.settimeout(5)
    yield transport, peer, loop
    transport.stopReading()
    transport.stopWriting()
    ours.close()
    peer.close()
    loop.close()


def _read(peer: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        data += peer.recv(count - len(data))
    return data


def _drain(transport, loop) -> None:
    """Let the reactor write what Twisted queued, as daphne's loop would."""
    for _ in range(1000):
        if not transport._tempDataBuffer and transport.offset == len(
            transport.dataBuffer
        ):
            return
        loop.run_until_complete(asyncio.sleep(0.001))
    raise AssertionError("Twisted never wrote what it queued")


def _drain_some(transport, loop) -> None:
    loop.run_until_complete(asyncio.sleep(0.001))


def test_a_frame_goes_to_the_socket_at_once_when_nothing_is_queued(connection):
    transport, peer, _ = connection
    frame = events.websocket_text_frame('{"type": "training_progress"}')
    events._write_now(transport, frame)
    # The reactor never ran: the bytes can only have been sent straight away.
    assert _read(peer, len(frame)) == frame
    assert not transport._tempDataBuffer


def test_a_frame_waits_behind_what_twisted_has_queued(connection):
    transport, peer, loop = connection
    queued = events.websocket_text_frame("sent the ASGI way, still queued")
    frame = events.websocket_text_frame("written by the fan-out")
    transport.write(queued)  # daphne's own write: queued until the loop turns
    events._write_now(transport, frame)
    _drain(transport, loop)
    assert _read(peer, len(queued) + len(frame)) == queued + frame


def test_what_the_socket_cannot_take_now_is_queued_in_order(connection):
    transport, peer, loop = connection
    big = events.websocket_text_frame("a" * 4_000_000)
    small = events.websocket_text_frame("next")
    events._write_now(transport, big)
    assert transport._tempDataBuffer  # the socket took part, Twisted has the rest
    events._write_now(transport, small)
    received = b""
    while len(received) < len(big) + len(small):
        _drain_some(transport, loop)
        try:
            received += peer.recv(1 << 20)
        except TimeoutError:
            continue
    assert received == big + small


def test_it_writes_to_daphnes_sockets_only(connection):
    transport, peer, _ = connection
    server = Server(application=None, endpoints=["tcp:port=0:interface=127.0.0.1"])
    server.connections = {}  # as Server.run() starts it
    protocol = WebSocketProtocol()
    protocol.transport = transport
    protocol.send_queue = []
    write = events.frame_writer(functools.partial(server.handle_reply, protocol))
    assert write is not None
    frame = events.websocket_text_frame("hello")
    # Not accepted yet: the caller must send the ASGI way.
    protocol.state = protocol.STATE_CONNECTING
    server.protocol_connected(protocol)
    assert write(frame) is False
    protocol.state = protocol.STATE_OPEN
    assert write(frame) is True
    assert _read(peer, len(frame)) == frame
    # Daphne was told the client has gone: nothing more is written.
    server.protocol_disconnected(protocol)
    assert write(frame) is False

    async def other_send(message):
        pass

    assert events.frame_writer(other_send) is None
    assert events.frame_writer(None) is None
    assert events.frame_writer(functools.partial(other_send)) is None
