"""What every API endpoint shares: credentials, methods, body size and JSON errors."""

import pytest
from django.test import Client

from sessions.models import ApiToken

pytestmark = pytest.mark.django_db

ENDPOINTS = [
    ("GET", "/api/ml/models"),
    ("GET", "/api/ml/training-data"),
    ("GET", "/api/ml/training-session/1"),
    ("GET", "/api/ml/training-metrics/1"),
    ("GET", "/api/ml/real-time-updates"),
    ("POST", "/api/ml/start-training"),
    ("POST", "/api/ml/stop-training/1"),
    ("POST", "/api/ml/runs"),
    ("POST", "/api/ml/runs/1/metrics"),
    ("POST", "/api/ml/runs/1/finish"),
    ("POST", "/api/ml/runs/1/heartbeat"),
]
POSTS = [path for method, path in ENDPOINTS if method == "POST"]


def call(client, method, path, **extra):
    if method == "GET":
        return client.get(path, **extra)
    return client.post(path, data="{}", content_type="application/json", **extra)


@pytest.mark.parametrize("method, path", ENDPOINTS)
def test_it_requires_credentials(client, method, path):
    response = call(client, method, path)
    assert response.status_code == 401
    assert "Authentication required" in response.json()["error"]
    assert response.json()["fields"] == {}


@pytest.mark.parametrize("method, path", ENDPOINTS)
def test_it_rejects_a_revoked_token(client, alice, method, path):
    token, raw = ApiToken.issue(alice)
    token.revoke()
    response = call(client, method, path, HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert response.status_code == 401
    assert "revoked" in response.json()["error"]


@pytest.mark.parametrize("method, path", ENDPOINTS)
def test_it_rejects_an_unknown_token(client, method, path):
    response = call(client, method, path, HTTP_AUTHORIZATION="Bearer mlt_nope")
    assert response.status_code == 401


@pytest.mark.parametrize("method, path", ENDPOINTS)
def test_it_answers_405_as_json_with_allow(alice_client, method, path):
    response = alice_client.put(path)
    assert response.status_code == 405
    assert response["Allow"] == method
    assert "not allowed" in response.json()["error"]


@pytest.mark.parametrize("path", POSTS)
def test_it_refuses_an_oversized_body_with_413(client, alice, settings, path):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    _, raw = ApiToken.issue(alice)
    body = '{"name": "' + "x" * 2000 + '"}'
    response = client.post(
        path,
        data=body,
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {raw}",
    )
    assert response.status_code == 413
    assert "too large" in response.json()["error"]


@pytest.mark.parametrize("path", POSTS)
def test_it_enforces_csrf_for_cookie_logins(alice, path):
    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)
    response = client.post(path, data="{}", content_type="application/json")
    assert response.status_code == 403
    assert "CSRF" in response.json()["error"]


@pytest.mark.parametrize(
    "path",
    [
        "/api/ml/training-session/99999999999999999999999",
        "/api/ml/training-metrics/99999999999999999999999",
    ],
)
def test_it_treats_an_id_too_large_for_the_database_as_unknown(alice_client, path):
    assert alice_client.get(path).status_code == 404


def test_an_unknown_api_path_is_a_json_404(alice_client):
    response = alice_client.get("/api/ml/nothing-here")
    assert response.status_code == 404
    assert response.json()["error"] == "No API endpoint at /api/ml/nothing-here"


@pytest.mark.django_db(transaction=True)
def test_a_database_failure_is_a_json_503_not_a_page(alice_client, make_session):
    from django.db import connection

    session = make_session()
    url = f"/api/ml/training-session/{session.pk}"
    if connection.vendor == "postgresql":
        # A real lock: another connection holds the table the view reads, and this
        # connection gives up waiting after 200 ms.
        import psycopg

        db = connection.settings_dict
        other = psycopg.connect(
            dbname=db["NAME"],
            user=db["USER"],
            password=db["PASSWORD"] or None,
            host=db["HOST"] or "127.0.0.1",
            port=db["PORT"] or 5432,
        )
        other.execute("LOCK TABLE training_trainingsession IN ACCESS EXCLUSIVE MODE")
        with connection.cursor() as cursor:
            cursor.execute("SET lock_timeout = '200ms'")
        try:
            response = alice_client.get(url)
        finally:
            other.rollback()
            other.close()
            with connection.cursor() as cursor:
                cursor.execute("RESET lock_timeout")
    else:
        # A real failure: the table the view reads is gone.
        with connection.cursor() as cursor:
            cursor.execute("ALTER TABLE training_trainingsession RENAME TO moved_away")
        try:
            response = alice_client.get(url)
        finally:
            with connection.cursor() as cursor:
                cursor.execute(
                    "ALTER TABLE moved_away RENAME TO training_trainingsession"
                )
    assert response.status_code == 503
    assert response["Retry-After"] == "1"
    assert "retry" in response.json()["error"]


def test_a_multipart_upload_over_the_json_limit_is_not_refused_as_too_large(
    client, alice, settings, tmp_path
):
    from django.core.files.uploadedfile import SimpleUploadedFile

    settings.MEDIA_ROOT = tmp_path
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000  # the limit for JSON bodies
    rows = "".join(f"{i % 7},{i % 5},{'ab'[i % 2]}\n" for i in range(400))
    csv = SimpleUploadedFile("big.csv", ("x,y,kind\n" + rows).encode(), "text/csv")
    response = client.post(
        "/api/ml/start-training",
        {
            "modelType": "randomforest",
            "dataset": "csv",
            "targetColumn": "kind",
            "csvFile": csv,
        },
        HTTP_AUTHORIZATION=f"Bearer {ApiToken.issue(alice)[1]}",
    )
    assert response.status_code == 201, response.content
