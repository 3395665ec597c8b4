"""Browsers on two web processes: the Models page of a user on one daphne and of a
staff member on the other both follow runs that two workers train, live."""

from __future__ import annotations

import json
import urllib.request

import pytest

from sessions.models import ApiToken, TrainingSession
from tests.conftest import login, ws_events

pytestmark = pytest.mark.django_db(transaction=True)

SESSIONS = 4
EPOCHS = 6


def record_frames(page) -> list[dict]:
    """Every training event the page's own WebSocket receives."""
    frames: list[dict] = []

    def on_socket(socket: object) -> None:
        socket.on("framereceived", lambda payload: frames.extend(ws_events(payload)))

    page.on("websocket", on_socket)
    return frames


def test_pages_on_both_web_processes_follow_every_run(
    live_stack, second_web_and_worker, browser, page, alice, staff
):
    web_b, _ = second_web_and_worker
    staff_page = browser.new_context(viewport={"width": 1280, "height": 800}).new_page()
    alice_frames = record_frames(page)
    staff_frames = record_frames(staff_page)
    staff_problems: list[str] = []
    staff_page.on("pageerror", lambda error: staff_problems.append(str(error)))
    login(page, live_stack.url, "alice", "alice-password-1")
    login(staff_page, web_b, "staff", "staff-password-1")
    for each in (page, staff_page):
        each.wait_for_selector('#connection[data-state="live"]')

    _, token = ApiToken.issue(alice)
    ids = []
    for number in range(SESSIONS):
        request = urllib.request.Request(
            (live_stack.url, web_b)[number % 2] + "/api/ml/start-training",
            method="POST",
            data=json.dumps(
                {"modelType": "randomforest", "dataset": "digits", "epochs": EPOCHS}
            ).encode(),
            headers={
                "Authorization": f"Bearer {token}",
                "Content-Type": "application/json",
            },
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            ids.append(json.loads(response.read())["session"]["id"])

    # Finished runs enter the history table only through live events.
    for each in (page, staff_page):
        for pk in ids:
            each.wait_for_selector(
                f'#history-rows tr[data-session="{pk}"] .status-completed',
                timeout=180_000,
            )
    assert TrainingSession.objects.filter(pk__in=ids, status="completed").count() == 4
    for name, frames in (("alice", alice_frames), ("staff", staff_frames)):
        for pk in ids:
            epochs = [
                f["epoch"]
                for f in frames
                if f.get("type") == "training_progress" and f["session"]["id"] == pk
            ]
            assert epochs == list(range(1, EPOCHS + 1)), (name, pk)
    assert page.console_problems == [] and staff_problems == []
    staff_page.context.close()
