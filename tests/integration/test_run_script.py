"""scripts/run (scripts/stack.py) as a person starts it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from tests.conftest import ROOT


def test_it_refuses_a_port_another_program_listens_on():
    with socket.socket() as other_program:
        other_program.bind(("127.0.0.1", 0))
        other_program.listen()
        port = other_program.getsockname()[1]
        finished = subprocess.run(
            [sys.executable, "scripts/stack.py"],
            cwd=ROOT,
            env=dict(os.environ, PORT=str(port)),
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert finished.returncode == 1
    assert f"Port {port} is already in use by another program" in finished.stderr
    # Refused before starting anything, rather than announcing itself running.
    assert "running at" not in finished.stdout
    assert "Started an embedded Redis" not in finished.stdout
