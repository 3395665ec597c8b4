"""What every benchmark shares: figures (median, min, max of several runs), a
keep-alive HTTP client, and the processes under test (redis-server, a database, a
Celery worker, daphne), each started fresh for the benchmark and stopped after it.

Plain standard library plus psutil, so the peers' script (bench/peers.py, run by
another virtualenv) can import it too. Django is only imported by bench/suite.py.
"""

from __future__ import annotations

import http.client
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
VAR = ROOT / "var" / "bench"
sys.path.insert(0, str(ROOT / "scripts"))
import stack  # noqa: E402

PG_ADMIN_URL = os.getenv("BENCH_PG_URL", "postgres://postgres@127.0.0.1:5432/postgres")
# The database the bench drops and creates: BENCH_PG_DB lets two checkouts run at once
PG_BENCH_DB = os.getenv("BENCH_PG_DB", "mltrack_bench")


@dataclass
class Figure:
    """One measured quantity: a value per run, printed as median (min, max)."""

    bench: str
    name: str
    unit: str
    values: list[float] = field(default_factory=list)
    db: str = ""
    note: str = ""
    skipped: str = ""
    # "higher" or "lower": which direction is better, for the report's ratios.
    better: str = "lower"

    @property
    def median(self) -> float | None:
        return statistics.median(self.values) if self.values else None

    def line(self) -> str:
        label = f"[{self.db}] {self.name}" if self.db else self.name
        if self.skipped:
            return f"{label}: skipped: {self.skipped}"
        if not self.values:
            return f"{label}: no value"
        return (
            f"{label}: median {fmt(self.median)} {self.unit} "
            f"(min {fmt(min(self.values))}, max {fmt(max(self.values))}, "
            f"n={len(self.values)})" + (f"  {self.note}" if self.note else "")
        )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Results:
    """The figures of one process, printed as they come and saved as JSON."""

    def __init__(self) -> None:
        self.figures: list[Figure] = []

    def add(self, figure: Figure) -> Figure:
        self.figures.append(figure)
        print("  " + figure.line(), flush=True)
        return figure

    def skip(self, bench: str, name: str, reason: str, db: str = "") -> Figure:
        return self.add(Figure(bench, name, "", db=db, skipped=reason))

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps([f.as_dict() for f in self.figures], indent=1))


def fmt(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 100:
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile (fraction in 0..1) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def middle_half(values: list[float]) -> tuple[float, float]:
    """The first and third quartiles: how far apart most runs were."""
    return percentile(values, 0.25), percentile(values, 0.75)


def median_interval(values: list[float]) -> tuple[float, float] | None:
    """A 95 % confidence interval for the median of what `values` were drawn
    from, assuming nothing about their distribution: the k-th smallest and k-th
    largest values, k the largest rank with P(Binomial(n, 1/2) < k) <= 2.5 %
    (None when there are too few values, under 6). It says whether a median
    of noisy pairs is on one side of a line or could be on either."""
    ordered = sorted(values)
    n = len(ordered)
    below, k = 0.0, 0
    while True:
        below += math.comb(n, k) / 2**n  # P(fewer than k + 1 values below it)
        if below > 0.025:
            break
        k += 1
    if k == 0:
        return None
    return ordered[k - 1], ordered[n - k]


class Http:
    """One keep-alive HTTP/1.1 connection, as a browser or a client library keeps."""

    def __init__(self, base_url: str, headers: dict[str, str] | None = None) -> None:
        parts = urlsplit(base_url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.headers = headers or {}
        self.connection = http.client.HTTPConnection(self.host, self.port, timeout=120)

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, bytes, dict[str, str]]:
        data = None
        all_headers = dict(self.headers, **(headers or {}))
        if body is not None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            all_headers.setdefault("Content-Type", "application/json")
        for attempt in (1, 2):
            try:
                self.connection.request(method, path, body=data, headers=all_headers)
                response = self.connection.getresponse()
                payload = response.read()
                return response.status, payload, dict(response.getheaders())
            except (
                http.client.RemoteDisconnected,
                ConnectionResetError,
                BrokenPipeError,
            ):
                # The server closed an idle keep-alive connection: reconnect once.
                self.connection.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def json(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        status, payload, _ = self.request(method, path, body)
        try:
            return status, json.loads(payload) if payload else None
        except ValueError:
            return status, payload.decode(errors="replace")

    def close(self) -> None:
        self.connection.close()


def timed(function: Any, *args: Any, **kwargs: Any) -> tuple[float, Any]:
    """(seconds, result) of one call."""
    started = time.perf_counter()
    result = function(*args, **kwargs)
    return time.perf_counter() - started, result


def tree_memory(pids: list[int]) -> dict[str, float]:
    """Resident memory (RSS and PSS, MB) of processes and all their children.

    RSS counts pages shared between a parent and its forked children once per
    process, as `ps` and most published figures do; PSS splits them fairly.
    """
    import psutil

    seen: dict[int, Any] = {}
    for pid in pids:
        try:
            root = psutil.Process(pid)
        except psutil.NoSuchProcess:
            continue
        for process in [root, *root.children(recursive=True)]:
            seen[process.pid] = process
    rss = pss = 0.0
    for process in seen.values():
        try:
            info = process.memory_full_info()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        rss += info.rss
        pss += getattr(info, "pss", info.rss)
    return {"rss": rss / 2**20, "pss": pss / 2**20, "processes": len(seen)}


def pg_available() -> bool:
    try:
        return (
            subprocess.run(
                ["psql", PG_ADMIN_URL, "-tAc", "select 1"],
                capture_output=True,
                timeout=10,
            ).returncode
            == 0
        )
    except (OSError, subprocess.TimeoutExpired):
        return False


def pg_recreate(name: str) -> str:
    """Drop and create a PostgreSQL database; return its URL."""
    for sql in (
        f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)',
        f'CREATE DATABASE "{name}"',
    ):
        subprocess.run(
            ["psql", PG_ADMIN_URL, "-qc", sql], check=True, capture_output=True
        )
    return PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name


def pg_drop(name: str) -> None:
    subprocess.run(
        ["psql", PG_ADMIN_URL, "-qc", f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'],
        capture_output=True,
    )


def machine() -> dict[str, Any]:
    import psutil

    model = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cores": os.cpu_count(),
        "cpu": model,
        "ramGB": round(psutil.virtual_memory().total / 2**30, 1),
        "os": platform.platform(),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
    }


def start_redis(name: str) -> tuple[subprocess.Popen, str]:
    port = stack.free_port()
    process = stack.start_redis(port, VAR / f"redis-{name}")
    return process, f"redis://127.0.0.1:{port}/0"


def wait_for_log(
    path: Path, needle: str, process: subprocess.Popen, timeout: float
) -> None:
    """Wait until a process's log file shows `needle` (e.g. the worker's "ready")."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{path.name}: process exited ({process.returncode})")
        if path.exists() and needle in path.read_text(errors="replace"):
            return
        time.sleep(0.1)
    raise RuntimeError(f"{path.name}: no {needle!r} within {timeout:.0f} s")
