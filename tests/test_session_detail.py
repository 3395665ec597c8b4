import json

import pytest

from sessions.models import EpochMetric, TrainingSession

pytestmark = pytest.mark.django_db

REPORT = {
    "totalSeconds": 3.25,
    "classes": ["cat", "dog"],
    "confusionMatrix": [[7, 1], [2, 6]],
    "perClass": {
        "cat": {"precision": 0.78, "recall": 0.875, "f1-score": 0.824, "support": 8.0},
        "dog": {"precision": 0.857, "recall": 0.75, "f1-score": 0.8, "support": 8.0},
    },
    "featureImportances": {"whiskers": 0.6, "bark": 0.4},
}


def _page_data(html: str) -> dict:
    return json.loads(
        html.split('id="page-data" type="application/json">')[1].split("</script>")[0]
    )


def _chart_data(html: str) -> dict:
    return json.loads(
        html.split('id="chart-data" type="application/json">')[1].split("</script>")[0]
    )


def test_it_requires_login(client, make_session):
    response = client.get(f"/sessions/{make_session().pk}/")
    assert response.status_code == 302


def test_it_hides_other_users_sessions(client, bob, make_session):
    session = make_session()
    client.force_login(bob)
    assert client.get(f"/sessions/{session.pk}/").status_code == 404


def test_it_shows_progress_charts_configuration_and_stop(alice_client, make_session):
    session = make_session(total_epochs=10)
    session.mark_running("t")
    session.record_epoch(1, {"train_loss": 0.9, "learning_rate": 0.01})
    html = alice_client.get(f"/sessions/{session.pk}/").content.decode()
    assert "Epoch 1/10" in html
    for chart in (
        "chart-loss",
        "chart-accuracy",
        "chart-learning_rate",
        "chart-scores",
    ):
        assert f'id="{chart}"' in html
    assert "trees_per_epoch" in html
    assert f'action="/sessions/{session.pk}/stop/"' in html
    assert f'href="/sessions/{session.pk}/metrics.csv"' in html
    assert _page_data(html)["focus"]["id"] == session.pk
    chart = _chart_data(html)
    assert chart["epochs"][0]["metrics"]["learning_rate"] == 0.01


def test_a_metric_name_cannot_end_the_embedded_chart(alice, alice_client):
    run = TrainingSession.objects.start_external(alice, "run", {}, 10, "custom")
    name = "</script><script>alert(1)</script>&"
    run.record_epochs([(1, {name: 0.5}, None)])
    html = alice_client.get(f"/sessions/{run.pk}/").content.decode()
    assert "<script>alert(1)" not in html
    assert _chart_data(html)["epochs"][0]["metrics"][name] == 0.5


def test_a_finished_long_run_is_thinned_once_for_every_visit(
    alice_client, make_session, django_assert_max_num_queries
):
    session = make_session(total_epochs=5000)
    session.mark_running("t")
    EpochMetric.objects.bulk_create(
        EpochMetric(session=session, epoch=e, train_loss=1 / e) for e in range(1, 5001)
    )
    session.mark_completed(REPORT)
    first = _chart_data(alice_client.get(f"/sessions/{session.pk}/").content.decode())
    assert first["downsampled"] is True and first["count"] == 5000
    # Later visits read the cached answer: no query reads the epochs again.
    with django_assert_max_num_queries(6) as queries:
        html = alice_client.get(f"/sessions/{session.pk}/").content.decode()
    epoch_reads = [
        query["sql"]
        for query in queries.captured_queries
        if "training_epochmetric" in query["sql"]
    ]
    # Only the cache key's count of them.
    assert epoch_reads and all("COUNT(" in sql.upper() for sql in epoch_reads)
    assert _chart_data(html) == first


def test_it_shows_the_final_report(alice_client, make_session):
    session = make_session()
    session.mark_running("t")
    session.mark_completed(REPORT)
    html = alice_client.get(f"/sessions/{session.pk}/").content.decode()
    confusion = html.split('class="confusion"')[1].split("</table>")[0]
    assert ">7<" in confusion and ">dog<" in confusion
    per_class = html.split('class="per-class"')[1].split("</table>")[0]
    assert "0.824" in per_class and "0.875" in per_class
    assert "whiskers" in html and "0.6000" in html
    assert "Stop</button>" not in html


def test_a_long_session_embeds_a_thinned_series(alice_client, make_session):
    session = make_session(total_epochs=100_000)
    EpochMetric.objects.bulk_create(
        (
            EpochMetric(session=session, epoch=e, train_loss=1 / e, val_accuracy=0.5)
            for e in range(1, 100_001)
        ),
        batch_size=5000,
    )
    response = alice_client.get(f"/sessions/{session.pk}/")
    data = _chart_data(response.content.decode())
    assert data["downsampled"] is True and data["count"] == 100_000
    for metric in ("train_loss", "val_accuracy"):
        points = [e for e in data["epochs"] if metric in e["metrics"]]
        assert 2 <= len(points) <= 1000
    print(f"\n100,000-epoch page: {len(response.content) / 1024:.0f} KiB")
    assert len(response.content) < 500_000
