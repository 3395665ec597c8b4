"""The peers on the same machine: an MLflow tracking server and TensorBoard.

Run by bench/run_all.py with the Python of a separate virtualenv, so mlflow and
tensorboard never enter mltrack's own environment:

    python3.11 -m venv /work/peers-venv
    /work/peers-venv/bin/pip install mlflow tensorboard psycopg2-binary psutil
    /work/peers-venv/bin/python bench/peers.py --out var/bench/peers.json [--quick]

Every figure is measured the way bench/suite.py measures ours: the same number
of points, HTTP/1.1 keep-alive for reads, median (min, max) of several runs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (  # noqa: E402
    PG_BENCH_DB,
    VAR,
    Figure,
    Http,
    Results,
    percentile,
    pg_available,
    pg_drop,
    pg_recreate,
    stack,
    tree_memory,
)

BIN = Path(sys.executable).parent
PG_MLFLOW_DB = f"{PG_BENCH_DB}_mlflow"


def wait_http(url: str, process: subprocess.Popen, timeout: float = 180) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server for {url} exited ({process.returncode})")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f} s")


# ---------------------------------------------------------------- MLflow


def start_mlflow(backend: str) -> tuple[subprocess.Popen, str]:
    port = stack.free_port()
    artifacts = VAR / "mlflow-artifacts"
    artifacts.mkdir(parents=True, exist_ok=True)
    log = open(VAR / "logs" / f"mlflow-{port}.log", "ab")  # noqa: SIM115
    process = subprocess.Popen(
        [
            str(BIN / "mlflow"),
            "server",
            "--backend-store-uri",
            backend,
            "--default-artifact-root",
            artifacts.as_uri(),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=dict(os.environ, MLFLOW_TRACKING_URI=""),
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/health", process)
    return process, url


def bench_mlflow(
    label: str, backend: str, results: Results, quick: bool, repeat: int
) -> None:
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    process, url = start_mlflow(backend)
    try:
        client = MlflowClient(tracking_uri=url)
        experiment = client.create_experiment(f"bench-{time.time_ns()}")
        single_calls = 20 if quick else 100
        batches = 2 if quick else 20
        metric_rates, metric_ms, metrics5_rates, batch_rates = [], [], [], []
        history_ms, sample_ms = [], []
        history_bytes = sample_points = 0
        http = Http(url)
        for _ in range(repeat):
            run_id = client.create_run(experiment).info.run_id
            times = []
            for step in range(single_calls):
                began = time.perf_counter()
                client.log_metric(run_id, "single", 1 / (step + 1), step=step)
                times.append(time.perf_counter() - began)
            metric_rates.append(single_calls / sum(times))
            metric_ms.append(percentile(times, 0.5) * 1000)

            began = time.perf_counter()
            for step in range(single_calls // 2):
                stamp = int(time.time() * 1000)
                client.log_batch(
                    run_id,
                    metrics=[
                        Metric(f"m{k}", 1 / (step + 1), stamp, step) for k in range(5)
                    ],
                )
            metrics5_rates.append(
                5 * (single_calls // 2) / (time.perf_counter() - began)
            )

            began = time.perf_counter()
            for batch in range(batches):
                stamp = int(time.time() * 1000)
                client.log_batch(
                    run_id,
                    metrics=[
                        Metric("loss", 1 / (i + 1), stamp, batch * 1000 + i)
                        for i in range(1000)
                    ],
                )
            batch_rates.append(batches * 1000 / (time.perf_counter() - began))

            # Reads over raw HTTP with keep-alive, as bench/suite.py reads ours.
            history_path = (
                f"/api/2.0/mlflow/metrics/get-history?run_id={run_id}"
                "&metric_key=loss&max_results=25000"
            )
            sample_path = (
                "/ajax-api/2.0/mlflow/metrics/get-history-bulk-interval?"
                f"run_ids={run_id}&metric_key=loss&max_results=320"
            )
            for path, sink in ((history_path, history_ms), (sample_path, sample_ms)):
                status, payload, _ = http.request("GET", path)  # warm-up
                if status != 200:
                    raise RuntimeError(f"MLflow GET {path}: {status} {payload[:200]!r}")
                began = time.perf_counter()
                status, payload, _ = http.request("GET", path)
                sink.append((time.perf_counter() - began) * 1000)
                if path is history_path:
                    history_bytes = len(payload)
                    got = len(json.loads(payload).get("metrics", []))
                    assert got == batches * 1000, f"history has {got} points"
                else:
                    sample_points = len(json.loads(payload).get("metrics", []))
        http.close()
        memory = tree_memory([process.pid])
        points = f"{batches * 1000:,}"
        add = results.add
        add(
            Figure(
                "mlflow",
                "log_metric, 1 point per call",
                "points/s",
                metric_rates,
                label,
                "official client",
                better="higher",
            )
        )
        add(Figure("mlflow", "log_metric call latency", "ms", metric_ms, label))
        add(
            Figure(
                "mlflow",
                "log_metrics, 5 metrics per call",
                "points/s",
                metrics5_rates,
                label,
                better="higher",
            )
        )
        add(
            Figure(
                "mlflow",
                "log_batch of 1,000",
                "points/s",
                batch_rates,
                label,
                better="higher",
            )
        )
        add(
            Figure(
                "mlflow",
                f"get-history of {points} points",
                "ms",
                history_ms,
                label,
                f"{history_bytes / 1e6:.2f} MB uncompressed",
            )
        )
        add(
            Figure(
                "mlflow",
                "320-point sampled read (its chart's request)",
                "ms",
                sample_ms,
                label,
                f"{sample_points} points returned",
            )
        )
        add(
            Figure(
                "mlflow",
                "server RSS",
                "MB",
                [memory["rss"]],
                label,
                f"{memory['processes']} processes; PSS {memory['pss']:.0f} MB",
            )
        )
    finally:
        stack.stop([process], timeout=20)
        # uvicorn/gunicorn workers live in the server's session: stop them too.
        try:
            os.killpg(process.pid, 15)
        except ProcessLookupError:
            pass


# ---------------------------------------------------------------- TensorBoard


def bench_tensorboard(results: Results, quick: bool, repeat: int) -> None:
    from tensorboard.summary import Writer

    total = 10_000 if quick else 100_000
    history = 2_000 if quick else 20_000
    root = VAR / f"tensorboard-{os.getpid()}"
    rates = []
    for index in range(repeat):
        writer = Writer(str(root / "write" / f"run{index}"))
        began = time.perf_counter()
        for step in range(total):
            writer.add_scalar("loss", 1 / (step + 1), step)
        writer.close()
        rates.append(total / (time.perf_counter() - began))
    results.add(
        Figure(
            "tensorboard",
            f"write {total:,} scalars (summary.Writer)",
            "points/s",
            rates,
            "event file",
            better="higher",
        )
    )

    writer = Writer(str(root / "read" / "bench"))
    for step in range(history):
        writer.add_scalar("loss", 1 / (step + 1), step)
    writer.close()
    port = stack.free_port()
    log = open(VAR / "logs" / f"tensorboard-{port}.log", "ab")  # noqa: SIM115
    process = subprocess.Popen(
        [
            str(BIN / "tensorboard"),
            "--logdir",
            str(root / "read"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--reload_interval",
            "1",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_http(url + "/data/runs", process)
        http = Http(url)
        path = f"/data/plugin/scalars/scalars?run=bench&tag={quote('loss')}"
        deadline = time.monotonic() + 120
        while True:  # until TensorBoard has loaded the event file
            status, payload, _ = http.request("GET", path)
            if status == 200 and json.loads(payload):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"TensorBoard never served {path}: {status}")
            time.sleep(0.5)
        times = []
        for _ in range(max(3, repeat)):
            began = time.perf_counter()
            status, payload, _ = http.request("GET", path)
            times.append((time.perf_counter() - began) * 1000)
        points = len(json.loads(payload))
        http.close()
        results.add(
            Figure(
                "tensorboard",
                f"scalars of a {history:,}-step tag",
                "ms",
                times,
                "event file",
                f"{points} points (its sample)",
            )
        )
        memory = tree_memory([process.pid])
        results.add(
            Figure(
                "tensorboard",
                "server RSS",
                "MB",
                [memory["rss"]],
                "event file",
                f"{memory['processes']} processes",
            )
        )
    finally:
        stack.stop([process], timeout=20)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeat", type=int, default=0)
    parser.add_argument("--databases", default="sqlite,postgres")
    parser.add_argument("--out", type=Path, default=VAR / "peers.json")
    args = parser.parse_args()
    repeat = args.repeat or (1 if args.quick else 3)
    (VAR / "logs").mkdir(parents=True, exist_ok=True)
    results = Results()
    try:
        import mlflow
    except ImportError:
        print("  mlflow is not installed in this environment: skipped")
    else:
        print(f"== MLflow {mlflow.__version__}", flush=True)
        for db in args.databases.split(","):
            if db == "sqlite":
                path = VAR / "mlflow.sqlite3"
                path.unlink(missing_ok=True)
                bench_mlflow("sqlite", f"sqlite:///{path}", results, args.quick, repeat)
            elif db == "postgres" and pg_available():
                url = pg_recreate(PG_MLFLOW_DB).replace(
                    "postgres://", "postgresql+psycopg2://"
                )
                try:
                    bench_mlflow("postgres", url, results, args.quick, repeat)
                finally:
                    pg_drop(PG_MLFLOW_DB)
    try:
        import tensorboard
    except ImportError:
        print("  tensorboard is not installed in this environment: skipped")
    else:
        print(f"== TensorBoard {tensorboard.__version__}", flush=True)
        bench_tensorboard(results, args.quick, repeat)
    results.save(args.out)


if __name__ == "__main__":
    main()
