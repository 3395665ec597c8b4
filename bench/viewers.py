"""WebSocket viewers in their own process, so the process that sends events and the
process that receives them do not share one Python interpreter's CPU time.

No Django here: a viewer is any client holding a bearer token.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import websockets


async def _connect(url: str, token: str) -> Any:
    return await websockets.connect(
        url,
        additional_headers={"Authorization": f"Bearer {token}"},
        max_size=None,
        ping_interval=None,
        open_timeout=60,
    )


async def _viewers(
    urls: list[str], token: str, expected: int, ready: Any, timeout: float
) -> dict[str, Any]:
    sockets = []
    for start in range(0, len(urls), 20):
        sockets += await asyncio.gather(
            *(_connect(url, token) for url in urls[start : start + 20])
        )
    ready.put(len(sockets))

    async def count(socket: Any) -> tuple[int, float, float]:
        received = 0
        first = last = 0.0
        deadline = time.monotonic() + timeout
        while received < expected:
            try:
                raw = await asyncio.wait_for(
                    socket.recv(), max(0.01, deadline - time.monotonic())
                )
            except TimeoutError:
                break
            last = time.time()
            first = first or last
            # A batch frame carries several events: count events, not frames.
            received += raw.count('"type": "training_progress"')
        return received, first, last

    counted = await asyncio.gather(*(count(s) for s in sockets))
    for socket in sockets:
        await socket.close()
    return {
        "counts": [c[0] for c in counted],
        "first": min((c[1] for c in counted if c[1]), default=0.0),
        "last": max((c[2] for c in counted), default=0.0),
    }


def run(
    urls: list[str], token: str, expected: int, ready: Any, results: Any, timeout: float
) -> None:
    """Open one socket per URL, say so on `ready`, count `expected` messages per
    socket (or stop after `timeout` seconds) and put the counts on `results`."""
    results.put(asyncio.run(_viewers(urls, token, expected, ready, timeout)))
