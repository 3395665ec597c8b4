"""Run every benchmark, ours and the peers', and write docs/PERFORMANCE.md.

    scripts/bench                  # everything (about 10 minutes on 2 cores)
    scripts/bench --quick          # tiny sizes, one run each, in var/bench/quick
    scripts/bench --only live,reading --databases sqlite

mltrack is measured on SQLite and on PostgreSQL (127.0.0.1:5432, user postgres,
when it answers), each in a fresh database, against processes started here. The
peers run with the Python of a separate virtualenv (PEERS_PYTHON, by default
/work/peers-venv/bin/python) so they never enter mltrack's environment:

    python3.11 -m venv /work/peers-venv
    /work/peers-venv/bin/pip install mlflow tensorboard psycopg2-binary psutil
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import shlex
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (  # noqa: E402
    ROOT,
    VAR,
    Figure,
    fmt,
    machine,
    median_interval,
    pg_available,
)

DEFAULT_PEERS_PYTHON = "/work/peers-venv/bin/python"
REPORT = ROOT / "docs" / "PERFORMANCE.md"
# What a full run was (time, length, machine, commands), for --saved.
RUN_INFO = VAR / "run.json"
NOTES = Path(__file__).resolve().parent / "NOTES.md"


def run_json(command: list[str], out: Path, saved: bool = False) -> list[Figure]:
    """Run one benchmark process (its figures stream to our stdout) and load them;
    with `saved`, only load what its last run saved."""
    if saved:
        _check_unchanged(out)
        return [Figure(**item) for item in json.loads(out.read_text())]
    out.unlink(missing_ok=True)
    print("$ " + shlex.join(command).replace(f"{ROOT}/", ""), flush=True)
    finished = subprocess.run(command, cwd=ROOT)
    if finished.returncode != 0:
        print(f"  (exited with {finished.returncode}; keeping the figures it saved)")
    if not out.exists():
        return []
    return [Figure(**item) for item in json.loads(out.read_text())]


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _check_unchanged(out: Path) -> None:
    """--saved rebuilds the report of the last full run: refuse figures that a
    later run (a quick one, or one bench with the same --out) wrote over, or the
    report would mix two runs, or show rows of that run as not measured."""
    if not RUN_INFO.exists():
        return
    saved = json.loads(RUN_INFO.read_text()).get("digests", {})
    if out.name in saved and (not out.exists() or _digest(out) != saved[out.name]):
        raise SystemExit(
            f"{out} is not what the last full run saved (a later run wrote over "
            "it): run scripts/bench again instead of --saved"
        )


def versions(peers_python: str | None) -> dict[str, str]:
    import celery
    import channels
    import daphne
    import django
    import redis
    import sklearn

    found = {
        "Python": platform.python_version(),
        "Django": django.__version__,
        "Channels": channels.__version__,
        "redis-py": redis.__version__,
        "Daphne": daphne.__version__,
        "Celery": celery.__version__,
        "scikit-learn": sklearn.__version__,
        "SQLite": sqlite3.sqlite_version,
    }
    commands = {
        "Redis": ["redis-server", "--version"],
        "PostgreSQL": [
            "psql",
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-tAc",
            "show server_version",
        ],
        "Chromium": [os.getenv("CHROMIUM", "/usr/bin/chromium"), "--version"],
    }
    if peers_python:
        script = (
            "import importlib.metadata as m\n"
            "for p in ('mlflow', 'tensorboard'):\n"
            "    try: print(p, m.version(p))\n"
            "    except Exception: pass"
        )
        commands["peers"] = [peers_python, "-c", script]
    for name, command in commands.items():
        try:
            text = subprocess.run(
                command, capture_output=True, text=True, timeout=30
            ).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            continue
        if name == "peers":
            for line in text.splitlines():
                package, _, version = line.partition(" ")
                found[{"mlflow": "MLflow", "tensorboard": "TensorBoard"}[package]] = (
                    version
                )
        elif name == "Redis" and "v=" in text:
            found[name] = text.split("v=", 1)[1].split()[0]
        elif text:
            found[name] = text.splitlines()[0].strip()
    return found


# ---------------------------------------------------------------- comparisons


def find(
    figures: list[Figure], bench: str, contains: str, db: str = ""
) -> Figure | None:
    for figure in figures:
        if (
            figure.bench == bench
            and contains in figure.name
            and (not db or figure.db == db)
            and figure.values
        ):
            return figure
    return None


def _live(figures: list[Figure], prefix: str, scenario: str, db: str) -> Figure | None:
    for figure in figures:
        if (
            figure.bench == "live"
            and figure.values
            and figure.db == db
            and figure.name.startswith(prefix)
            and scenario in figure.name
        ):
            return figure
    return None


def _below(figure: Figure, line: float) -> bool | None:
    """Whether the pairs' median is at most `line`, judged by its 95 % interval
    (common.median_interval): yes when the whole interval is at or under the
    line, no when all of it is over, None ("-": not resolvable on this machine)
    when it straddles the line.

    Before session 16 a row was "-" when the middle half of its pairs spread
    over more than 20 points, and was otherwise judged by the median alone; but
    the median of 9 pairs still moves by several points from one run to the
    next: random forest's row was 6.41 % ("no", middle half 2.3 to 11.0) in
    session 15's report and -4.97 % in a run of session 16, so a row near 5 %
    was yes or no by chance."""
    interval = median_interval(figure.values)
    if interval is None:
        return None
    low, high = interval
    if high <= line:
        return True
    return False if low > line else None


def comparisons(figures: list[Figure]) -> list[dict[str, Any]]:
    """Each of the issue's targets: our figure, the peer's, the ratio, met or not."""
    rows: list[dict[str, Any]] = []

    def add(
        what: str,
        ours: Figure | None,
        peer: Figure | None,
        ratio: float | None,
        target: str,
        met: bool | None,
    ) -> None:
        rows.append(
            {
                "what": what,
                "ours": f"{fmt(ours.median)} {ours.unit}" if ours else "not measured",
                "peer": f"{fmt(peer.median)} {peer.unit}" if peer else "",
                "ratio": f"{ratio:.1f}x" if ratio else "",
                "target": target,
                "met": "-" if met is None else ("yes" if met else "**no**"),
            }
        )

    live = [
        (db, scenario)
        for db in ("sqlite", "postgres")
        for scenario in ("1 viewer, 1 run", "viewers of one run", "runs at once")
    ]
    for db, scenario in live:
        median = _live(figures, "latency median", scenario, db)
        p99 = _live(figures, "latency p99", scenario, db)
        if median is None and db != "sqlite":
            continue  # PostgreSQL was not measured
        label = (median.name.split(", ", 1)[1] if median else scenario) + f" [{db}]"
        add(
            f"live latency median, {label}",
            median,
            None,
            None,
            "< 20 ms",
            median.median < 20 if median else None,
        )
        add(
            f"live latency p99, {label}",
            p99,
            None,
            None,
            "< 100 ms",
            p99.median < 100 if p99 else None,
        )

    for db in ("sqlite", "postgres"):
        ours = find(figures, "ingest", "batched", db)
        peer = find(figures, "mlflow", "log_batch", db)
        ratio = ours.median / peer.median if ours and peer else None
        add(
            f"batched ingest vs MLflow log_batch [{db}]",
            ours,
            peer,
            ratio,
            ">= 10x",
            ratio >= 10 if ratio else None,
        )
        ours = find(figures, "ingest", "single-epoch call", db)
        peer = find(figures, "mlflow", "log_metric call latency", db)
        ratio = peer.median / ours.median if ours and peer else None
        add(
            f"single-epoch log call vs MLflow log_metric [{db}] (faster by)",
            ours,
            peer,
            ratio,
            ">= 5x",
            ratio >= 5 if ratio else None,
        )
        floor = find(figures, "ingest", "does no work", db)
        ratio = peer.median / floor.median if floor and peer else None
        add(
            f"MLflow log_metric vs an API request that does no work [{db}] "
            "(the most any log call through Django could be faster by)",
            floor,
            peer,
            ratio,
            "-",
            None,
        )
        ours = find(figures, "reading", "run (maxPoints", db)
        peer = find(figures, "mlflow", "320-point", db)
        ratio = ours.median / peer.median if ours and peer else None
        thinned = bool(ours and "maxPoints=1000)" in ours.name)
        add(
            f"chart data of a long run vs MLflow 320-point sample [{db}] "
            "(ours / theirs)",
            ours,
            peer,
            ratio,
            "< 0.5x, downsampled",
            (ratio < 0.5 and thinned) if ratio else None,
        )
        cold = find(figures, "reading", "first read of the chart data", db)
        ratio = cold.median / peer.median if cold and peer else None
        add(
            f"first (uncached) read of that chart data vs MLflow 320-point sample "
            f"[{db}] (ours / theirs)",
            cold,
            peer,
            ratio,
            "< 0.5x, downsampled",
            (ratio < 0.5 and thinned) if ratio else None,
        )
        # Not the figure: the cost a finished run's stored chart saves.
        unread = find(figures, "reading", "(nothing cached or stored)", db)
        ratio = unread.median / peer.median if unread and peer else None
        add(
            f"first read of a run nobody has read since it finished vs MLflow "
            f"320-point sample [{db}] (ours / theirs)",
            unread,
            peer,
            ratio,
            "(for information)",
            None,
        )
        candidates = [
            f
            for f in (
                find(figures, "reading", "full history JSON", db),
                find(figures, "reading", "full history CSV", db),
            )
            if f
        ]
        ours = min(candidates, key=lambda f: f.median) if candidates else None
        peer = find(figures, "mlflow", "get-history", db)
        ratio = peer.median / ours.median if ours and peer else None
        add(
            f"full history vs MLflow get-history [{db}] (faster by)",
            ours,
            peer,
            ratio,
            ">= 5x",
            ratio >= 5 if ratio else None,
        )

    browser = find(figures, "browser", "first chart")
    add(
        "first chart of a 100,000-epoch page",
        browser,
        None,
        None,
        "< 1,000 ms",
        browser.median < 1000 if browser and "100,000" in browser.name else None,
    )
    for figure in figures:
        if figure.bench == "overhead" and figure.name.startswith("tracking overhead"):
            interval = median_interval(figure.values)
            add(
                figure.name,
                figure,
                None,
                None,
                "<= 5 %"
                + (
                    f" (median's 95 % interval: {interval[0]:.1f} to {interval[1]:.1f})"
                    if interval
                    else ""
                ),
                _below(figure, 5),
            )
        if figure.bench == "overhead" and figure.name.startswith(
            (
                "untracked against untracked",
                "tracking time",
                "overhead against a separate process",
            )
        ):
            # What the machine alone moves a pair by (the same loop against
            # itself); tracking's own time, steady whatever the machine's speed
            # does but blind to indirect costs; and the comparison made before
            # session 11, which also counts the cost of being a Celery worker:
            # beside the wall-clock row, not instead of it.
            add(figure.name, figure, None, None, "(for information)", None)
    ours = find(figures, "memory", "RSS of daphne + worker + redis")
    peer = find(figures, "mlflow", "server RSS", "sqlite")
    ratio = ours.median / peer.median if ours and peer else None
    add(
        "memory vs MLflow server (ours / theirs)",
        ours,
        peer,
        ratio,
        "< 0.1x",
        ratio < 0.1 if ratio else None,
    )

    ours = find(figures, "ingest", "batched", "sqlite")
    peer = find(figures, "tensorboard", "write")
    ratio = ours.median / peer.median if ours and peer else None
    add("batched ingest vs TensorBoard event-file writes", ours, peer, ratio, "", None)
    ours = find(figures, "reading", "run (maxPoints", "sqlite")
    peer = find(figures, "tensorboard", "scalars of a")
    ratio = ours.median / peer.median if ours and peer else None
    add(
        "chart data vs TensorBoard's sampled tag (ours / theirs)",
        ours,
        peer,
        ratio,
        "",
        None,
    )
    ours = find(figures, "memory", "RSS of daphne + worker + redis")
    peer = find(figures, "tensorboard", "server RSS")
    ratio = ours.median / peer.median if ours and peer else None
    add("memory vs TensorBoard (ours / theirs)", ours, peer, ratio, "", None)
    return rows


# ---------------------------------------------------------------- report


def report(figures: list[Figure], context: dict[str, Any]) -> str:
    info = context["machine"]
    lines = [
        "# Performance",
        "",
        "Written by `scripts/bench` (bench/run_all.py): run it again, do not edit.",
        "",
        (
            f"Measured {context['date']} in {context['seconds']:.0f} s."
            if "seconds" in context
            else "Figures from an earlier run."
        )
        + (
            f" Rebuilt {context['rebuilt']} from the figures that run saved."
            if context.get("rebuilt")
            else ""
        )
        + " Each figure is the "
        "median of several runs, with the min and max of those runs and their count n.",
        "",
        "## Machine",
        "",
        f"- {info['cores']} cores, {info['cpu']}, {info['ramGB']} GB RAM; {info['os']}",
        f"- load average at the start: {info['loadavg']} (the machine is shared "
        "with other work, so absolute figures are noisy; ratios measured in the same "
        "run hold better)",
        "",
        "## Versions",
        "",
        ", ".join(f"{k} {v}" for k, v in context["versions"].items()),
        "",
        "## Commands",
        "",
        "```",
        *context["commands"],
        "```",
        "",
        "## Targets (issue 8)",
        "",
        "| Comparison | mltrack | peer | ratio | target | met |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row in comparisons(figures):
        lines.append(
            f"| {row['what']} | {row['ours']} | {row['peer']} | {row['ratio']} | "
            f"{row['target']} | {row['met']} |"
        )
    lines += [
        "",
        'A "-" in the last column: not measured, or for the overhead rows, the 95 % '
        "interval of the median of the pairs reaches both sides of the line, so "
        "this machine's noise cannot tell (bench/NOTES.md, session 16).",
        "",
        "## All figures",
        "",
    ]
    titles = {
        "live": "Live latency (epoch trained -> WebSocket viewer; saved within 0.25 s)",
        "fanout": "Fan-out",
        "ingest": "Ingest through the run-logging API",
        "reading": "Reading",
        "browser": "Browser",
        "overhead": "Overhead of live tracking",
        "memory": "Memory",
        "mlflow": "MLflow tracking server",
        "tensorboard": "TensorBoard",
    }
    for bench, title in titles.items():
        group = [f for f in figures if f.bench == bench]
        if not group:
            continue
        lines += [
            f"### {title}",
            "",
            "| Figure | where | median | min | max | n | note |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for f in group:
            if f.skipped:
                lines.append(f"| {f.name} | {f.db} | skipped: {f.skipped} | | | | |")
            else:
                lines.append(
                    f"| {f.name} | {f.db} | {fmt(f.median)} {f.unit} | "
                    f"{fmt(min(f.values))} | {fmt(max(f.values))} | {len(f.values)} | "
                    f"{f.note} |"
                )
        lines.append("")
    if NOTES.exists():
        lines += [NOTES.read_text().strip(), ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one run each")
    parser.add_argument("--only", default="", help="e.g. live,reading,peers")
    parser.add_argument("--databases", default="sqlite,postgres")
    parser.add_argument("--repeat", type=int, default=0)
    parser.add_argument(
        "--saved",
        action="store_true",
        help="run nothing: write the report from the figures the last run saved",
    )
    parser.add_argument(
        "--add",
        type=Path,
        action="append",
        default=[],
        help="also report the figures in this JSON file (from bench/suite.py --out)",
    )
    parser.add_argument(
        "--report",
        type=Path,
        default=None,
        help="where to write the report (default docs/PERFORMANCE.md; "
        "--quick writes var/bench/PERFORMANCE-quick.md)",
    )
    args = parser.parse_args()
    started = time.monotonic()
    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    context: dict[str, Any] = {"machine": machine(), "date": date, "commands": []}
    # A quick run's figures (the test suite makes one) go beside the full run's,
    # never over them: `--saved` rebuilds the report from those.
    figures_dir = VAR / "quick" if args.quick else VAR
    figures_dir.mkdir(parents=True, exist_ok=True)
    only = [n for n in args.only.split(",") if n]
    ours = [n for n in only if n != "peers"]
    common = [
        *(["--quick"] if args.quick else []),
        *(["--repeat", str(args.repeat)] if args.repeat else []),
    ]
    figures: list[Figure] = []
    context["commands"].append(shlex.join(["scripts/bench", *sys.argv[1:]]))
    if not only or ours:
        for db in args.databases.split(","):
            if db == "postgres" and not pg_available():
                print("PostgreSQL does not answer at 127.0.0.1:5432: skipped")
                continue
            out = figures_dir / f"{db}.json"
            command = [
                sys.executable,
                "bench/suite.py",
                "--db",
                db,
                "--out",
                str(out),
                *common,
                *(["--only", ",".join(ours)] if ours else []),
            ]
            context["commands"].append(shlex.join(command).replace(f"{ROOT}/", ""))
            figures += run_json(command, out, args.saved)
    peers_python = os.getenv("PEERS_PYTHON", DEFAULT_PEERS_PYTHON)
    if not Path(peers_python).exists():
        print(
            f"No peers environment at {peers_python}: MLflow and TensorBoard skipped. "
            "Create it with:\n  python3.11 -m venv /work/peers-venv\n"
            "  /work/peers-venv/bin/pip install "
            "mlflow tensorboard psycopg2-binary psutil"
        )
        peers_python = None
    elif not only or "peers" in only:
        out = figures_dir / "peers.json"
        dbs = ",".join(
            d for d in args.databases.split(",") if d != "postgres" or pg_available()
        )
        command = [
            peers_python,
            "bench/peers.py",
            "--out",
            str(out),
            "--databases",
            dbs,
            *common,
        ]
        context["commands"].append(shlex.join(command).replace(f"{ROOT}/", ""))
        figures += run_json(command, out, args.saved)
    if args.saved and RUN_INFO.exists():
        # The run's own time, length, machine state and commands, not the rebuild's.
        run = json.loads(RUN_INFO.read_text())
        run.pop("digests", None)
        context.update(run, rebuilt=date)
        context["commands"].append("# report rebuilt with: scripts/bench --saved")
    elif args.saved:
        context["rebuilt"] = date
        context["commands"].append("# figures loaded from the last run of the above")
    for extra in args.add:
        context["commands"].append(f"# plus the figures of {extra.name}")
        figures += [Figure(**item) for item in json.loads(extra.read_text())]
    context["versions"] = versions(peers_python)
    if not args.saved:
        context["seconds"] = time.monotonic() - started
        if not args.quick:
            keys = ("machine", "date", "seconds", "commands")
            run = {k: context[k] for k in keys}
            run["digests"] = {
                path.name: _digest(path)
                for path in VAR.glob("*.json")
                if path != RUN_INFO
            }
            RUN_INFO.write_text(json.dumps(run))
    text = report(figures, context)
    target = args.report or (VAR / "PERFORMANCE-quick.md" if args.quick else REPORT)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)
    print("\nTargets:")
    for row in comparisons(figures):
        print(
            f"  {row['what']}: {row['ours']}"
            + (f" vs {row['peer']} = {row['ratio']}" if row["peer"] else "")
            + (f" (target {row['target']}: {row['met']})" if row["target"] else "")
        )
    print(
        f"\nWrote {target.relative_to(ROOT) if target.is_relative_to(ROOT) else target}"
    )


if __name__ == "__main__":
    main()
