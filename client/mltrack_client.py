"""Log any training loop to mltrack, live.

A single module with only the standard library: copy it next to a training script
(PyTorch, Keras, XGBoost, a notebook) and

    from mltrack_client import Run

    with Run("http://127.0.0.1:8000", token, name="resnet", params={"lr": 3e-4},
             total_epochs=50) as run:
        for epoch in range(1, 51):
            ...
            run.log(epoch, train_loss=loss, val_accuracy=acc, my_metric=x)
            if run.should_stop:     # someone pressed Stop on the page
                break

`log` only appends to a list in memory: a background thread creates the run, sends
the points in batches, sends heartbeats while the loop is quiet, and retries with
backoff while the server is unreachable, keeping every point until it is accepted.
Leaving the block flushes what is left and marks the run completed (stopped, when
Stop was pressed), or failed with the exception if the block raised.

NaN and infinite values cannot travel in JSON: they are dropped from the point with
a warning (the other metrics of the same step are kept).
"""

from __future__ import annotations

import http.client
import json
import logging
import math
import random
import threading
import time
import traceback
import urllib.error
import urllib.request
from types import TracebackType
from typing import Any

__all__ = ["Run", "RunError"]
__version__ = "1.0"

logger = logging.getLogger("mltrack_client")

# Answers worth retrying: the server is restarting, overloaded or behind a proxy
# that lost it. Anything else in 4xx is a mistake that a retry will not fix.
RETRY_STATUSES = {408, 425, 429, 500, 502, 503, 504}


class RunError(Exception):
    """The server refused a request for a reason a retry will not fix."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


class _Unreachable(Exception):
    """The server did not answer, or answered with a status worth retrying."""


class Run:
    """One logged run. Thread-safe: `log` may be called from any thread."""

    def __init__(
        self,
        url: str,
        token: str,
        name: str = "",
        params: dict[str, Any] | None = None,
        total_epochs: int | None = None,
        dataset: str | None = None,
        *,
        flush_interval: float = 0.5,
        heartbeat_interval: float = 15.0,
        batch_size: int = 1000,
        timeout: float = 10.0,
        max_backoff: float = 30.0,
        finish_timeout: float = 120.0,
    ) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.name = name
        self.params = dict(params or {})
        self.total_epochs = total_epochs
        self.dataset = dataset
        self.flush_interval = flush_interval
        self.heartbeat_interval = heartbeat_interval
        self.batch_size = batch_size
        self.timeout = timeout
        self.max_backoff = max_backoff
        self.finish_timeout = finish_timeout

        self.session_id: int | None = None
        self.session: dict[str, Any] | None = None
        self.error: RunError | None = None
        self.sent = 0  # points the server has accepted
        self._stop_requested = False
        self._pending: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_contact = 0.0
        self._warned: set[str] = set()
        self._final: dict[str, str] = {"status": "completed", "error": ""}

    # The training loop's side: never touches the network.

    def __enter__(self) -> Run:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            self.finish("completed")
        else:
            detail = "".join(traceback.format_exception_only(exc_type, exc)).strip()
            self.finish("failed", error=detail)

    def start(self) -> Run:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="mltrack-client", daemon=True
            )
            self._thread.start()
        return self

    def log(self, step: int, **metrics: Any) -> None:
        """Record the metrics of one step (an epoch, or any increasing counter)."""
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"step must be an integer >= 0, not {step!r}")
        clean: dict[str, float] = {}
        for name, value in metrics.items():
            try:
                number = float(value)  # numpy and torch scalars convert too
            except (TypeError, ValueError):
                raise ValueError(
                    f"step {step}: metric {name} must be a number, not {value!r}"
                ) from None
            if not math.isfinite(number):
                if name not in self._warned:
                    self._warned.add(name)
                    logger.warning(
                        "step %s: %s is %s; non-finite values are not logged",
                        step,
                        name,
                        number,
                    )
                continue
            clean[name] = number
        if not clean:
            return
        with self._lock:
            self._pending.append({"epoch": step, "metrics": clean})
        self.start()

    @property
    def should_stop(self) -> bool:
        """True once someone asked the run to stop (the page's Stop button)."""
        return self._stop_requested

    @property
    def pending(self) -> int:
        """Points logged but not yet accepted by the server."""
        with self._lock:
            return len(self._pending)

    def finish(self, status: str = "completed", error: str = "") -> None:
        """Send every point left, then end the run. Waits for the server up to
        finish_timeout seconds; points still unsent then are reported as lost."""
        if self._closing.is_set():
            return
        self.start()
        self._final = {"status": status, "error": error[:10_000]}
        self._closing.set()
        self._wake.set()
        assert self._thread is not None
        self._thread.join(self.finish_timeout)
        if self._thread.is_alive():
            logger.error(
                "mltrack server unreachable for %.0f s: %d points not sent",
                self.finish_timeout,
                self.pending,
            )

    # The background thread's side.

    def _run(self) -> None:
        backoff = 0.5
        finished = False
        while not finished:
            try:
                finished = self._step()
                backoff = 0.5
            except _Unreachable as exc:
                logger.info("mltrack: %s; retrying in %.1f s", exc, backoff)
                self._sleep(backoff * (0.5 + random.random()))
                backoff = min(backoff * 2, self.max_backoff)
            except RunError as exc:
                logger.error("mltrack gave up on run %s: %s", self.session_id, exc)
                self.error = exc
                return
            except Exception:  # a bug here must not take the training down
                logger.exception("mltrack client failed")
                self._sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff)

    def _step(self) -> bool:
        """Do the next piece of work; True once the run is finished."""
        if self.session_id is None:
            body: dict[str, Any] = {"name": self.name, "params": self.params}
            if self.total_epochs is not None:
                body["totalEpochs"] = self.total_epochs
            if self.dataset:
                body["dataset"] = self.dataset
            self._answered(self._post("/api/ml/runs", body))
            self.session_id = self.session["id"]
            return False
        with self._lock:
            batch = self._pending[: self.batch_size]
        base = f"/api/ml/runs/{self.session_id}"
        if batch:
            self._answered(self._post(base + "/metrics", {"epochs": batch}))
            with self._lock:
                del self._pending[: len(batch)]
            self.sent += len(batch)
            return False
        if self._closing.is_set():
            self._answered(self._post(base + "/finish", self._final))
            return True
        if time.monotonic() - self._last_contact >= self.heartbeat_interval:
            self._answered(self._post(base + "/heartbeat", {}))
        self._wake.wait(self.flush_interval)
        self._wake.clear()
        return False

    def _answered(self, answer: dict[str, Any]) -> None:
        self._last_contact = time.monotonic()
        self.session = answer.get("session", self.session)
        if answer.get("stopRequested"):
            self._stop_requested = True

    def _sleep(self, seconds: float) -> None:
        # Not cut short by finish(): the server needs the time to come back.
        time.sleep(seconds)

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        request = urllib.request.Request(
            self.url + path,
            data=json.dumps(body, allow_nan=False).encode(),
            method="POST",
            headers={
                "Authorization": f"Bearer {self.token}",
                "Content-Type": "application/json",
                "Accept": "application/json",
                "User-Agent": f"mltrack-client/{__version__}",
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as exc:
            message = _error_text(exc)
            if exc.code in RETRY_STATUSES:
                raise _Unreachable(f"{path} answered {exc.code}: {message}") from None
            raise RunError(exc.code, message) from None
        # Refused, reset, timed out, cut off, or not JSON (a proxy's error page).
        except (OSError, http.client.HTTPException, ValueError) as exc:
            raise _Unreachable(f"{path}: {exc}") from None


def _error_text(exc: urllib.error.HTTPError) -> str:
    try:
        return json.loads(exc.read()).get("error", exc.reason)
    except (OSError, ValueError, AttributeError):
        return str(exc.reason)
