import pytest

from sessions import events
from sessions.models import TrainingEvent, TrainingSession

pytestmark = pytest.mark.django_db
URL = "/api/ml/training-data"


@pytest.fixture
def sessions(alice, make_session):
    made = {
        "queued": make_session(name="first try"),
        "rf_done": make_session(dataset="digits"),
        "mlp_failed": make_session(model_type="mlp", dataset="wine", name="wide"),
        "external": TrainingSession.objects.start_external(
            alice, "notebook resnet", {}, 10, "cifar10"
        ),
    }
    made["rf_done"].mark_running("t")
    made["rf_done"].mark_completed({})
    made["mlp_failed"].mark_failed("boom")
    return made


def ids(rows):
    return sorted(row["id"] for row in rows)


def test_it_splits_active_sessions_from_the_history(alice_client, sessions):
    body = alice_client.get(URL).json()
    assert ids(body["active"]) == ids(
        [{"id": sessions["queued"].pk}, {"id": sessions["external"].pk}]
    )
    assert ids(body["history"]) == sorted(
        [sessions["rf_done"].pk, sessions["mlp_failed"].pk]
    )
    assert body["total"] == 2 and body["hasMore"] is False
    assert body["history"][0]["modelType"]  # camelCase keys


def test_it_paginates_the_history(alice_client, make_session):
    for _ in range(5):
        make_session().mark_failed("x")
    first = alice_client.get(URL, {"limit": 2}).json()
    second = alice_client.get(URL, {"limit": 2, "offset": 2}).json()
    assert len(first["history"]) == 2 and first["hasMore"] is True
    assert not set(ids(first["history"])) & set(ids(second["history"]))
    assert first["total"] == 5


@pytest.mark.parametrize(
    "params, expected",
    [
        ({"status": "failed"}, ["mlp_failed"]),
        ({"modelType": "mlp"}, ["mlp_failed"]),
        ({"modelType": "external"}, ["external"]),
        ({"dataset": "digits"}, ["rf_done"]),
        ({"dataset": "cifar10"}, ["external"]),
        ({"q": "resnet"}, ["external"]),
        ({"q": "WIDE"}, ["mlp_failed"]),
        ({"q": "nothing like it"}, []),
    ],
)
def test_it_filters(alice_client, sessions, params, expected):
    body = alice_client.get(URL, params).json()
    found = ids(body["active"] + body["history"])
    assert found == sorted(sessions[name].pk for name in expected)


def test_it_finds_a_session_by_its_number(alice_client, sessions):
    body = alice_client.get(URL, {"q": f"#{sessions['rf_done'].pk}"}).json()
    assert sessions["rf_done"].pk in ids(body["history"])


def test_its_cursor_follows_on_with_real_time_updates(alice_client, sessions):
    cursor = alice_client.get(URL).json()["cursor"]
    assert cursor == TrainingEvent.objects.head()
    events.push_status(sessions["queued"])
    later = alice_client.get("/api/ml/real-time-updates", {"since": cursor}).json()
    assert [e["session"]["id"] for e in later["events"]] == [sessions["queued"].pk]


def test_it_hides_other_users_sessions(client, bob, sessions):
    client.force_login(bob)
    body = client.get(URL).json()
    assert body["active"] == [] and body["history"] == [] and body["total"] == 0


def test_staff_see_every_session(client, staff, sessions):
    client.force_login(staff)
    assert client.get(URL).json()["total"] == 2


@pytest.mark.parametrize(
    "params, field, text",
    [
        ({"limit": 0}, "limit", "between 1 and 500"),
        ({"limit": 501}, "limit", "between 1 and 500"),
        ({"limit": "ten"}, "limit", "integer"),
        ({"offset": -1}, "offset", "between 0"),
        ({"status": "done"}, "status", "must be one of"),
        ({"modelType": "svm"}, "modelType", "must be one of"),
        ({"dataset": "d" * 33}, "dataset", "at most 32"),
        ({"q": "q" * 201}, "q", "at most 200"),
        ({"q": "a\x00b"}, "q", "NUL"),
    ],
)
def test_it_rejects_bad_input_naming_the_field(alice_client, params, field, text):
    response = alice_client.get(URL, params)
    assert response.status_code == 400
    assert text in response.json()["fields"][field]
