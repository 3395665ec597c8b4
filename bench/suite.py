"""mltrack's benchmarks on one database, against processes this script starts:
its own redis-server, a fresh database (SQLite file or PostgreSQL database), a
Celery worker and daphne. Run by bench/run_all.py, once per database:

    .venv/bin/python bench/suite.py --db sqlite --out var/bench/sqlite.json [--quick]

Every figure is measured several times and printed as median (min, max).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import multiprocessing
import os
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import viewers, worker_tasks, wsclient  # noqa: E402
from bench.common import (  # noqa: E402
    PG_BENCH_DB,
    VAR,
    Figure,
    Http,
    Results,
    middle_half,
    percentile,
    pg_drop,
    pg_recreate,
    stack,
    start_redis,
    tree_memory,
)

FINAL_TYPES = ("training_completed", "training_failed", "training_stopped")
MISSING = "skipped: endpoint not available"


class Services:
    """The processes under test, with their environment."""

    def __init__(self, db: str) -> None:
        self.db = db
        self.label = db
        self.logs = VAR / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.redis, self.redis_url = start_redis(db)
        if db == "sqlite":
            # One file per process, so a smoke test and a full run never collide.
            self.sqlite_path = VAR / f"bench-{os.getpid()}.sqlite3"
            self.database_url = f"sqlite:///{self.sqlite_path}"
        else:
            self.database_url = pg_recreate(PG_BENCH_DB)
        # Production settings (DEBUG off), except HTTPS: the bench talks plain HTTP.
        self.env = dict(
            os.environ,
            DATABASE_URL=self.database_url,
            REDIS_URL=self.redis_url,
            DJANGO_SETTINGS_MODULE="mltrack.settings",
            DEBUG="0",
            SECRET_KEY="bench-only-secret-key-not-for-production",
            SECURE_SSL_REDIRECT="0",
            ALLOWED_HOSTS="127.0.0.1,localhost",
            LOG_LEVEL="WARNING",
            PYTHONUNBUFFERED="1",
            # The live bench trains 10 runs at once; the default cap is lower.
            MLTRACK_MAX_CONCURRENT_RUNS="10",
        )
        self.worker: Any = None
        self.daphnes: list[tuple[Any, int]] = []

    def setup_django(self) -> None:
        os.environ.update(self.env)
        import django

        django.setup()
        from django.core.management import call_command

        call_command("migrate", verbosity=0, interactive=False)
        call_command("collectstatic", verbosity=0, interactive=False)

    def start_worker(self, concurrency: int) -> None:
        self.stop_worker()
        self.worker = stack.start_worker(
            self.env,
            self.logs / f"worker-{self.db}.log",
            name=f"bench-{self.db}",
            concurrency=concurrency,
            # The overhead bench's untracked fit runs in this worker too.
            extra_args=("--include", "bench.worker_tasks"),
        )

    def stop_worker(self) -> None:
        if self.worker is not None:
            stack.stop([self.worker], timeout=30)
            self.worker = None

    def start_daphne(self) -> str:
        port = stack.free_port()
        process = stack.start_daphne(
            self.env, port, self.logs / f"daphne-{self.db}-{port}.log"
        )
        self.daphnes.append((process, port))
        return f"http://127.0.0.1:{port}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.daphnes[0][1]}"

    def stop(self) -> None:
        self.stop_worker()
        stack.stop([p for p, _ in self.daphnes] + [self.redis], timeout=20)
        from django.db import connections

        connections.close_all()
        if self.db == "postgres":
            pg_drop(PG_BENCH_DB)
        else:
            for suffix in ("", "-wal", "-shm"):
                Path(f"{self.sqlite_path}{suffix}").unlink(missing_ok=True)


# ---------------------------------------------------------------- helpers


def bench_user(name: str = "bench") -> tuple[Any, str]:
    from django.contrib.auth import get_user_model

    from sessions.models import ApiToken

    user, _ = get_user_model().objects.get_or_create(username=name)
    _, token = ApiToken.issue(user, name="bench")
    return user, token


def session_cookie(user: Any) -> str:
    """A logged-in session for `user`, as the login form would create."""
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
    from django.contrib.sessions.backends.db import SessionStore

    store = SessionStore()
    store[SESSION_KEY] = str(user.pk)
    store[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
    store[HASH_SESSION_KEY] = user.get_session_auth_hash()
    store.create()
    return store.session_key


def start_runs(base: str, token: str, count: int, body: dict[str, Any]) -> list[int]:
    client = Http(base, {"Authorization": f"Bearer {token}"})
    ids = []
    for _ in range(count):
        status, answer = client.json("POST", "/api/ml/start-training", body)
        if status != 201:
            raise RuntimeError(f"start-training answered {status}: {answer}")
        ids.append(answer["session"]["id"])
    client.close()
    return ids


def wait_finished(ids: list[int], timeout: float = 600) -> list[Any]:
    from sessions.models import TrainingSession

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sessions = list(TrainingSession.objects.filter(pk__in=ids))
        if all(not s.is_active for s in sessions):
            bad = [s for s in sessions if s.status != "completed"]
            if bad:
                raise RuntimeError(f"runs did not complete: {bad} {bad[0].error}")
            return sessions
        time.sleep(0.1)
    raise RuntimeError(f"runs {ids} did not finish within {timeout:.0f} s")


def make_run(user: Any, epochs: int, seed: int = 1) -> Any:
    """A finished session with `epochs` rows of realistic-looking metrics, made with
    bulk_create (the reading benchmarks need history, not a training)."""
    from django.utils.timezone import now

    from sessions.models import EpochMetric, TrainingSession

    session = TrainingSession.objects.create(
        owner=user,
        name=f"bench {epochs} epochs",
        model_type="mlp",
        dataset="digits",
        status="completed",
        total_epochs=epochs,
        current_epoch=epochs,
        started_at=now(),
        finished_at=now(),
    )
    rng = random.Random(seed)
    moment = now()
    rows = []
    for epoch in range(1, epochs + 1):
        decay = math.exp(-epoch / (epochs / 5))
        spike = 1.5 if rng.random() < 0.001 else 0.0
        train_loss = 0.05 + 2.2 * decay + rng.gauss(0, 0.02) + spike
        val_loss = 0.09 + 2.0 * decay + rng.gauss(0, 0.03)
        rows.append(
            EpochMetric(
                session=session,
                epoch=epoch,
                train_loss=train_loss,
                val_loss=val_loss,
                train_accuracy=min(1.0, 1 - 0.9 * decay + rng.gauss(0, 0.005)),
                val_accuracy=min(1.0, 0.97 - 0.87 * decay + rng.gauss(0, 0.01)),
                learning_rate=0.001,
                precision=0.9,
                recall=0.9,
                f1=0.9,
                duration=0.01,
                created=moment,
            )
        )
    EpochMetric.objects.bulk_create(rows, batch_size=2000)
    return session


def frame_events(raw: str) -> list[dict[str, Any]]:
    """The events in one WebSocket frame: one, or several in a batch frame."""
    frame = json.loads(raw)
    return frame["events"] if frame.get("type") == "batch" else [frame]


def ws_url(base: str, path: str) -> str:
    return base.replace("http://", "ws://") + path


# ---------------------------------------------------------------- live latency


async def _watch(
    url: str, token: str, viewers_count: int, start: Callable[[], list[int]]
) -> list[float]:
    """Open the viewers, start the runs, and return every progress event's latency
    (ms from the epoch's end, stamped before its save, to its arrival) at every
    viewer. A message arrives when its bytes are read off the viewer's socket
    (bench/wsclient.py)."""
    state: dict[str, Any] = {"ids": None}
    all_finished = asyncio.Event()
    arrivals: list[list[tuple[float, str]]] = []
    finished_viewers: set[int] = set()

    def viewer(number: int) -> Callable[[float, str], None]:
        received: list[tuple[float, str]] = []
        arrivals.append(received)
        finished: set[int] = set()

        def on_message(arrived: float, raw: str) -> None:
            received.append((arrived, raw))  # parsed once the runs are over
            if not any(final in raw for final in FINAL_TYPES):
                return
            for event in frame_events(raw):
                if event.get("type") in FINAL_TYPES:
                    finished.add(event["session"]["id"])
            if state["ids"] is not None and set(state["ids"]) <= finished:
                finished_viewers.add(number)
                if len(finished_viewers) == viewers_count:
                    all_finished.set()

        return on_message

    sockets = []
    for first in range(0, viewers_count, 20):
        sockets += await asyncio.gather(
            *(
                wsclient.connect(url, token, viewer(number))
                for number in range(first, min(first + 20, viewers_count))
            )
        )
    state["ids"] = await asyncio.to_thread(start)
    await asyncio.wait_for(all_finished.wait(), 600)
    for socket in sockets:
        await socket.close()
    latencies = []
    ids = set(state["ids"])
    for received in arrivals:
        for arrived, raw in received:
            for event in frame_events(raw):
                progress = event["type"] == "training_progress"
                if progress and event["session"]["id"] in ids:
                    latencies.append((arrived - event["savedAt"]) * 1000)
    return latencies


def bench_live(services: Services, results: Results, quick: bool, repeat: int) -> None:
    user, token = bench_user()
    epochs = 20 if quick else 200
    body = {"modelType": "logistic", "dataset": "iris", "epochs": epochs}
    base = services.url
    scenarios = [
        ("1 viewer, 1 run", 1, 1),
        (f"{4 if quick else 100} viewers of one run", 4 if quick else 100, 1),
        (f"{2 if quick else 10} runs at once, 1 viewer", 1, 2 if quick else 10),
    ]
    for label, viewer_count, runs in scenarios:
        medians, p99s, counts = [], [], []
        for _ in range(repeat):
            latencies = asyncio.run(
                _watch(
                    ws_url(base, "/ws/training/"),
                    token,
                    viewer_count,
                    lambda runs=runs: start_runs(base, token, runs, body),
                )
            )
            medians.append(percentile(latencies, 0.5))
            p99s.append(percentile(latencies, 0.99))
            counts.append(len(latencies))
        note = f"{epochs}-epoch logistic/iris runs; {counts[0]} events per repetition"
        results.add(
            Figure(
                "live", f"latency median, {label}", "ms", medians, services.label, note
            )
        )
        results.add(Figure("live", f"latency p99, {label}", "ms", p99s, services.label))


# ---------------------------------------------------------------- fan-out


def _fanout_once(
    services: Services,
    session: Any,
    token: str,
    bases: list[str],
    viewer_count: int,
    burst: int,
) -> dict[str, float]:
    import redis.asyncio
    from django.conf import settings

    from sessions import events

    context = multiprocessing.get_context("spawn")
    ready, answers = context.Queue(), context.Queue()
    path = f"/ws/training/{session.pk}/"
    # Viewers split evenly over the daphne processes, and over two client processes.
    urls = [ws_url(bases[i % len(bases)], path) for i in range(viewer_count)]
    halves = [urls[0::2], urls[1::2]]
    processes = [
        context.Process(
            target=viewers.run, args=(half, token, burst, ready, answers, 60)
        )
        for half in halves
        if half
    ]
    for process in processes:
        process.start()
    for _ in processes:
        ready.get(timeout=180)
    time.sleep(0.3)  # let the last group_add land before the first send

    template = {
        "type": "training_progress",
        "session": session.as_dict(),
        "metrics": {
            "train_loss": 0.41,
            "val_loss": 0.52,
            "train_accuracy": 0.9,
            "val_accuracy": 0.88,
            "learning_rate": 0.001,
            "precision": 0.87,
            "recall": 0.86,
            "f1": 0.865,
        },
        "duration": 0.01,
        "stats": {"elapsedSeconds": 1.0, "epochsPerMinute": 600.0, "etaSeconds": 3.0},
    }

    async def send_burst() -> float:
        # What a worker publishes, as fast as one Redis connection can.
        client = redis.asyncio.Redis.from_url(settings.REDIS_URL)
        channel = events.events_channel(settings.REDIS_URL)
        audiences = [events.session_audience(session.pk)]
        started = time.time()
        for epoch in range(1, burst + 1):
            data = dict(template, epoch=epoch, savedAt=time.time())
            message = events.wire_message(audiences, json.dumps(data))
            await client.publish(channel, message)
        await client.aclose()
        return started

    started = asyncio.run(send_burst())
    answered = [answers.get(timeout=300) for _ in processes]
    for process in processes:
        process.join(30)
    delivered = sum(sum(a["counts"]) for a in answered)
    last = max(a["last"] for a in answered)
    elapsed = max(1e-6, last - started)
    return {
        "eventsPerSecond": burst / elapsed,
        "messagesPerSecond": delivered / elapsed,
        "lost": burst * viewer_count - delivered,
    }


def bench_fanout(
    services: Services, results: Results, quick: bool, repeat: int
) -> None:
    user, token = bench_user()
    session = make_run(user, 1)
    counts = (4,) if quick else (10, 100)
    if len(services.daphnes) < 2:
        services.start_daphne()
    for daphne_count in (1, 2):
        bases = [
            f"http://127.0.0.1:{port}" for _, port in services.daphnes[:daphne_count]
        ]
        for viewer_count in counts:
            # Smaller bursts for many viewers keep a repetition under a minute.
            burst = 50 if quick else (500 if viewer_count <= 10 else 200)
            rates, messages, lost = [], [], []
            for _ in range(repeat):
                measured = _fanout_once(
                    services, session, token, bases, viewer_count, burst
                )
                rates.append(measured["eventsPerSecond"])
                messages.append(measured["messagesPerSecond"])
                lost.append(measured["lost"])
            label = f"{viewer_count} viewers, {daphne_count} daphne"
            note = f"burst of {burst} events; lost messages per repetition: {lost}"
            results.add(
                Figure(
                    "fanout",
                    f"events/s to each viewer, {label}",
                    "events/s",
                    rates,
                    services.label,
                    note,
                    better="higher",
                )
            )
            results.add(
                Figure(
                    "fanout",
                    f"messages/s delivered, {label}",
                    "msg/s",
                    messages,
                    services.label,
                    better="higher",
                )
            )


# ---------------------------------------------------------------- ingest


def bench_ingest(
    services: Services, results: Results, quick: bool, repeat: int
) -> None:
    _, token = bench_user()
    client = Http(services.url, {"Authorization": f"Bearer {token}"})
    batches = 2 if quick else 20
    calls = 20 if quick else 200
    names = ("ingest batched (1,000 points per request)", "ingest single-epoch call")

    def new_run(total: int) -> int | None:
        status, answer = client.json(
            "POST", "/api/ml/runs", {"name": "bench ingest", "totalEpochs": total}
        )
        if status in (404, 405):
            return None
        if status != 201:
            raise RuntimeError(f"POST /api/ml/runs answered {status}: {answer}")
        return answer["session"]["id"]

    def log(run_id: int, epochs: list[dict[str, Any]]) -> None:
        status, answer = client.json(
            "POST", f"/api/ml/runs/{run_id}/metrics", {"epochs": epochs}
        )
        if status not in (200, 201, 202):
            raise RuntimeError(f"metrics answered {status}: {str(answer)[:300]}")

    if new_run(1) is None:
        for name in names:
            results.skip(
                "ingest", name, MISSING.removeprefix("skipped: "), services.label
            )
        return
    rates, latencies, p99s, floors = [], [], [], []
    for _ in range(repeat):
        run_id = new_run(batches * 1000)
        started = time.perf_counter()
        for batch in range(batches):
            log(
                run_id,
                [
                    {
                        "epoch": batch * 1000 + i + 1,
                        "metrics": {"train_loss": 1 / (i + 1)},
                    }
                    for i in range(1000)
                ],
            )
        rates.append(batches * 1000 / (time.perf_counter() - started))

        run_id = new_run(calls)
        times = []
        for epoch in range(1, calls + 1):
            began = time.perf_counter()
            log(run_id, [{"epoch": epoch, "metrics": {"train_loss": 1 / epoch}}])
            times.append((time.perf_counter() - began) * 1000)
        latencies.append(percentile(times, 0.5))
        p99s.append(percentile(times, 0.99))

        # The same request to an API path with no view behind it: daphne, the
        # thread hop and Django's request handling with no database work, the
        # floor under any log call made through Django (bench/NOTES.md).
        times = []
        for epoch in range(1, calls + 1):
            began = time.perf_counter()
            status, _, _ = client.request(
                "POST",
                "/api/ml/no-such-endpoint",
                {"epochs": [{"epoch": epoch, "metrics": {"train_loss": 1 / epoch}}]},
            )
            times.append((time.perf_counter() - began) * 1000)
            if status != 404:
                raise RuntimeError(f"an unknown API path answered {status}")
        floors.append(percentile(times, 0.5))
    client.close()
    results.add(
        Figure(
            "ingest",
            names[0],
            "points/s",
            rates,
            services.label,
            f"{batches} requests of 1,000 epochs x 1 metric",
            better="higher",
        )
    )
    results.add(
        Figure(
            "ingest",
            names[1],
            "ms",
            latencies,
            services.label,
            f"median of {calls} sequential calls, keep-alive",
        )
    )
    results.add(
        Figure("ingest", "ingest single-epoch call p99", "ms", p99s, services.label)
    )
    results.add(
        Figure(
            "ingest",
            "API request that does no work (a JSON 404)",
            "ms",
            floors,
            services.label,
            f"median of {calls} sequential calls, keep-alive, same body",
        )
    )


# ---------------------------------------------------------------- reading


def bench_reading(
    services: Services, results: Results, quick: bool, repeat: int
) -> None:
    from django.core.cache import cache

    try:
        # A finished run's chart answer, stored at its first read (since 0006).
        from sessions.models import StoredChart as stored_chart
    except ImportError:
        stored_chart = None
    user, token = bench_user()
    epochs = 2000 if quick else 20_000
    began = time.perf_counter()
    session = make_run(user, epochs)
    created = time.perf_counter() - began
    api = Http(services.url, {"Authorization": f"Bearer {token}"})
    pages = Http(services.url, {"Cookie": f"sessionid={session_cookie(user)}"})
    reads = [
        ("chart", api, f"/api/ml/training-metrics/{session.pk}?maxPoints=1000"),
        ("json", api, f"/api/ml/training-metrics/{session.pk}"),
        ("csv", pages, f"/sessions/{session.pk}/metrics.csv"),
    ]
    for kind, client, path in reads:
        status, payload, _ = client.request("GET", path)  # warm-up
        if status == 404:
            results.skip(
                "reading",
                f"{kind} export of {epochs:,} epochs",
                MISSING.removeprefix("skipped: "),
                services.label,
            )
            continue
        if status != 200:
            raise RuntimeError(f"GET {path} answered {status}: {payload[:300]!r}")
        times, first_reads, unread = [], [], []
        for _ in range(repeat):
            if kind == "chart" and stored_chart is not None:
                # The read of a run nobody has read since it finished: nothing
                # cached in Redis, nothing stored in the database.
                stored_chart.objects.all().delete()
                cache.clear()
                began = time.perf_counter()
                client.request("GET", path)
                unread.append((time.perf_counter() - began) * 1000)
            if kind == "chart":
                # A finished run's thinned chart is cached after its first read:
                # measure that first read too, with the cache emptied.
                cache.clear()
                began = time.perf_counter()
                client.request("GET", path)
                first_reads.append((time.perf_counter() - began) * 1000)
            began = time.perf_counter()
            status, payload, _ = client.request("GET", path)
            times.append((time.perf_counter() - began) * 1000)
        size = f"{len(payload) / 1e6:.2f} MB uncompressed"
        if kind == "chart":
            body = json.loads(payload)
            points = len(body["epochs"])
            thinned = points < epochs
            name = (
                f"chart data of a {epochs:,}-epoch run (maxPoints=1000)"
                if thinned
                else f"chart data of a {epochs:,}-epoch run (maxPoints ignored: full)"
            )
            note = f"{points} epochs x 8 metrics; {size}; cached after a first read"
            results.add(
                Figure(
                    "reading",
                    f"first read of the chart data of a {epochs:,}-epoch run "
                    "(nothing cached)",
                    "ms",
                    first_reads,
                    services.label,
                    "the chart's request right after the cache was emptied",
                )
            )
            if unread:
                results.add(
                    Figure(
                        "reading",
                        f"first read of the chart data of a {epochs:,}-epoch run "
                        "(nothing cached or stored)",
                        "ms",
                        unread,
                        services.label,
                        "the chart's request with the cache emptied and the stored"
                        " chart deleted: a run nobody has read since it finished",
                    )
                )
        elif kind == "json":
            name = f"full history JSON, {epochs:,} epochs x 8 metrics"
            note = size
        else:
            name = f"full history CSV, {epochs:,} epochs x 8 metrics"
            note = size
        results.add(Figure("reading", name, "ms", times, services.label, note))
    print(f"  (made the {epochs:,}-epoch run with bulk_create in {created:.1f} s)")
    api.close()
    pages.close()


# ---------------------------------------------------------------- overhead


def _tracked_fit(
    base: str, token: str, body: dict[str, Any], worker_pid: int
) -> tuple[float, float, int]:
    """The run's wall time in the worker, from its start to its final status (the
    training with every epoch saved and pushed, even by a thread that finishes
    after fit() returns), the CPU seconds the worker spent meanwhile, and the
    session's id."""
    import psutil

    worker = psutil.Process(worker_pid)
    before = sum(worker.cpu_times()[:2])
    (session,) = wait_finished(start_runs(base, token, 1, body))
    cpu = sum(worker.cpu_times()[:2]) - before
    return (session.finished_at - session.started_at).total_seconds(), cpu, session.pk


def _tracked_between(session_id: int) -> float:
    """_between for a tracked run, from its stored epochs: each one's `created` is
    when its training ended (the worker's on_epoch), its `duration` the epoch's
    own work."""
    from sessions.models import EpochMetric

    rows = EpochMetric.objects.filter(session_id=session_id).order_by("epoch")
    ends, durations = zip(*rows.values_list("created", "duration"), strict=True)
    return _between([end.timestamp() for end in ends], list(durations))


def _between(ends: list[float], durations: list[float]) -> float:
    """The time from one epoch's end to the next one's start (the callback's
    work: saving and pushing, when tracked), as a percentage of an epoch's own
    work: the run's total of each. Not their medians: with a save every other
    epoch, the gaps alternate ~0.1 and ~0.55 ms (logistic/iris, session 16), and
    a median picks either one.

    Measured within one run, it does not move with the machine's speed, which
    swings the wall-clock pairs by tens of percent (bench/NOTES.md); it leaves
    out what tracking costs the epochs themselves (caches, the GIL handed to
    the worker's other threads), which only the wall clock sees.
    """
    gaps = [b - a - d for a, b, d in zip(ends, ends[1:], durations[1:], strict=False)]
    return sum(gaps) / sum(durations[1:]) * 100


def _worker_fit(
    services: Services, model_type: str, dataset: str, params: dict, epochs: int
) -> tuple[float, float, float]:
    """The same fit() with a callback that only notes the time, run by the worker
    itself (bench/worker_tasks.py): its wall time, the worker's CPU seconds
    meanwhile (as _tracked_fit counts them) and _between."""
    import psutil
    import redis

    reply_to = f"bench:fit-untracked:{os.getpid()}:{time.monotonic_ns()}"
    worker = psutil.Process(services.worker.pid)
    # No read timeout of its own (redis-py 8 has one): BLPOP waits for the fit.
    client = redis.Redis.from_url(services.redis_url, socket_timeout=None)
    try:
        before = sum(worker.cpu_times()[:2])
        worker_tasks.fit_untracked.delay(model_type, dataset, params, epochs, reply_to)
        reply = client.blpop([reply_to], timeout=600)
        cpu = sum(worker.cpu_times()[:2]) - before
    finally:
        client.close()
    if reply is None:
        raise RuntimeError(f"the worker did not fit {model_type}/{dataset} in 600 s")
    answer = json.loads(reply[1])
    return answer["wall"], cpu, _between(answer["ends"], answer["durations"])


def _direct_fit(
    model_type: str, dataset: str, params: dict, epochs: int
) -> tuple[float, float, float]:
    """The same fit() in a separate process set up as a worker is (niceness,
    thread switch interval): its wall time, CPU seconds and _between."""
    answer = _untracked_pool().apply(
        worker_tasks.fit_timed, (model_type, dataset, params, epochs)
    )
    return (
        answer["wall"],
        answer["cpu"],
        _between(answer["ends"], answer["durations"]),
    )


_untracked: Any = None


def _untracked_pool() -> Any:
    global _untracked
    if _untracked is None:
        context = multiprocessing.get_context("spawn")
        _untracked = context.Pool(1, initializer=_like_a_worker)
    return _untracked


def _like_a_worker() -> None:
    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mltrack.settings")
    django.setup()
    from django.conf import settings

    os.nice(settings.MLTRACK_WORKER_NICENESS)
    sys.setswitchinterval(settings.MLTRACK_WORKER_SWITCH_MICROSECONDS / 1e6)


# A 5 % difference hides in the noise of a shared 2-core machine unless tracked and
# untracked runs alternate many times; the figure is the median of the pairs.
# This machine runs at one of two speeds, switching every few seconds: the same
# 300-epoch logistic/iris fit's epochs took ~12 ms, then ~20 ms from one second
# to the next (session 16, bench/NOTES.md). A pair whose two runs straddle a
# switch is off by up to +-30 %, so each row gets as many pairs as fit in
# OVERHEAD_SECONDS (at least OVERHEAD_PAIRS; the median of 9 moved by 10 points
# from one round to the next), and the report judges a row by the 95 % interval
# of its median (bench/run_all.py).
OVERHEAD_PAIRS = 9
OVERHEAD_MAX_PAIRS = 49
OVERHEAD_SECONDS = 200
# The run in a separate process (for information) is measured on every this many
# pairs only, so the pairs that make the target's figure come closer together.
APART_EVERY = 3


def bench_overhead(
    services: Services, results: Results, quick: bool, repeat: int
) -> None:
    from sessions import catalog

    _, token = bench_user()
    # What the Models page's quick buttons start (each model type on digits, the
    # default epochs), and a stress case: epochs of ~5 ms, where the per-epoch
    # save and push weigh the most.
    configs = [("logistic", "iris", 20 if quick else 300)]
    if not quick:
        configs += [
            (model_type, "digits", catalog.DEFAULT_EPOCHS)
            for model_type in catalog.MODEL_TYPES
        ]
    for model_type, dataset, epochs in configs:
        params, errors = catalog.clean_params(model_type, dataset, {})
        assert not errors, errors
        body = {"modelType": model_type, "dataset": dataset, "epochs": epochs}
        tracked, in_worker, apart, load = [], [], [], []
        overhead, apart_overhead, cpu_overhead, between = [], [], [], []
        again = []  # the same loop against itself: the machine's own noise
        # Imports and first calls out of the figures, on both sides.
        _worker_fit(services, model_type, dataset, params, 5)
        _direct_fit(model_type, dataset, params, 5)
        worker_pid = services.worker.pid
        fit = (model_type, dataset, params, epochs)
        pairs = repeat
        if not quick:
            one_fit = _worker_fit(services, *fit)[0]
            pairs = int(OVERHEAD_SECONDS / (2 * one_fit))
            pairs = max(repeat, OVERHEAD_PAIRS, min(pairs, OVERHEAD_MAX_PAIRS))
        for index in range(pairs):
            load.append(os.getloadavg()[0])
            # Each first in turn, so a burst of load elsewhere hits both alike.
            if index % 2:
                plain, plain_cpu, plain_between = _worker_fit(services, *fit)
                live, live_cpu, session_id = _tracked_fit(
                    services.url, token, body, worker_pid
                )
            else:
                live, live_cpu, session_id = _tracked_fit(
                    services.url, token, body, worker_pid
                )
                plain, plain_cpu, plain_between = _worker_fit(services, *fit)
            tracked.append(live)
            in_worker.append(plain)
            overhead.append((live / plain - 1) * 100)
            cpu_overhead.append((live_cpu / plain_cpu - 1) * 100)
            between.append(_tracked_between(session_id) - plain_between)
            if index % APART_EVERY == 0:
                apart.append(_direct_fit(*fit)[0])
                apart_overhead.append((live / apart[-1] - 1) * 100)
            elif index % APART_EVERY == 1:
                again.append((_worker_fit(services, *fit)[0] / plain - 1) * 100)
        label = f"{model_type}/{dataset}, {epochs} epochs"
        low, high = middle_half(overhead)
        figures = [
            (
                f"training with live tracking, {label}",
                "s",
                tracked,
                "worker: start to final status, every epoch pushed (fast ones "
                "a few at a time) and saved (every 0.25 s)",
            ),
            (
                f"same loop, no tracking, {label}",
                "s",
                in_worker,
                "training.fit in the same worker (a bench-only task), a callback "
                "that notes the time, report included",
            ),
            (
                f"tracking overhead, {label}",
                "%",
                overhead,
                f"against the same loop in the same worker; median of {pairs} "
                f"pairs in turn (middle half {low:.1f} to {high:.1f}); 1-min load "
                f"average {min(load):.1f}-{max(load):.1f} on {os.cpu_count()} cores",
            ),
            (
                f"untracked against untracked, {label}",
                "%",
                again,
                "the same loop run twice in a row in the same worker, once every "
                f"{APART_EVERY} pairs: what the machine alone moves a pair by",
            ),
            (
                f"tracking time between epochs, {label}",
                "%",
                between,
                "of an epoch's own work, tracked minus plain, totals within each "
                "run: blind to the machine's swings and to indirect costs",
            ),
            # Less swayed by other work on the machine than wall time, but blind
            # to work done in parallel: the worker's CPU seconds in both runs.
            (
                f"tracking CPU overhead, {label}",
                "%",
                cpu_overhead,
                "the worker's CPU during the tracked run vs during the plain fit",
            ),
            # The comparison this bench made before session 11: it also counts
            # what running in a Celery worker at all costs (bench/NOTES.md).
            (
                f"same loop, no tracking, in a separate process, {label}",
                "s",
                apart,
                "training.fit in a process set up as a worker is (niceness, "
                f"switch interval), report included; once every {APART_EVERY} pairs",
            ),
            (
                f"overhead against a separate process, {label}",
                "%",
                apart_overhead,
                "tracked run vs the same loop in a separate process set up as a "
                "worker is: tracking plus the cost of being a Celery worker",
            ),
        ]
        for name, unit, values, note in figures:
            results.add(Figure("overhead", name, unit, values, services.label, note))


# ---------------------------------------------------------------- memory


def bench_memory(
    services: Services, results: Results, quick: bool, repeat: int
) -> None:
    _, token = bench_user()
    body = {"modelType": "logistic", "dataset": "iris", "epochs": 20 if quick else 300}
    pids = {
        "daphne": services.daphnes[0][0].pid,
        "worker": services.worker.pid,
        "redis": services.redis.pid,
    }
    totals: list[float] = []
    parts: dict[str, list[float]] = {name: [] for name in pids}
    pss: list[float] = []
    for _ in range(repeat):
        # Measured after a watched run, so the worker has loaded scikit-learn.
        asyncio.run(
            _watch(
                ws_url(services.url, "/ws/training/"),
                token,
                1,
                lambda: start_runs(services.url, token, 1, body),
            )
        )
        measured = tree_memory(list(pids.values()))
        totals.append(measured["rss"])
        pss.append(measured["pss"])
        for name, pid in pids.items():
            parts[name].append(tree_memory([pid])["rss"])
    processes = tree_memory(list(pids.values()))["processes"]
    results.add(
        Figure(
            "memory",
            "RSS of daphne + worker + redis",
            "MB",
            totals,
            services.label,
            f"{processes} processes (worker concurrency 2)",
        )
    )
    results.add(
        Figure("memory", "PSS of daphne + worker + redis", "MB", pss, services.label)
    )
    for name, values in parts.items():
        results.add(Figure("memory", f"RSS of {name}", "MB", values, services.label))
    # The same processes after a run of each model type (the Models page's quick
    # buttons): what a worker holds once it has trained everything it offers.
    from sessions import catalog

    for model_type in catalog.MODEL_TYPES:
        body = {
            "modelType": model_type,
            "dataset": "digits",
            "epochs": 2 if quick else catalog.DEFAULT_EPOCHS,
        }
        wait_finished(start_runs(services.url, token, 1, body))
    after_all = tree_memory(list(pids.values()))
    results.add(
        Figure(
            "memory",
            "RSS of daphne + worker + redis after a run of each model type",
            "MB",
            [after_all["rss"]],
            services.label,
            f"worker {tree_memory([pids['worker']])['rss']:.0f} MB; "
            f"PSS {after_all['pss']:.0f} MB",
        )
    )


# ---------------------------------------------------------------- browser


def bench_browser(
    services: Services, results: Results, quick: bool, repeat: int
) -> None:
    user, _ = bench_user()
    epochs = 2000 if quick else 100_000
    began = time.perf_counter()
    session = make_run(user, epochs)
    print(
        f"  (made the {epochs:,}-epoch run with bulk_create in "
        f"{time.perf_counter() - began:.1f} s)"
    )
    cookie = session_cookie(user)
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "1"
    from playwright.sync_api import sync_playwright

    # Any Chart.js chart on the page with at least one point: independent of how
    # the page's script names its charts.
    has_points = (
        "() => window.Chart && Object.values(Chart.instances || {}).some("
        "c => c.data.datasets.some(d => d.data.length > 0))"
    )
    pages = Http(services.url, {"Cookie": f"sessionid={cookie}"})
    status, html, _ = pages.request("GET", f"/sessions/{session.pk}/")
    pages.close()
    if status != 200:
        raise RuntimeError(f"the session page answered {status}")
    times: list[float] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=os.getenv("CHROMIUM", "/usr/bin/chromium"),
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-quic",
            ],
        )
        for _ in range(repeat):
            context = browser.new_context(viewport={"width": 1280, "height": 800})
            context.add_cookies(
                [{"name": "sessionid", "value": cookie, "url": services.url}]
            )
            page = context.new_page()
            started = time.perf_counter()
            page.goto(
                f"{services.url}/sessions/{session.pk}/",
                wait_until="commit",
                timeout=180_000,
            )
            page.wait_for_function(has_points, polling="raf", timeout=180_000)
            times.append((time.perf_counter() - started) * 1000)
            context.close()
        browser.close()
    results.add(
        Figure(
            "browser",
            f"first chart of a {epochs:,}-epoch session page",
            "ms",
            times,
            services.label,
            f"navigation to first point drawn; HTML {len(html) / 1e6:.2f} MB",
        )
    )


BENCHES: dict[str, Callable[[Services, Results, bool, int], None]] = {
    "memory": bench_memory,
    "overhead": bench_overhead,
    "live": bench_live,
    "fanout": bench_fanout,
    "ingest": bench_ingest,
    "reading": bench_reading,
    "browser": bench_browser,  # last: Playwright's sync API holds an event loop
}
NEEDS_WORKER = {"memory", "overhead", "live"}
# On PostgreSQL only what the issue compares per database.
POSTGRES_BENCHES = ("live", "ingest", "reading")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--db", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--only", default="", help="comma-separated bench names")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one run")
    parser.add_argument("--repeat", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    chosen = [n for n in (args.only.split(",") if args.only else BENCHES) if n]
    unknown = set(chosen) - set(BENCHES)
    if unknown:
        parser.error(
            f"unknown bench {', '.join(sorted(unknown))}; known: {', '.join(BENCHES)}"
        )
    if args.db == "postgres":
        chosen = [n for n in chosen if n in POSTGRES_BENCHES]
    chosen = [n for n in BENCHES if n in chosen]
    repeat = args.repeat or (1 if args.quick else 3)
    results = Results()
    if not chosen:
        results.save(args.out or VAR / f"{args.db}.json")
        return
    print(
        f"== mltrack on {args.db}: {', '.join(chosen)} (x{repeat})",
        flush=True,
    )
    services = Services(args.db)
    try:
        services.setup_django()
        services.start_daphne()
        for name in chosen:
            if name in NEEDS_WORKER:
                # 10 runs at once need 10 worker processes; elsewhere the default 2.
                wanted = 10 if name == "live" and not args.quick else 2
                if (
                    services.worker is None
                    or getattr(services, "concurrency", 0) != wanted
                ):
                    services.start_worker(wanted)
                    services.concurrency = wanted
                    _warm_up(services, wanted)
            print(f"- {name}", flush=True)
            began = time.monotonic()
            BENCHES[name](services, results, args.quick, repeat)
            print(f"  ({name} took {time.monotonic() - began:.0f} s)", flush=True)
    finally:
        results.save(args.out or VAR / f"{args.db}.json")
        services.stop()


def _warm_up(services: Services, runs: int) -> None:
    """Short runs on every worker process, so imports and first connections are not
    measured as latency or overhead."""
    _, token = bench_user()
    body = {"modelType": "logistic", "dataset": "iris", "epochs": 5}
    wait_finished(start_runs(services.url, token, runs, body), timeout=300)


if __name__ == "__main__":
    main()
