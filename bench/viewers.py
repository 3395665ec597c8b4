"""WebSocket viewers in their own process, so the process that sends events and the
process that receives them do not share one Python interpreter's CPU time.

No Django here: a viewer is any client holding a bearer token.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from bench import wsclient


async def _viewers(
    urls: list[str], token: str, expected: int, ready: Any, timeout: float
) -> dict[str, Any]:
    counts = [0] * len(urls)
    firsts = [0.0] * len(urls)
    lasts = [0.0] * len(urls)
    done = asyncio.Event()
    complete: set[int] = set()

    def viewer(number: int) -> Callable[[float, str], None]:
        def on_message(arrived: float, raw: str) -> None:
            # A batch frame carries several events: count events, not frames.
            counts[number] += raw.count('"type": "training_progress"')
            firsts[number] = firsts[number] or arrived
            lasts[number] = arrived
            if counts[number] >= expected:
                complete.add(number)
                if len(complete) == len(urls):
                    done.set()

        return on_message

    sockets = []
    for start in range(0, len(urls), 20):
        sockets += await asyncio.gather(
            *(
                wsclient.connect(url, token, viewer(start + offset))
                for offset, url in enumerate(urls[start : start + 20])
            )
        )
    ready.put(len(sockets))
    try:
        await asyncio.wait_for(done.wait(), timeout)
    except TimeoutError:
        pass  # counted as lost
    for socket in sockets:
        await socket.close()
    return {
        "counts": counts,
        "first": min((first for first in firsts if first), default=0.0),
        "last": max(lasts, default=0.0),
    }


def run(
    urls: list[str], token: str, expected: int, ready: Any, results: Any, timeout: float
) -> None:
    """Open one socket per URL, say so on `ready`, count `expected` messages per
    socket (or stop after `timeout` seconds) and put the counts on `results`."""
    results.put(asyncio.run(_viewers(urls, token, expected, ready, timeout)))
