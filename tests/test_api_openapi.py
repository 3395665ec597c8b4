"""The OpenAPI document and its page. The fuzz run against the live app is in
tests/integration/test_client_schemathesis.py."""

import re

import pytest
from django.urls import get_resolver

pytestmark = pytest.mark.django_db


def api_routes():
    """Every /api/ml/ route of the URLconf, written as OpenAPI paths."""
    routes = set()
    for pattern in get_resolver().url_patterns:
        for inner in getattr(pattern, "url_patterns", [pattern]):
            route = str(inner.pattern)
            if route.startswith("api/ml/"):
                routes.add("/" + re.sub(r"<int:(\w+)>", r"{\1}", route))
    return routes


def test_it_documents_every_api_route(alice_client):
    document = alice_client.get("/api/openapi.json").json()
    assert document["openapi"].startswith("3.")
    assert set(document["paths"]) == api_routes()
    assert len(api_routes()) == 11


def test_every_operation_documents_its_errors(alice_client):
    document = alice_client.get("/api/openapi.json").json()
    for path, methods in document["paths"].items():
        for method, operation in methods.items():
            assert "401" in operation["responses"], (method, path)
            for code, answer in operation["responses"].items():
                schema = answer["content"]["application/json"]["schema"]
                if code.startswith(("4", "5")):
                    assert schema == {"$ref": "#/components/schemas/Error"}


def test_it_requires_a_login_or_token(client, alice):
    from sessions.models import ApiToken

    assert client.get("/api/openapi.json").status_code == 401
    raw = ApiToken.issue(alice)[1]
    response = client.get("/api/openapi.json", HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert response.status_code == 200
    response = client.get("/api/docs")
    assert response.status_code == 401
    assert "Log in at /accounts/login/?next=/api/docs" in response.json()["error"]


def test_the_docs_page_lists_every_operation(alice_client):
    response = alice_client.get("/api/docs")
    assert response.status_code == 200
    page = response.content.decode()
    for path in api_routes():
        assert path in page
    assert "POST /api/ml/runs/{session_id}/metrics" in page
    assert "http://" not in page.replace("http://testserver", "")  # nothing from a CDN
