"""The benchmarks must keep working as the code changes: run the smallest one in
--quick mode, end to end (its own redis-server, database and daphne), and check it
printed figures and wrote a report. Figures are never compared with a time limit."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_quick_reading_bench_measures_and_writes_a_report(tmp_path: Path) -> None:
    report = tmp_path / "PERFORMANCE.md"
    # The full run's figures, which `scripts/bench --saved` rebuilds the report
    # from: a quick run (this one) once wrote over them.
    full_run = ROOT / "var" / "bench" / "sqlite.json"
    before = full_run.read_bytes() if full_run.exists() else None
    finished = subprocess.run(
        [
            sys.executable,
            "bench/run_all.py",
            "--quick",
            "--only",
            "reading",
            "--databases",
            "sqlite",
            "--report",
            str(report),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert finished.returncode == 0, finished.stdout + finished.stderr
    assert "full history JSON, 2,000 epochs x 8 metrics: median" in finished.stdout
    text = report.read_text()
    assert "## Targets (issue 8)" in text
    assert "| full history JSON, 2,000 epochs x 8 metrics | sqlite |" in text
    assert "SQLite" in text and "Django" in text
    assert (full_run.read_bytes() if full_run.exists() else None) == before


def test_the_quick_overhead_bench_fits_in_the_worker_and_apart(tmp_path: Path) -> None:
    # The untracked side runs as a bench-only task in the bench's own worker
    # (bench/worker_tasks.py, loaded with --include) and in a separate process.
    finished = _quick_suite(tmp_path, "overhead")
    for name in (
        "same loop, no tracking, logistic/iris, 20 epochs: median",
        "tracking overhead, logistic/iris, 20 epochs: median",
        "overhead against a separate process, logistic/iris, 20 epochs: median",
    ):
        assert name in finished.stdout, finished.stdout


def test_the_quick_live_and_fanout_benches_hear_every_event(tmp_path: Path) -> None:
    # Their viewers are bench/wsclient.py's sockets: every event of every run
    # must reach every viewer, or the bench times out or reports losses.
    finished = _quick_suite(tmp_path, "live,fanout")
    for line in (
        "latency median, 4 viewers of one run: median",
        "20-epoch logistic/iris runs; 80 events per repetition",
        "latency median, 2 runs at once, 1 viewer: median",
        "lost messages per repetition: [0]",
    ):
        assert line in finished.stdout, finished.stdout


def _quick_suite(tmp_path: Path, only: str) -> subprocess.CompletedProcess:
    """bench/suite.py --quick on SQLite for the named benches; it must succeed."""
    finished = subprocess.run(
        [
            sys.executable,
            "bench/suite.py",
            "--db",
            "sqlite",
            "--quick",
            "--only",
            only,
            "--out",
            str(tmp_path / "sqlite.json"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert finished.returncode == 0, finished.stdout + finished.stderr
    return finished


def test_a_rebuilt_report_refuses_figures_a_later_run_wrote_over(
    tmp_path: Path, monkeypatch
) -> None:
    # A quick or single-bench run with the same --out once replaced a full run's
    # figures, and `scripts/bench --saved` showed its rows as "not measured".
    sys.path.insert(0, str(ROOT))
    from bench import run_all

    figures = tmp_path / "sqlite.json"
    figures.write_text("[]")
    monkeypatch.setattr(run_all, "RUN_INFO", tmp_path / "run.json")
    digests = {"sqlite.json": run_all._digest(figures)}
    run_all.RUN_INFO.write_text(json.dumps({"digests": digests}))
    assert run_all.run_json(["unused"], figures, saved=True) == []
    figures.write_text("[] ")
    try:
        run_all.run_json(["unused"], figures, saved=True)
    except SystemExit as refused:
        assert "sqlite.json is not what the last full run saved" in str(refused)
    else:
        raise AssertionError("the rebuilt report took figures of a later run")


def test_an_overhead_row_is_met_only_when_its_median_is_surely_under_the_line() -> None:
    sys.path.insert(0, str(ROOT))
    from bench.common import Figure, median_interval
    from bench.run_all import _below

    # The order statistics of the usual tables: the 2nd and 8th of 9, the 8th and
    # 18th of 25; too few values for any interval at 95 %.
    assert median_interval(list(range(1, 10))) == (2, 8)
    assert median_interval(list(range(1, 26))) == (8, 18)
    assert median_interval([1.0, 2.0, 3.0, 4.0, 5.0]) is None

    def row(values: list[float]) -> Figure:
        return Figure("overhead", "tracking overhead, x", "%", values)

    assert _below(row([1, 2, 2, 3, 3, 3, 4, 4, 4.5]), 5) is True
    assert _below(row([6, 7, 7, 8, 8, 8, 9, 9, 20]), 5) is False
    # A median under the line whose pairs swing as this machine's do.
    assert _below(row([-20, -8, -3, 1, 2, 6, 11, 19, 30]), 5) is None
