import pytest

from sessions import events
from sessions.models import ApiToken, TrainingEvent

pytestmark = pytest.mark.django_db
URL = "/api/ml/real-time-updates"


def poll(client, **params):
    response = client.get(URL, params)
    assert response.status_code == 200, response.content
    return response.json()


def test_it_returns_events_after_the_cursor_in_order(alice_client, make_session):
    session = make_session()
    for epoch in (1, 2, 3):
        events.push_epoch(
            session, session.record_epoch(epoch, {"train_loss": 1 / epoch})
        )
    first = poll(alice_client, since=0)
    assert [e["epoch"] for e in first["events"]] == [1, 2, 3]
    assert first["events"][0]["type"] == "training_progress"
    assert first["events"][0]["session"]["id"] == session.pk
    assert first["cursor"] == first["events"][-1]["id"]
    assert first["hasMore"] is False and first["missed"] is False
    assert poll(alice_client, since=first["cursor"])["events"] == []


def test_following_the_cursor_skips_and_repeats_nothing(alice_client, make_session):
    session = make_session()
    seen, cursor = [], 0
    for epoch in range(1, 26):
        events.push_epoch(session, session.record_epoch(epoch, {"train_loss": 0.5}))
        if epoch % 4 == 0:  # a poller that reads in pages of 3 every few epochs
            while True:
                page = poll(alice_client, since=cursor, limit=3)
                seen += [e["epoch"] for e in page["events"]]
                cursor = page["cursor"]
                if not page["hasMore"]:
                    break
    seen += [e["epoch"] for e in poll(alice_client, since=cursor)["events"]]
    assert seen == list(range(1, 26))


def test_it_shows_each_user_only_their_sessions(client, alice, bob, make_session):
    mine = make_session()
    theirs = make_session(owner=bob)
    events.push_status(theirs)
    events.push_status(mine)
    events.push_status(theirs)
    client.force_login(alice)
    answer = poll(client, since=0)
    assert [e["session"]["id"] for e in answer["events"]] == [mine.pk]
    # The cursor still moves past the other user's events.
    assert answer["cursor"] == TrainingEvent.objects.head()


def test_staff_see_every_session(client, staff, bob, make_session):
    events.push_status(make_session())
    events.push_status(make_session(owner=bob))
    client.force_login(staff)
    assert len(poll(client, since=0)["events"]) == 2


def test_it_filters_by_session(alice_client, make_session):
    one, two = make_session(), make_session()
    events.push_status(one)
    events.push_status(two)
    answer = poll(alice_client, since=0, session=two.pk)
    assert [e["session"]["id"] for e in answer["events"]] == [two.pk]


def test_it_works_with_a_token(client, alice, make_session):
    events.push_status(make_session())
    raw = ApiToken.issue(alice)[1]
    response = client.get(URL, HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert len(response.json()["events"]) == 1


def test_the_event_is_stored_even_when_redis_is_down(
    alice_client, make_session, settings
):
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens: pushes fail
    events.push_status(make_session())
    assert len(poll(alice_client, since=0)["events"]) == 1


def test_it_says_when_events_were_pruned(alice_client, make_session):
    session = make_session()
    for _ in range(4):
        events.push_status(session)
    ids = list(TrainingEvent.objects.order_by("id").values_list("pk", flat=True))
    TrainingEvent.objects.filter(pk__in=ids[:2]).delete()  # pruned: the two oldest
    # A client that had seen only the first event may have lost the second.
    assert poll(alice_client, since=ids[0])["missed"] is True
    # One whose last event is still kept lost nothing; nor did a new client.
    assert poll(alice_client, since=ids[2])["missed"] is False
    assert poll(alice_client, since=0)["missed"] is False


def test_pruning_removes_only_old_events(make_session):
    from datetime import timedelta

    from django.utils.timezone import now

    session = make_session()
    events.push_status(session)
    events.push_status(session)
    TrainingEvent.objects.filter(pk=TrainingEvent.objects.first().pk).update(
        created=now() - timedelta(days=30)
    )
    assert TrainingEvent.objects.prune(events.EVENT_RETENTION) == 1
    assert TrainingEvent.objects.count() == 1


@pytest.mark.parametrize(
    "params, field, text",
    [
        ({"since": "x"}, "since", "integer"),
        ({"since": ""}, "since", "integer"),
        ({"since": -1}, "since", "between 0"),
        ({"since": 2**70}, "since", "between 0"),
        ({"limit": 0}, "limit", "between 1 and 1000"),
        ({"limit": 1001}, "limit", "between 1 and 1000"),
        ({"session": "abc"}, "session", "integer"),
    ],
)
def test_it_rejects_bad_input_naming_the_field(alice_client, params, field, text):
    response = alice_client.get(URL, params)
    assert response.status_code == 400
    assert text in response.json()["fields"][field]
