"""Nothing is shown to someone who has not logged in, and errors leak nothing."""

import re

import pytest
from django.urls import get_resolver

pytestmark = pytest.mark.django_db

OPEN = {"login", "logout"}


def _routes(patterns=None, prefix=""):
    """Every route of the project as (name, sample path), walking includes."""
    patterns = get_resolver().url_patterns if patterns is None else patterns
    found = []
    for entry in patterns:
        route = prefix + re.sub(
            r"<int:\w+>", "1", re.sub(r"<str:\w+>|<\w+>", "x", str(entry.pattern))
        )
        if hasattr(entry, "url_patterns"):
            found += _routes(entry.url_patterns, route)
        else:
            found.append((entry.name, "/" + route))
    return found


ROUTES = [
    (n, p)
    for n, p in _routes()
    if not p.startswith("/admin/") and n not in OPEN and "^" not in p
]


@pytest.mark.parametrize("name, path", ROUTES)
def test_anonymous_requests_are_refused(client, name, path):
    response = client.get(path)
    if path.startswith("/api/"):
        assert response.status_code in (401, 405), (path, response.status_code)
        if response.status_code == 401:
            assert response.json()["error"]
    else:
        assert response.status_code in (302, 405), (path, response.status_code)
        if response.status_code == 302:
            assert response["Location"].startswith("/accounts/login/")


def test_the_admin_requires_staff(client, alice):
    assert client.get("/admin/").status_code == 302
    client.force_login(alice)
    assert client.get("/admin/training/trainingsession/").status_code == 302


def test_error_pages_leak_no_traceback(client, alice, settings):
    settings.DEBUG = False
    client.force_login(alice)
    response = client.get("/no/such/page/")
    assert response.status_code == 404
    assert "Traceback" not in response.content.decode()
    assert "not yours to see" in response.content.decode()
