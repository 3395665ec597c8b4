"""A schema-driven fuzz run (schemathesis) of /api/openapi.json against daphne on
the test database: thousands of generated requests, valid and invalid, and not one
answer may be a 5xx or break the documented status codes and response schemas.

Its daphne has a Redis of its own, so the sessions the fuzzer queues through
start-training reach no Celery worker and never train.
"""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sessions.models import ApiToken, TrainingSession
from tests.conftest import Stack, stack

pytestmark = pytest.mark.django_db(transaction=True)

CHECKS = ",".join(
    [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_schema_conformance",
    ]
)


def schemathesis() -> str:
    found = Path(sys.executable).with_name("schemathesis")
    return str(found) if found.exists() else shutil.which("schemathesis")


def test_the_api_never_answers_5xx_to_generated_requests(alice, bob, tmp_path):
    redis_port = stack.free_port()
    redis = stack.start_redis(redis_port, tmp_path / "redis")
    own = Stack(f"redis://127.0.0.1:{redis_port}/0", tmp_path)
    _, token = ApiToken.issue(alice)
    # Sessions to find, one of another user, so ids in paths sometimes exist.
    TrainingSession.objects.start_external(alice, "mine", {}, 10, "custom")
    TrainingSession.objects.start_external(bob, "theirs", {}, 10, "custom")
    try:
        own.start_daphne()
        result = subprocess.run(
            [
                schemathesis(),
                "run",
                f"{own.url}/api/openapi.json",
                "--header",
                f"Authorization: Bearer {token}",
                "--checks",
                CHECKS,
                "--max-examples",
                "25",
                "--seed",
                "20261126",
                "--workers",
                "1",
                "--no-shrink",
                "--request-timeout",
                "30",
            ],
            capture_output=True,
            text=True,
            timeout=600,
            cwd=tmp_path,
        )
    finally:
        own.stop()
        stack.stop([redis])
    summary = "\n".join(result.stdout.splitlines()[-25:])
    print(f"\nSCHEMATHESIS:\n{summary}")
    assert result.returncode == 0, result.stdout[-6000:]
    assert "Tested: 11" in result.stdout
