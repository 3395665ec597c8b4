"""Shared fixtures. Tests talk to a real Redis, a real database and, for the
integration and browser tests, real Celery and daphne processes.

Tests use their own Redis database (TEST_REDIS_URL, default db 15 of the local
server; an embedded redis-server when none answers), so a running dev worker can
never take their tasks.
"""

from __future__ import annotations

import atexit
import os
import sys
import time
from pathlib import Path

import pytest
import redis
from django.conf import settings

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import stack  # noqa: E402

ARTIFACTS = ROOT / "test-artifacts"


def _test_redis_url() -> str:
    url = os.getenv("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
    try:
        redis.Redis.from_url(url, socket_connect_timeout=1).ping()
        return url
    except redis.ConnectionError:
        port = stack.free_port()
        process = stack.start_redis(port, ROOT / "var" / "test-redis")
        atexit.register(stack.stop, [process])
        return f"redis://127.0.0.1:{port}/15"


def _use_redis(url: str) -> None:
    """Point this process's Celery, cache and events at the tests' Redis."""
    from mltrack.celery import app

    settings.REDIS_URL = url
    settings.CELERY_BROKER_URL = url
    settings.CACHES["default"]["LOCATION"] = url
    app.conf.broker_url = url


REDIS_URL = _test_redis_url()
redis.Redis.from_url(REDIS_URL).flushdb()
_use_redis(REDIS_URL)
(ROOT / "var").mkdir(exist_ok=True)


@pytest.fixture
def alice(django_user_model):
    return django_user_model.objects.create_user("alice", password="alice-password-1")


@pytest.fixture
def bob(django_user_model):
    return django_user_model.objects.create_user("bob", password="bob-password-1")


@pytest.fixture
def staff(django_user_model):
    return django_user_model.objects.create_user(
        "staff", password="staff-password-1", is_staff=True
    )


@pytest.fixture
def alice_client(client, alice):
    client.force_login(alice)
    return client


@pytest.fixture
def auth(alice):
    """Headers that authenticate as alice with a fresh API token."""
    from sessions.models import ApiToken

    return {"HTTP_AUTHORIZATION": f"Bearer {ApiToken.issue(alice)[1]}"}


@pytest.fixture
def make_session(alice):
    from sessions.models import TrainingSession

    def make(**fields):
        fields.setdefault("owner", alice)
        fields.setdefault("model_type", "randomforest")
        fields.setdefault("dataset", "iris")
        fields.setdefault("total_epochs", 3)
        fields.setdefault(
            "params", _default_params(fields["model_type"], fields["dataset"])
        )
        return TrainingSession.objects.create(**fields)

    return make


def _default_params(model_type: str, dataset: str) -> dict:
    from sessions import catalog

    if model_type not in catalog.MODEL_TYPES or dataset not in catalog.DATASETS:
        return {}
    cleaned, _ = catalog.clean_params(model_type, dataset, {})
    return cleaned


def database_url_for_processes() -> str:
    """The URL of the test database, for the worker and daphne processes."""
    from django.db import connection

    db = connection.settings_dict
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{db['NAME']}"
    auth = db["USER"] + (f":{db['PASSWORD']}" if db["PASSWORD"] else "")
    host = f"{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}"
    return f"postgres://{auth}@{host}/{db['NAME']}"


class Stack:
    """A Celery worker and daphne, as separate processes on the test database."""

    def __init__(self, redis_url: str, log_dir: Path) -> None:
        self.redis_url = redis_url
        self.log_dir = log_dir
        self.port = stack.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = dict(
            os.environ,
            REDIS_URL=redis_url,
            DATABASE_URL=database_url_for_processes(),
            DJANGO_SETTINGS_MODULE="mltrack.settings",
            DEBUG="1",
            PYTHONUNBUFFERED="1",
        )
        self.env.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        self.workers: list = []
        self.daphne = None

    def start(self) -> Stack:
        self.start_worker()
        self.start_daphne()
        return self

    def start_worker(self, name: str = "worker"):
        worker = stack.start_worker(self.env, self.log_dir / f"{name}.log", name=name)
        self.workers.append(worker)
        return worker

    def start_daphne(self) -> None:
        self.daphne = stack.start_daphne(
            self.env, self.port, self.log_dir / "daphne.log"
        )

    def stop(self) -> None:
        stack.stop([*self.workers, *([self.daphne] if self.daphne else [])])

    def restart_daphne(self, down_for: float = 0.0) -> None:
        """Stop daphne, stay down `down_for` seconds, start it on the same port:
        every open WebSocket drops, as in a deploy."""
        stack.stop([self.daphne])
        time.sleep(down_for)  # the outage itself, not a wait for a condition
        self.start_daphne()


class RedisServer:
    """A redis-server of a test's own, which the test may restart."""

    def __init__(self, data_dir: Path) -> None:
        self.port = stack.free_port()
        self.data_dir = data_dir
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process = stack.start_redis(self.port, data_dir)

    def restart(self, down_for: float = 0.0) -> None:
        stack.stop([self.process])
        time.sleep(down_for)  # the outage itself
        self.process = stack.start_redis(self.port, self.data_dir)

    def stop(self) -> None:
        stack.stop([self.process])


@pytest.fixture(scope="session", autouse=True)
def _no_one_left_on_the_test_database(django_db_setup, django_db_blocker):
    """Before the PostgreSQL test database is dropped, close the connections still
    on it (printed: `-s` shows them). Django cannot drop a database someone uses,
    and pytest only warned, leaving it behind. The one seen: an idle connection
    whose last query read a user, most likely a thread of asgiref's pool from the
    in-process ASGI tests (a thread's connection lives as long as the thread)."""
    yield
    from django.db import connection

    if connection.vendor != "postgresql":
        return
    with django_db_blocker.unblock(), connection.cursor() as cursor:
        others = (
            "FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid()"
        )
        deadline = time.monotonic() + 5
        while True:
            cursor.execute(f"SELECT pid, application_name, state, query {others}")
            left = cursor.fetchall()
            if not left or time.monotonic() > deadline:
                break
            time.sleep(0.1)  # a stopped process's backend exits a moment later
        if left:
            print(f"\nconnections still on the test database: {left}")
            cursor.execute(f"SELECT pg_terminate_backend(pid) {others}")
    connection.close()


@pytest.fixture(scope="session")
def live_stack(django_db_setup, django_db_blocker, tmp_path_factory):
    """Worker and daphne for the whole run; their tests need transactional_db."""
    running = Stack(REDIS_URL, tmp_path_factory.mktemp("stack-logs")).start()
    yield running
    running.stop()


@pytest.fixture
def second_web_and_worker(live_stack, tmp_path):
    """One more worker and one more daphne beside live_stack's, on its database and
    Redis: the scale-out layout. The extra worker takes one run at a time and
    live_stack's two, so four runs started together cannot all land on one of them.
    Yields the second daphne's URL and the second worker's log."""
    worker_log = tmp_path / "worker-b.log"
    worker = stack.start_worker(
        live_stack.env, worker_log, name="worker-b", concurrency=1
    )
    port = stack.free_port()
    web = stack.start_daphne(live_stack.env, port, tmp_path / "daphne-b.log")
    try:
        stack.wait_for_log(worker_log, " ready.", worker, "worker-b")
        yield f"http://127.0.0.1:{port}", worker_log
    finally:
        stack.stop([worker, web])


def pytest_collection_modifyitems(items):
    """Run browser tests last: Playwright's sync API keeps an event loop running in
    the main thread, which breaks async_to_sync and asyncio.run in later tests."""
    items.sort(key=lambda item: "/browser/" in str(item.path))


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    # Playwright's sync API keeps an event loop running in this thread; Django's
    # ORM, used by the fixtures alongside it, is safe here because nothing else runs.
    # Only for this process and only while the browser runs: the processes the
    # tests start must keep Django's async-safety checks.
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "1"
    try:
        yield from _launch_chromium(sync_playwright)
    finally:
        os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)


def _launch_chromium(sync_playwright):
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=os.getenv("CHROMIUM", "/usr/bin/chromium"),
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-quic",
            ],
        )
        yield launched
        launched.close()


@pytest.fixture
def page(browser, request):
    """A fresh browser page; fails the test on console errors and saves a screenshot."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    new_page = context.new_page()
    problems: list[str] = []

    def note_console(message) -> None:
        if message.type == "error":
            # A failed load names no URL in its text; the location says which.
            problems.append(f"{message.text} ({message.location.get('url', '')})")

    new_page.on("console", note_console)
    new_page.on("pageerror", lambda e: problems.append(str(e)))
    new_page.console_problems = problems
    yield new_page
    ARTIFACTS.mkdir(exist_ok=True)
    new_page.screenshot(
        path=str(ARTIFACTS / f"{request.node.name}.png"), full_page=True
    )
    context.close()


def ws_events(raw: str) -> list[dict]:
    """The events of one WebSocket frame: one event, or several in a batch frame."""
    import json

    frame = json.loads(raw)
    return frame["events"] if frame.get("type") == "batch" else [frame]


def call_api(running: Stack, method: str, path: str, token: str, body=None):
    """One JSON API call over HTTP to a Stack's daphne, as a bearer-token client."""
    import json
    import urllib.request

    request = urllib.request.Request(
        running.url + path,
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={
            "Authorization": f"Bearer {token}",
            "Content-Type": "application/json",
        },
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def login(page, base_url: str, username: str, password: str) -> None:
    page.goto(f"{base_url}/accounts/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.click("button[type=submit]")
    page.wait_for_selector("#connection")


class EventTap:
    """Hears every pushed event as a web process does: subscribed to the events'
    pub/sub channel on the tests' Redis. Subscribe before the push."""

    def __init__(self) -> None:
        from sessions import events

        self.client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
        self.pubsub = self.client.pubsub(ignore_subscribe_messages=True)
        self.pubsub.subscribe(events.events_channel(REDIS_URL))
        # Events heard but not yet asked for: a message may carry several.
        self.heard: list[dict] = []
        self.messages = 0

    def next(self, timeout: float = 10) -> dict:
        """The next event (its JSON, with its audiences under "_audiences")."""
        import json

        from sessions import events

        deadline = time.monotonic() + timeout
        while not self.heard and (left := deadline - time.monotonic()) > 0:
            message = self.pubsub.get_message(timeout=left)
            if message is not None and message["type"] == "message":
                self.messages += 1
                audiences, texts = events.parse_wire_message(message["data"])
                self.heard += [
                    dict(json.loads(text), _audiences=audiences) for text in texts
                ]
        if not self.heard:
            raise TimeoutError(f"no event within {timeout} s")
        return self.heard.pop(0)

    def until(self, *types: str, timeout: float = 10, limit: int = 1000) -> list[dict]:
        """Every event up to and including the first of one of these types."""
        received: list[dict] = []
        while len(received) < limit:
            received.append(self.next(timeout))
            if received[-1]["type"] in types:
                return received
        raise AssertionError(f"no {types} within {limit} events")

    def close(self) -> None:
        self.pubsub.close()
        self.client.close()


@pytest.fixture
def event_tap():
    tap = EventTap()
    yield tap
    tap.close()
