"""Celery worker processes of the engine's integration tests.

Each listens on a queue of its own, so the shared live_stack worker (default queue)
never takes these tests' tasks, and runs in a process group of its own, so a test can
kill -9 it with its pool children without touching pytest.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.conftest import REDIS_URL, database_url_for_processes, stack


def new_queue() -> str:
    return f"engine-test-{uuid.uuid4().hex[:8]}"


class Worker:
    def __init__(
        self,
        queue: str,
        log: Path,
        pool: str = "solo",
        concurrency: int = 1,
        **env: str,
    ) -> None:
        self.queue = queue
        self.log = log
        environment = dict(
            os.environ,
            REDIS_URL=REDIS_URL,
            DATABASE_URL=database_url_for_processes(),
            DJANGO_SETTINGS_MODULE="mltrack.settings",
            DEBUG="1",
            PYTHONUNBUFFERED="1",
            **env,
        )
        self.process = stack.start_worker(
            environment,
            log,
            name=f"{log.stem}-{uuid.uuid4().hex[:6]}",
            pool=pool,
            concurrency=concurrency,
            extra_args=("-Q", queue, "--without-heartbeat"),
            new_session=True,
        )

    def wait_ready(self, timeout: float = 120) -> Worker:
        wait_for(lambda: "ready." in self.log.read_text(errors="replace"), timeout)
        return self

    def kill(self) -> None:
        """kill -9 the worker and its pool children: no chance to clean up."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()


def wait_for(condition: Callable[[], Any], timeout: float, every: float = 0.2) -> Any:
    """Poll a real condition until it is truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"condition not met within {timeout:.0f} s")
