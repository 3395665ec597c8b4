"""A small WebSocket client that stamps each message the moment its bytes are read.

The live benchmark's viewers share the machine's two cores with daphne and the
worker. The `websockets` library costs ~140 us of CPU per message here (frame
parsing in its protocol, a queue, a task woken per recv()), so 100 viewers in one
process spent as much CPU as daphne did and stamped the 100th copy of an event
~15 ms after the first: that figure was the client's, not the server's
(bench/NOTES.md, session 15). This client does the HTTP upgrade and reads frames
in an asyncio Protocol: a message is stamped in data_received(), when the event
loop reads it off the socket, which is what "arrival at a viewer" means. It
speaks only what a viewer needs: text messages (fragmented or not), ping, close.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import struct
import time
from collections.abc import Callable
from urllib.parse import urlsplit

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
TEXT, CLOSE, PING, CONTINUATION = 0x1, 0x8, 0x9, 0x0


def _masked_frame(opcode: int, payload: bytes) -> bytes:
    """A client's frame: RFC 6455 requires a client to mask what it sends."""
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    assert len(payload) < 126  # control frames only
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + masked


class Viewer(asyncio.Protocol):
    """One socket. `on_message(arrived, text)` is called for each text message,
    `arrived` being time.time() when its last bytes were read."""

    def __init__(
        self, request: bytes, key: bytes, on_message: Callable[[float, str], None]
    ) -> None:
        self.request = request
        self.accept = base64.b64encode(hashlib.sha1(key + _GUID).digest())
        self.on_message = on_message
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.open = asyncio.get_running_loop().create_future()
        self.closed = asyncio.get_running_loop().create_future()
        self.fragments: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        arrived = time.time()
        self.buffer += data
        if not self.open.done():
            head, found, _ = self.buffer.partition(b"\r\n\r\n")
            if not found:
                return
            del self.buffer[: len(head) + 4]
            lines = bytes(head).split(b"\r\n")
            headers = {
                name.strip().lower(): value.strip()
                for name, _, value in (line.partition(b":") for line in lines[1:])
            }
            if b" 101 " not in lines[0] + b" ":
                self.open.set_exception(ConnectionError(lines[0].decode()))
                return
            if headers.get(b"sec-websocket-accept") != self.accept:
                self.open.set_exception(ConnectionError("bad Sec-WebSocket-Accept"))
                return
            self.open.set_result(None)
        self._frames(arrived)

    def _frames(self, arrived: float) -> None:
        # Parse from an offset and drop the parsed bytes once: deleting each
        # frame from the front of the buffer moved the rest every time, which is
        # quadratic in a burst's read of a few hundred frames.
        buffer, offset, end = self.buffer, 0, len(self.buffer)
        while end - offset >= 2:
            first, second = buffer[offset], buffer[offset + 1]
            if second & 0x80:
                raise ConnectionError("a server must not mask its frames")
            length, start = second & 0x7F, offset + 2
            if length == 126:
                if end - offset < 4:
                    break
                (length,), start = (
                    struct.unpack_from("!H", buffer, offset + 2),
                    offset + 4,
                )
            elif length == 127:
                if end - offset < 10:
                    break
                (length,), start = (
                    struct.unpack_from("!Q", buffer, offset + 2),
                    offset + 10,
                )
            if end < start + length:
                break
            payload = bytes(buffer[start : start + length])
            offset = start + length
            opcode, final = first & 0x0F, first & 0x80
            if opcode in (TEXT, CONTINUATION):
                self.fragments.append(payload)
                if final:
                    text = b"".join(self.fragments).decode("utf-8")
                    self.fragments = []
                    self.on_message(arrived, text)
            elif opcode == PING:
                self._send(0xA, payload)
            elif opcode == CLOSE:
                self._send(CLOSE, payload[:2])
                self._finish()
        del buffer[:offset]

    def _send(self, opcode: int, payload: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(_masked_frame(opcode, payload))

    def _finish(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.open.done():
            self.open.set_exception(exc or ConnectionError("closed before opening"))
        if not self.closed.done():
            self.closed.set_result(None)

    async def close(self) -> None:
        """Say goodbye (code 1000) and wait for the server to close."""
        self._send(CLOSE, struct.pack("!H", 1000))
        try:
            await asyncio.wait_for(asyncio.shield(self.closed), 5)
        except TimeoutError:
            self._finish()


async def connect(
    url: str, token: str, on_message: Callable[[float, str], None]
) -> Viewer:
    """Open a socket to a ws:// URL with a bearer token; raises ConnectionError if
    the server does not switch protocols."""
    parts = urlsplit(url)
    key = base64.b64encode(os.urandom(16))
    host = f"{parts.hostname}:{parts.port}" if parts.port else str(parts.hostname)
    request = (
        f"GET {parts.path or '/'} HTTP/1.1\r\n"
        f"Host: {host}\r\n"
        "Upgrade: websocket\r\n"
        "Connection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key.decode()}\r\n"
        "Sec-WebSocket-Version: 13\r\n"
        f"Authorization: Bearer {token}\r\n"
        "\r\n"
    ).encode("latin-1")
    loop = asyncio.get_running_loop()
    _, viewer = await loop.create_connection(
        lambda: Viewer(request, key, on_message),
        parts.hostname,
        parts.port or 80,
    )
    await asyncio.wait_for(viewer.open, 60)
    return viewer
