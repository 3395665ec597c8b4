"""scripts/smoke against the live stack: every capability line checked, and a
non-zero exit when the server refuses."""

import subprocess
import sys

import pytest

from sessions.models import ApiToken
from tests.conftest import ROOT

pytestmark = pytest.mark.django_db(transaction=True)


def smoke(*args):
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "smoke"), *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_it_checks_every_capability_of_a_running_server(live_stack, alice):
    _, token = ApiToken.issue(alice)
    result = smoke(
        live_stack.url, token, "--username", "alice", "--password", "alice-password-1"
    )
    print("\n" + result.stdout)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    checked = [line.split(":")[0] for line in lines if line.startswith("ok ")]
    assert checked == [
        "ok    model status",
        "ok    training endpoints",
        "ok    start training",
        "ok    training progress over the WebSocket",
        "ok    run logging",
        "ok    the page",
    ]
    assert lines[-1] == "6 passed, 0 failed"


def test_it_fails_with_a_revoked_token(live_stack, alice):
    token, raw = ApiToken.issue(alice)
    token.revoke()
    result = smoke(live_stack.url, raw)
    assert result.returncode == 1
    assert "FAIL  model status: GET /api/ml/models answered 401" in result.stdout
    assert "FAIL  training progress over the WebSocket" in result.stdout
    assert result.stdout.splitlines()[-1] == "1 passed, 5 failed"  # the page is public


@pytest.mark.django_db(transaction=False)
def test_it_fails_when_nothing_listens():
    from tests.conftest import stack

    result = smoke(f"http://127.0.0.1:{stack.free_port()}", "mlt_whatever")
    assert result.returncode == 1
    assert result.stdout.splitlines()[-1] == "0 passed, 6 failed"
