"""`manage.py start_training --wait` as a user runs it: a separate process following
a run that the real Celery worker trains, ended by completion, by a stop through the
API, or by Ctrl-C."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from sessions.management.commands.start_training import EXIT_DETACHED, EXIT_STOPPED
from sessions.models import ApiToken, TrainingSession
from tests.conftest import ROOT

pytestmark = pytest.mark.django_db(transaction=True)


def start_command(
    stack, log: Path, *args: str, stdin: int | None = None
) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "manage.py", "start_training", *args],
        cwd=ROOT,
        env=stack.env,
        stdin=stdin,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )


def wait_for_epoch(owner, epoch: int, timeout: float = 120) -> TrainingSession:
    """The owner's newest session once it has recorded `epoch` epochs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        session = TrainingSession.objects.filter(owner=owner).first()
        if session is not None and session.current_epoch >= epoch:
            return session
        time.sleep(0.2)
    raise AssertionError(f"no session of {owner} reached epoch {epoch}")


def finish(process: subprocess.Popen, log: Path) -> tuple[int, str]:
    code = process.wait(timeout=180)
    output = log.read_text()
    print(output)
    return code, output


def test_wait_follows_a_run_to_completion_and_exits_0(live_stack, alice, tmp_path):
    log = tmp_path / "out.txt"
    command = start_command(
        live_stack,
        log,
        "randomforest",
        "--dataset=iris",
        "--epochs=6",
        "--user=alice",
        "--wait",
    )
    code, output = finish(command, log)
    assert code == 0
    session = TrainingSession.objects.get(owner=alice)
    assert session.status == "completed" and session.current_epoch == 6
    assert f"Queued session {session.pk}: Random Forest on iris" in output
    assert f"/sessions/{session.pk}/" in output
    assert "100.0%  epoch 6/6  loss " in output  # the final progress line
    assert f"Session {session.pk} completed after 6/6 epochs in " in output
    assert f"  val_accuracy    {session.final_metrics['val_accuracy']:.4f}" in output


def test_wait_exits_non_zero_when_the_run_is_stopped_through_the_api(
    live_stack, alice, tmp_path
):
    _, token = ApiToken.issue(alice)
    log = tmp_path / "out.txt"
    command = start_command(
        live_stack, log, "randomforest", "--epochs=500", "--user=alice", "--wait"
    )
    session = wait_for_epoch(alice, 2)
    request = urllib.request.Request(
        f"{live_stack.url}/api/ml/stop-training/{session.pk}",
        method="POST",
        headers={"Authorization": f"Bearer {token}"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        assert json.loads(response.read())["session"]["status"] == "stopping"

    code, output = finish(command, log)
    assert code == EXIT_STOPPED
    session.refresh_from_db()
    assert session.status == "stopped" and 2 <= session.current_epoch < 500
    assert f"Session {session.pk} stopped after {session.current_epoch}/500" in output
    assert f"CommandError: Session {session.pk} was stopped" in output


def test_ctrl_c_asks_and_yes_stops_the_run(live_stack, alice, tmp_path):
    log = tmp_path / "out.txt"
    command = start_command(
        live_stack,
        log,
        "randomforest",
        "--epochs=500",
        "--user=alice",
        "--wait",
        stdin=subprocess.PIPE,
    )
    session = wait_for_epoch(alice, 2)
    command.send_signal(signal.SIGINT)
    command.stdin.write(b"y\n")
    command.stdin.flush()

    code, output = finish(command, log)
    assert code == EXIT_STOPPED
    assert f"Stop session {session.pk}? [y/N] " in output
    assert "Stopping after the current epoch..." in output
    session.refresh_from_db()
    assert session.status == "stopped" and session.current_epoch < 500


def test_ctrl_c_and_no_leaves_the_run_going(live_stack, alice, tmp_path):
    log = tmp_path / "out.txt"
    command = start_command(
        live_stack,
        log,
        "randomforest",
        "--epochs=500",
        "--user=alice",
        "--wait",
        stdin=subprocess.PIPE,
    )
    session = wait_for_epoch(alice, 2)
    command.send_signal(signal.SIGINT)
    command.stdin.write(b"n\n")
    command.stdin.flush()

    code, output = finish(command, log)
    assert code == EXIT_DETACHED
    assert f"Session {session.pk} keeps running: " in output
    session.refresh_from_db()
    assert session.status == "running"
    # Free the worker for the next tests.
    session.request_stop()
    deadline = time.monotonic() + 60
    while session.current_status() != "stopped" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert session.current_status() == "stopped"
