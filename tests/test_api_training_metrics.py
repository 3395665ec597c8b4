import math

import pytest

pytestmark = pytest.mark.django_db


@pytest.fixture
def trained(make_session):
    session = make_session(total_epochs=5)
    for epoch in range(1, 6):
        session.record_epoch(
            epoch, {"train_loss": 1 / epoch, "val_accuracy": epoch / 10}, 0.01
        )
    return session


def test_it_returns_every_epoch_in_order(alice_client, trained):
    body = alice_client.get(f"/api/ml/training-metrics/{trained.pk}").json()
    assert body["sessionId"] == trained.pk
    assert [e["epoch"] for e in body["epochs"]] == [1, 2, 3, 4, 5]
    assert body["epochs"][1]["metrics"]["train_loss"] == 0.5
    assert body["epochs"][0]["time"]


def test_it_returns_the_epochs_after_a_cursor(alice_client, trained):
    body = alice_client.get(f"/api/ml/training-metrics/{trained.pk}?after=3").json()
    assert [e["epoch"] for e in body["epochs"]] == [4, 5]


def test_it_rejects_a_bad_cursor(alice_client, trained):
    response = alice_client.get(f"/api/ml/training-metrics/{trained.pk}?after=x")
    assert response.status_code == 400
    assert "after" in response.json()["fields"]


def test_it_hides_other_users_sessions(client, bob, trained):
    client.force_login(bob)
    assert client.get(f"/api/ml/training-metrics/{trained.pk}").status_code == 404


def _bulk_epochs(session, count, spike_at=None):
    from sessions.models import EpochMetric

    rows = [
        EpochMetric(
            session=session,
            epoch=epoch,
            train_loss=50.0 if epoch == spike_at else 1 / epoch,
            val_accuracy=min(1.0, epoch / count),
        )
        for epoch in range(1, count + 1)
    ]
    EpochMetric.objects.bulk_create(rows, batch_size=5000)


def test_max_points_thins_each_series_and_keeps_a_spike(alice_client, make_session):
    session = make_session(total_epochs=20_000)
    _bulk_epochs(session, 20_000, spike_at=12_345)
    body = alice_client.get(
        f"/api/ml/training-metrics/{session.pk}?maxPoints=500"
    ).json()
    assert body["downsampled"] is True and body["count"] == 20_000
    losses = [e for e in body["epochs"] if "train_loss" in e["metrics"]]
    accuracies = [e for e in body["epochs"] if "val_accuracy" in e["metrics"]]
    assert 400 <= len(losses) <= 500 and 400 <= len(accuracies) <= 500
    assert any(e["epoch"] == 12_345 for e in losses)
    assert losses[0]["epoch"] == 1 and losses[-1]["epoch"] == 20_000
    epochs = [e["epoch"] for e in body["epochs"]]
    assert epochs == sorted(set(epochs))


def test_a_session_that_fits_is_not_thinned(alice_client, trained):
    body = alice_client.get(
        f"/api/ml/training-metrics/{trained.pk}?maxPoints=1000"
    ).json()
    assert body["downsampled"] is False
    assert [e["epoch"] for e in body["epochs"]] == [1, 2, 3, 4, 5]


def test_a_zoom_range_returns_finer_points(alice_client, make_session):
    session = make_session(total_epochs=20_000)
    _bulk_epochs(session, 20_000)
    url = f"/api/ml/training-metrics/{session.pk}?from=1000&to=1400&maxPoints=1000"
    body = alice_client.get(url).json()
    assert body["downsampled"] is False and body["count"] == 401
    assert [e["epoch"] for e in body["epochs"]] == list(range(1000, 1401))


def test_it_rejects_a_reversed_range(alice_client, trained):
    response = alice_client.get(f"/api/ml/training-metrics/{trained.pk}?from=4&to=2")
    assert response.status_code == 400
    assert "from" in response.json()["fields"]


@pytest.mark.parametrize("value", ["x", "1", "-5"])
def test_it_rejects_a_bad_max_points(alice_client, trained, value):
    response = alice_client.get(
        f"/api/ml/training-metrics/{trained.pk}?maxPoints={value}"
    )
    assert response.status_code == 400
    assert "maxPoints" in response.json()["fields"]


def test_thinned_rows_keep_extra_metrics_and_timestamps(alice_client, make_session):
    from sessions.models import EpochMetric

    session = make_session(total_epochs=5000)
    EpochMetric.objects.bulk_create(
        EpochMetric(
            session=session,
            epoch=epoch,
            train_loss=1 / epoch,
            extra={"gpu_temp": 60 + epoch % 9} if epoch % 10 == 0 else {},
        )
        for epoch in range(1, 5001)
    )
    body = alice_client.get(
        f"/api/ml/training-metrics/{session.pk}?maxPoints=100"
    ).json()
    temps = [e for e in body["epochs"] if "gpu_temp" in e["metrics"]]
    assert 2 <= len(temps) <= 100
    assert all(e["time"] for e in body["epochs"])


def test_after_and_from_together_start_at_the_later_one(alice_client, trained):
    body = alice_client.get(
        f"/api/ml/training-metrics/{trained.pk}?after=3&from=2&to=5"
    ).json()
    assert [e["epoch"] for e in body["epochs"]] == [4, 5]


def test_a_finished_sessions_thinned_chart_is_cached_until_it_holds_more(
    alice_client, make_session
):
    from sessions.models import EpochMetric

    session = make_session(total_epochs=300, status="completed")
    _bulk_epochs(session, 300)
    url = f"/api/ml/training-metrics/{session.pk}?maxPoints=20"
    first = alice_client.get(url).json()
    assert first["downsampled"] is True and first["count"] == 300
    # Stored epochs never change through the app; changing one behind its back
    # shows the second answer came from the cache.
    EpochMetric.objects.filter(session=session, epoch=1).update(train_loss=99.0)
    assert alice_client.get(url).json() == first
    # A new epoch (a revived external run logging more) is a different chart.
    EpochMetric.objects.create(session=session, epoch=301, train_loss=0.001)
    fresh = alice_client.get(url).json()
    assert fresh["count"] == 301
    assert [e for e in fresh["epochs"] if e["epoch"] == 1][0]["metrics"][
        "train_loss"
    ] == 99.0
    assert fresh["epochs"][-1]["epoch"] == 301


def test_a_finished_sessions_chart_is_stored_for_reads_after_the_cache_is_emptied(
    alice_client, make_session
):
    from django.core.cache import cache

    from sessions.models import EpochMetric, StoredChart

    session = make_session(total_epochs=300, status="failed")
    _bulk_epochs(session, 300)
    url = f"/api/ml/training-metrics/{session.pk}?maxPoints=20"
    first = alice_client.get(url).json()
    # As above: an epoch changed behind the app's back, Redis emptied (a restart),
    # and the answer is still the first one, so it came from the database.
    EpochMetric.objects.filter(session=session, epoch=1).update(train_loss=99.0)
    cache.clear()
    assert alice_client.get(url).json() == first
    assert StoredChart.objects.filter(session=session).count() == 1
    # More epochs (the external run spoke again): the stored answer is not used,
    # and the new one replaces it.
    EpochMetric.objects.create(session=session, epoch=301, train_loss=0.001)
    cache.clear()
    fresh = alice_client.get(url).json()
    assert fresh["count"] == 301
    cache.clear()
    assert alice_client.get(url).json() == fresh
    assert StoredChart.objects.filter(session=session).count() == 1


def test_a_zoomed_chart_is_not_stored(alice_client, make_session):
    from sessions.models import StoredChart

    session = make_session(total_epochs=300, status="completed")
    _bulk_epochs(session, 300)
    alice_client.get(
        f"/api/ml/training-metrics/{session.pk}?maxPoints=20&from=10&to=200"
    )
    assert not StoredChart.objects.exists()


def test_a_running_sessions_chart_is_never_cached(alice_client, make_session):
    from sessions.models import EpochMetric, StoredChart

    session = make_session(total_epochs=300, status="running")
    _bulk_epochs(session, 300)
    url = f"/api/ml/training-metrics/{session.pk}?maxPoints=20"
    alice_client.get(url)
    EpochMetric.objects.filter(session=session, epoch=1).update(train_loss=99.0)
    body = alice_client.get(url).json()
    assert [e for e in body["epochs"] if e["epoch"] == 1][0]["metrics"][
        "train_loss"
    ] == 99.0
    assert not StoredChart.objects.exists()


def test_a_cursor_beyond_any_epoch_answers_no_epochs(alice_client, trained):
    # Larger than the epoch column can hold: found by schemathesis as a 500.
    for query in ("after=158132527864465024", "maxPoints=50&from=99999999999999"):
        response = alice_client.get(f"/api/ml/training-metrics/{trained.pk}?{query}")
        assert response.status_code == 200
        assert response.json()["epochs"] == []


def test_thinned_rows_carry_their_own_duration_time_and_values(
    alice_client, make_session
):
    # Rows stored out of epoch order, with gaps, missing values and a NaN (which
    # PostgreSQL stores and SQLite stores as NULL): every row sent must still be
    # the stored row of its epoch.
    from datetime import UTC, datetime, timedelta

    from sessions.models import EpochMetric

    session = make_session(total_epochs=9000)
    start = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    epochs = list(range(3, 9000, 3))
    rows = [
        EpochMetric(
            session=session,
            epoch=epoch,
            train_loss=math.nan if epoch == 300 else math.sin(epoch) + epoch % 7,
            val_loss=None if epoch % 4 else 1 / epoch,
            duration=None if epoch % 5 == 0 else epoch / 1000,
            # The first, always sent, with no fraction of a second.
            created=start
            + timedelta(seconds=epoch, microseconds=0 if epoch == 3 else epoch * 7),
        )
        for epoch in reversed(epochs)
    ]
    EpochMetric.objects.bulk_create(rows, batch_size=1000)
    body = alice_client.get(
        f"/api/ml/training-metrics/{session.pk}?maxPoints=200"
    ).json()
    assert body["downsampled"] is True and body["count"] == len(epochs)
    stored = {row.epoch: row for row in rows}
    sent = [e["epoch"] for e in body["epochs"]]
    assert sent == sorted(set(sent))
    for row in body["epochs"]:
        epoch = stored[row["epoch"]]
        assert row["duration"] == epoch.duration
        assert row["time"] == epoch.created.isoformat()
        assert row["metrics"]
        for name, value in row["metrics"].items():
            assert value == getattr(epoch, name)
    losses = [e["epoch"] for e in body["epochs"] if "train_loss" in e["metrics"]]
    assert 300 not in losses
    assert body["epochs"][0]["time"] == "2026-01-02T03:04:08+00:00"
