import csv
import io

import pytest

pytestmark = pytest.mark.django_db


def _text(response) -> str:
    return b"".join(response.streaming_content).decode()


def test_it_streams_every_epoch_as_csv(alice_client, make_session):
    session = make_session()
    session.record_epoch(1, {"train_loss": 0.5, "gpu_temp": 61}, 0.2)
    session.record_epoch(2, {"train_loss": 0.25}, 0.2)
    response = alice_client.get(f"/sessions/{session.pk}/metrics.csv")
    assert response.status_code == 200 and response.streaming
    assert response["Content-Type"].startswith("text/csv")
    assert f"session-{session.pk}-metrics.csv" in response["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(_text(response))))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert rows[1]["train_loss"] == "0.25"
    # Metrics logged under other names get a column of their own.
    assert rows[0]["gpu_temp"] == "61" and rows[1]["gpu_temp"] == ""


def test_it_hides_other_users_sessions(client, bob, make_session):
    session = make_session()
    client.force_login(bob)
    assert client.get(f"/sessions/{session.pk}/metrics.csv").status_code == 404


def test_it_requires_login(client, make_session):
    assert client.get(f"/sessions/{make_session().pk}/metrics.csv").status_code == 302


def test_it_writes_every_number_as_the_csv_module_does(alice_client, make_session):
    from sessions.models import EpochMetric

    # Floats that orjson (the fast path) writes unlike repr(), and missing values
    # (not -0.0: SQLite stores it as 0.0).
    awkward = [1e-05, 1e-07, 9.999e-05, 1e-4, 1e16, 1e300, 5e-324, 0.0, 0.1]
    awkward += [float("inf"), float("-inf"), None, 123456789.0, 2.5e-10]
    session = make_session()
    EpochMetric.objects.bulk_create(
        EpochMetric(session=session, epoch=epoch, train_loss=value, duration=value)
        for epoch, value in enumerate(awkward, 1)
    )
    rows = list(
        csv.reader(
            io.StringIO(_text(alice_client.get(f"/sessions/{session.pk}/metrics.csv")))
        )
    )
    expected = io.StringIO()
    csv.writer(expected).writerows([value, value] for value in awkward)
    written = [[row[1], row[9]] for row in rows[1:]]
    assert written == list(csv.reader(io.StringIO(expected.getvalue())))
