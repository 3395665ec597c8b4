"""Production settings, checked in fresh processes: settings are read once at import,
so DEBUG=0 can only be seen by a process that starts with it."""

from __future__ import annotations

import gzip
import json
import os
import secrets
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import ROOT, stack

HOST = "mltrack.example.com"


def production_env(**overrides: str) -> dict[str, str]:
    env = dict(
        os.environ,
        DJANGO_SETTINGS_MODULE="mltrack.settings",
        DEBUG="0",
        SECRET_KEY=secrets.token_urlsafe(50),
        ALLOWED_HOSTS=f"{HOST},127.0.0.1",
        CSRF_TRUSTED_ORIGINS=f"https://{HOST}",
    )
    env.update(overrides)
    return {key: value for key, value in env.items() if value is not None}


def manage(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def production_settings(env: dict[str, str], *names: str) -> dict:
    script = (
        "import json, django; django.setup(); from django.conf import settings; "
        f"print(json.dumps({{n: getattr(settings, n) for n in {list(names)!r}}}))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_check_deploy_reports_nothing_in_production():
    done = manage(production_env(), "check", "--deploy", "--fail-level", "DEBUG")
    print(done.stdout, done.stderr)
    assert done.returncode == 0
    assert "System check identified no issues (0 silenced)." in done.stdout


def test_check_deploy_does_complain_about_development_settings():
    # The test above means something only if the check can fail.
    done = manage(
        production_env(DEBUG="1"), "check", "--deploy", "--fail-level", "WARNING"
    )
    assert done.returncode != 0
    assert "security.W018" in done.stderr  # DEBUG on


def test_it_refuses_to_start_without_a_secret_key():
    env = production_env()
    del env["SECRET_KEY"]
    done = manage(env, "check")
    assert done.returncode != 0
    assert "SECRET_KEY must be set when DEBUG is off" in done.stderr


def test_it_rejects_a_malformed_boolean():
    done = manage(production_env(DEBUG="maybe"), "check")
    assert done.returncode != 0
    assert "DEBUG must be a boolean (1/0, true/false), not 'maybe'" in done.stderr


def test_cookies_are_secure_and_hosts_come_from_the_environment():
    values = production_settings(
        production_env(),
        "SESSION_COOKIE_SECURE",
        "CSRF_COOKIE_SECURE",
        "SECURE_SSL_REDIRECT",
        "SECURE_HSTS_SECONDS",
        "ALLOWED_HOSTS",
        "CSRF_TRUSTED_ORIGINS",
        "STORAGES",
    )
    assert values["SESSION_COOKIE_SECURE"] is True
    assert values["CSRF_COOKIE_SECURE"] is True
    assert values["SECURE_SSL_REDIRECT"] is True
    assert values["SECURE_HSTS_SECONDS"] >= 31536000
    assert values["ALLOWED_HOSTS"] == [HOST, "127.0.0.1"]
    assert values["CSRF_TRUSTED_ORIGINS"] == [f"https://{HOST}"]
    assert values["STORAGES"]["staticfiles"]["BACKEND"] == (
        "whitenoise.storage.CompressedManifestStaticFilesStorage"
    )


def _get(url: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: object, **kwargs: object) -> None:
            return None  # show the redirect itself

    opener = urllib.request.build_opener(NoRedirect)
    request = urllib.request.Request(url, headers=headers)
    try:
        with opener.open(request, timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


@pytest.fixture
def production_daphne(tmp_path: Path):
    """collectstatic, then daphne with DEBUG off, as a deployment runs them."""
    env = production_env(
        STATIC_ROOT=str(tmp_path / "static"),
        DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}",
    )
    done = manage(env, "collectstatic", "--noinput", "-v", "1")
    assert done.returncode == 0, done.stderr
    print(done.stdout.strip())
    port = stack.free_port()
    process = stack.start_daphne(env, port, tmp_path / "daphne.log")
    manifest = json.loads((tmp_path / "static" / "staticfiles.json").read_text())
    yield f"http://127.0.0.1:{port}", manifest["paths"]
    stack.stop([process])


def test_static_files_are_hashed_compressed_and_cached(production_daphne):
    url, paths = production_daphne
    chart = paths["js/vendor/chart.umd.min.js"]
    assert chart != "js/vendor/chart.umd.min.js"  # a content hash in the name

    status, headers, body = _get(
        f"{url}/accounts/login/", Host=HOST, **{"X-Forwarded-Proto": "https"}
    )
    assert status == 200
    assert f'/static/{paths["css/app.css"]}"' in body.decode()
    assert "Secure" in headers["Set-Cookie"]  # the CSRF cookie
    assert "max-age=31536000" in headers["Strict-Transport-Security"]

    status, headers, body = _get(
        f"{url}/static/{chart}",
        Host=HOST,
        **{"Accept-Encoding": "gzip", "X-Forwarded-Proto": "https"},
    )
    assert status == 200
    assert headers["Content-Encoding"] == "gzip"
    assert "immutable" in headers["Cache-Control"]
    # Manifest storage rewrites URLs inside CSS and JS; Chart.js must come out
    # byte for byte as vendored.
    source = (ROOT / "static" / "js" / "vendor" / "chart.umd.min.js").read_bytes()
    assert gzip.decompress(body) == source
    print(f"\nChart.js: {len(source)} bytes, {len(body)} bytes gzipped as served")


def test_plain_http_is_redirected_and_unknown_hosts_rejected(production_daphne):
    url, _ = production_daphne
    status, headers, _ = _get(f"{url}/accounts/login/", Host=HOST)
    assert status == 301
    assert headers["Location"] == f"https://{HOST}/accounts/login/"

    status, _, _ = _get(
        f"{url}/accounts/login/",
        Host="evil.example.org",
        **{"X-Forwarded-Proto": "https"},
    )
    assert status == 400
