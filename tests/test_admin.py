from __future__ import annotations

import csv
import io
from datetime import timedelta
from urllib.parse import urlencode

import pytest
from django.contrib.auth.models import Permission
from django.utils.timezone import now

from sessions import events
from sessions.admin import TrainingSessionAdmin
from sessions.models import ApiToken, EpochMetric, TrainingSession

pytestmark = pytest.mark.django_db

CHANGELIST = "/admin/training/trainingsession/"
TOKENS = "/admin/training/apitoken/"


@pytest.fixture
def staff_client(client, staff):
    """A staff member allowed to look after sessions and tokens (not a superuser)."""
    staff.user_permissions.set(
        Permission.objects.filter(content_type__app_label="training")
    )
    client.force_login(staff)
    return client


def finished_run(make_session, epochs: int = 3, **fields) -> TrainingSession:
    session = make_session(total_epochs=epochs, **fields)
    started = now() - timedelta(seconds=90)
    TrainingSession.objects.filter(pk=session.pk).update(
        status="running", started_at=started
    )
    session.refresh_from_db()
    for epoch in range(1, epochs + 1):
        session.record_epoch(
            epoch,
            {
                "train_loss": 1 / epoch,
                "val_loss": 1.2 / epoch,
                "train_accuracy": 0.5 + epoch / (3 * epochs),
                "val_accuracy": 0.4 + epoch / (3 * epochs),
                "grad_norm": 0.25,
            },
            duration=0.05,
        )
    TrainingSession.objects.filter(pk=session.pk).update(
        status="completed", finished_at=started + timedelta(seconds=75.5)
    )
    session.refresh_from_db()
    return session


def test_it_lists_sessions_with_their_history(staff_client, make_session, alice):
    run = finished_run(make_session, epochs=3, dataset="wine")
    r = staff_client.get(CHANGELIST)
    assert r.status_code == 200
    row = next(
        line for line in r.content.decode().splitlines() if f"/{run.pk}/" in line
    )
    for text in ("randomforest", "wine", "alice", "completed", "3/3", "0.7333"):
        assert text in row
    assert "1 min 16 s" in row  # duration from started to finished
    assert f'href="/sessions/{run.pk}/"' in row  # the live page


def test_it_filters_by_status_model_dataset_owner_and_date(
    staff_client, make_session, alice, bob
):
    done = finished_run(make_session, dataset="wine")
    queued = make_session(owner=bob, model_type="logistic", dataset="iris")
    old = make_session(created=now() - timedelta(days=40))

    def ids(query: str) -> set[int]:
        r = staff_client.get(CHANGELIST + query)
        assert r.status_code == 200
        return {s.pk for s in r.context["cl"].result_list}

    assert ids("?status__exact=completed") == {done.pk}
    assert ids("?model_type__exact=logistic") == {queued.pk}
    assert ids("?dataset__exact=wine") == {done.pk}
    assert ids(f"?owner__id__exact={bob.pk}") == {queued.pk}
    since = urlencode({"created__gte": (now() - timedelta(days=7)).isoformat()})
    assert ids(f"?{since}") == {done.pk, queued.pk}
    assert old.pk in ids(f"?created__year={old.created.year}")
    # The owner filter offers only users with sessions.
    r = staff_client.get(CHANGELIST)
    owner = next(f for f in r.context["cl"].filter_specs if f.title == "owner")
    choices = [c["display"] for c in owner.choices(r.context["cl"])]
    assert "staff" not in choices and {"alice", "bob"} <= set(choices)


def test_it_searches_by_owner_name_number_and_task(staff_client, make_session, bob):
    mine = make_session(name="baseline forest")
    theirs = make_session(owner=bob, task_id="abc-123")

    def ids(term: str) -> set[int]:
        r = staff_client.get(CHANGELIST, {"q": term})
        return {s.pk for s in r.context["cl"].result_list}

    assert ids("baseline") == {mine.pk}
    assert ids("bob") == {theirs.pk}
    assert ids("abc-123") == {theirs.pk}
    assert ids(f"#{mine.pk}") == {mine.pk}


def test_it_has_a_date_hierarchy(staff_client, make_session):
    session = make_session()
    r = staff_client.get(CHANGELIST)
    assert f"?created__year={session.created.year}" in r.content.decode()


def test_it_sorts_by_duration(staff_client, make_session):
    slow = finished_run(make_session)
    fast = finished_run(make_session)
    TrainingSession.objects.filter(pk=fast.pk).update(
        finished_at=fast.started_at + timedelta(seconds=2)
    )
    column = TrainingSessionAdmin.list_display.index("duration") + 1
    r = staff_client.get(CHANGELIST, {"o": str(column)})
    assert [s.pk for s in r.context["cl"].result_list] == [fast.pk, slow.pk]


def test_the_change_page_is_read_only_with_an_epoch_table(staff_client, make_session):
    run = finished_run(make_session, epochs=5)
    r = staff_client.get(f"{CHANGELIST}{run.pk}/change/")
    assert r.status_code == 200
    html = r.content.decode()
    assert 'name="status"' not in html and 'name="_save"' not in html
    table = html[html.index('class="mltrack-epochs"') :]
    table = table[: table.index("</table>")]
    assert table.count("<tr>") == 1 + 5  # the header and one row per epoch
    assert "<th>val_accuracy</th>" in table and "<th>grad_norm</th>" in table
    assert "<th>precision</th>" not in table  # never logged, no empty column
    assert "<td>0.2</td><td>0.24</td>" in table  # the losses of epoch 5
    assert f'href="/sessions/{run.pk}/"' in html


def test_a_long_run_shows_both_ends_and_links_to_the_chart(staff_client, make_session):
    run = finished_run(make_session, epochs=450)
    r = staff_client.get(f"{CHANGELIST}{run.pk}/change/")
    html = r.content.decode()
    table = html[html.index('class="mltrack-epochs"') :]
    table = table[: table.index("</table>")]
    epochs = [int(cell.split("</td>")[0]) for cell in table.split("<tr><td>")[1:]]
    assert epochs == list(range(1, 201)) + list(range(251, 451))
    assert "50 epochs not shown here" in table
    assert f'<a href="/sessions/{run.pk}/">see them all on the chart</a>' in table


def test_a_failed_run_shows_its_error_and_traceback(staff_client, make_session):
    session = make_session()
    session.mark_failed(
        "Training crashed: ValueError: bad <input>",
        'Traceback (most recent call last):\n  File "training.py", line 9\n'
        "ValueError: bad <input>",
    )
    r = staff_client.get(f"{CHANGELIST}{session.pk}/change/")
    html = r.content.decode()
    assert "Failure" in html
    assert "Training crashed: ValueError: bad &lt;input&gt;" in html
    assert '<pre class="mltrack-pre">Traceback (most recent call last):' in html
    assert "ValueError: bad &lt;input&gt;</pre>" in html


def test_a_completed_run_has_no_failure_section(staff_client, make_session):
    run = finished_run(make_session)
    r = staff_client.get(f"{CHANGELIST}{run.pk}/change/")
    assert "Traceback" not in r.content.decode()


def test_it_cannot_add_sessions(staff_client, make_session):
    assert staff_client.get(f"{CHANGELIST}add/").status_code == 403
    r = staff_client.post(
        f"{CHANGELIST}add/", {"model_type": "randomforest", "dataset": "iris"}
    )
    assert r.status_code == 403
    assert not TrainingSession.objects.exists()


def test_it_cannot_edit_status_or_metrics(staff_client, make_session):
    run = finished_run(make_session)
    r = staff_client.post(
        f"{CHANGELIST}{run.pk}/change/",
        {"status": "failed", "current_epoch": "99", "best_val_accuracy": "1.0"},
    )
    assert r.status_code == 403
    before = (run.status, run.current_epoch, run.best_val_accuracy)
    run.refresh_from_db()
    assert (run.status, run.current_epoch, run.best_val_accuracy) == before


def test_stop_selected_stops_sessions_and_tells_viewers(
    staff_client, make_session, event_tap
):
    queued = make_session()
    running = make_session()
    running.mark_running("task-1")
    done = finished_run(make_session)

    r = staff_client.post(
        CHANGELIST,
        {
            "action": "stop_selected",
            "_selected_action": [queued.pk, running.pk, done.pk],
        },
        follow=True,
    )
    assert r.status_code == 200
    shown = [str(m) for m in r.context["messages"]]
    assert any("Asked 2 session(s) to stop" in m for m in shown)
    assert any(f"left as they were: #{done.pk}" in m for m in shown)
    for session in (queued, running, done):
        session.refresh_from_db()
    assert queued.status == "stopped"
    assert running.status == "stopping"  # the worker stops it after its epoch
    assert done.status == "completed"
    pushed = [event_tap.next() for _ in range(2)]
    assert {e["session"]["id"] for e in pushed} == {queued.pk, running.pk}
    assert all(events.STAFF_AUDIENCE in e["_audiences"] for e in pushed)


def test_view_only_staff_cannot_stop_sessions(client, staff, make_session):
    staff.user_permissions.set(
        Permission.objects.filter(codename="view_trainingsession")
    )
    client.force_login(staff)
    session = make_session()
    r = client.get(CHANGELIST)
    assert r.status_code == 200
    assert "stop_selected" not in r.content.decode()
    r = client.post(
        CHANGELIST, {"action": "stop_selected", "_selected_action": [session.pk]}
    )
    session.refresh_from_db()
    assert session.status == "queued"


def test_export_selected_as_csv(staff_client, make_session, bob):
    run = finished_run(make_session, epochs=3, name="=cmd|'/c calc'!A1")
    other = make_session(owner=bob, model_type="logistic")
    r = staff_client.post(
        CHANGELIST,
        {"action": "export_csv", "_selected_action": [other.pk, run.pk]},
    )
    assert r.status_code == 200
    assert r["Content-Type"] == "text/csv; charset=utf-8"
    assert r["Content-Disposition"].startswith('attachment; filename="training-')
    rows = list(csv.DictReader(io.StringIO(r.content.decode())))
    assert [row["id"] for row in rows] == [str(run.pk), str(other.pk)]
    first = rows[0]
    assert first["owner"] == "alice" and first["status"] == "completed"
    assert first["name"].startswith("'=")  # no formula in a spreadsheet
    assert float(first["final.val_accuracy"]) == pytest.approx(0.4 + 1 / 3)
    assert first["final.grad_norm"] == "0.25"
    assert first["param.max_depth"] == ""  # None: no limit
    assert first["param.max_features"] == "sqrt"
    assert float(first["duration_seconds"]) == pytest.approx(75.5)
    assert rows[1]["final.val_accuracy"] == ""  # never trained


def test_finished_sessions_can_be_deleted_but_not_active_ones(
    staff_client, make_session
):
    active = make_session()
    done = finished_run(make_session)
    assert staff_client.get(f"{CHANGELIST}{active.pk}/delete/").status_code == 403

    def delete(*sessions: TrainingSession) -> int:
        selected = [s.pk for s in sessions]
        return staff_client.post(
            CHANGELIST,
            {"action": "delete_selected", "_selected_action": selected, "post": "yes"},
        ).status_code

    assert delete(active, done) == 403  # all or nothing
    assert TrainingSession.objects.count() == 2
    assert delete(done) == 302
    assert list(TrainingSession.objects.values_list("pk", flat=True)) == [active.pk]
    assert not EpochMetric.objects.exists()


def test_creating_a_token_shows_it_once_and_stores_its_hash(staff_client, alice):
    r = staff_client.post(f"{TOKENS}add/", {"user": alice.pk, "name": "laptop"})
    assert r.status_code == 200
    assert "no-store" in r["Cache-Control"]
    raw = r.context["raw_key"]
    assert raw.startswith("mlt_") and raw in r.content.decode()
    token = ApiToken.objects.get()
    assert (token.user, token.name, token.prefix) == (alice, "laptop", raw[:12])
    assert token.key_hash == ApiToken.hash(raw) and raw not in token.key_hash
    assert ApiToken.objects.authenticate(raw) == token
    # Not on any later page.
    for url in (TOKENS, f"{TOKENS}{token.pk}/change/"):
        assert raw not in staff_client.get(url).content.decode()


def test_a_token_needs_a_user(staff_client):
    r = staff_client.post(f"{TOKENS}add/", {"name": "nobody's"})
    assert r.status_code == 200
    assert "This field is required." in r.content.decode()
    assert not ApiToken.objects.exists()


def test_revoke_selected_tokens(staff_client, alice, bob):
    _, alice_raw = ApiToken.issue(alice)
    _, bob_raw = ApiToken.issue(bob)
    alice_token = ApiToken.objects.get(user=alice)
    r = staff_client.post(
        TOKENS,
        {"action": "revoke_selected", "_selected_action": [alice_token.pk]},
        follow=True,
    )
    assert any("Revoked 1 token(s)" in str(m) for m in r.context["messages"])
    assert ApiToken.objects.authenticate(alice_raw) is None
    assert ApiToken.objects.authenticate(bob_raw) is not None
    r = staff_client.get(TOKENS, {"state": "revoked"})
    assert [t.pk for t in r.context["cl"].result_list] == [alice_token.pk]


def test_only_a_tokens_name_can_be_edited(staff_client, alice, bob):
    token, raw = ApiToken.issue(alice, "old")
    token.revoke()
    r = staff_client.post(
        f"{TOKENS}{token.pk}/change/",
        {"name": "ci", "user": bob.pk, "revoked_at_0": "", "revoked_at_1": ""},
    )
    assert r.status_code == 302
    token.refresh_from_db()
    assert token.name == "ci" and token.user == alice
    assert token.revoked_at is not None
    assert ApiToken.objects.authenticate(raw) is None


def test_its_pages_link_the_site_icon(staff_client):
    # Without a link, a browser asks for /favicon.ico, which is not served (a
    # 404 in the console of every admin page).
    html = staff_client.get("/admin/training/trainingsession/").content.decode()
    assert '<link rel="icon" href="/static/favicon' in html
    assert 'id="site-name"' in html  # admin's own base_site, extended
