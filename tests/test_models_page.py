import json

import pytest

from sessions.models import EpochMetric, TrainingSession

pytestmark = pytest.mark.django_db


def _page_data(html: str) -> dict:
    return json.loads(
        html.split('id="page-data" type="application/json">')[1].split("</script>")[0]
    )


def _history_ids(html: str) -> list[int]:
    body = html.split('id="history-rows"')[1].split("</tbody>")[0]
    return [int(part.split('"')[0]) for part in body.split('<tr data-session="')[1:]]


def test_it_requires_login(client):
    response = client.get("/")
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")


def test_it_shows_the_training_tab_with_the_focus_sessions_history(
    alice_client, make_session
):
    session = make_session(total_epochs=4)
    session.mark_running("t")
    session.record_epoch(1, {"train_loss": 0.7})
    response = alice_client.get("/")
    assert response.status_code == 200
    html = response.content.decode()
    assert "Train Random Forest" in html and "Epoch 1/4" in html
    data = _page_data(html)
    assert data["focus"]["id"] == session.pk
    assert [e["epoch"] for e in data["focusEpochs"]] == [1]


def test_active_sessions_have_a_stop_button_and_diagnostics(alice_client, make_session):
    running = make_session()
    running.mark_running("t")
    TrainingSession.objects.filter(pk=running.pk).update(
        diagnostics=[{"kind": "overfitting", "epoch": 9, "message": "Val loss rose"}]
    )
    stopping = make_session()
    stopping.mark_running("t")
    stopping.request_stop()
    html = alice_client.get("/?tab=training").content.decode()
    active = html.split('id="active-sessions"')[1].split("</ul>")[0]
    assert f'action="/sessions/{running.pk}/stop/"' in active
    assert "overfitting" in active
    assert "stopping..." in active


def test_the_models_tab_lists_model_types_and_parameters(alice_client):
    html = alice_client.get("/?tab=models").content.decode()
    assert (
        "trees_per_epoch" in html
        and "Gradient Boosting" in html
        and "synthetic" in html
        and "validation_split" in html
    )


def test_the_custom_form_has_typed_inputs_for_every_parameter(alice_client):
    html = alice_client.get("/?tab=models").content.decode()
    assert 'enctype="multipart/form-data"' in html
    assert 'name="param.mlp.hidden_layer_sizes"' in html and 'value="64,32"' in html
    assert 'name="param.randomforest.trees_per_epoch"' in html
    assert 'name="param.synthetic.samples"' in html
    assert 'name="param.common.random_state"' in html
    assert 'name="csvFile"' in html and 'name="targetColumn"' in html
    assert '<option value="csv"' in html


def test_it_does_not_show_other_users_sessions(client, bob, make_session):
    make_session(dataset="wine")
    client.force_login(bob)
    html = client.get("/").content.decode()
    assert _history_ids(html) == []
    assert _page_data(html)["focus"] is None


def test_the_history_is_paginated_newest_first(alice_client, make_session):
    sessions = [make_session() for _ in range(25)]
    first_page = alice_client.get("/?tab=training").content.decode()
    newest = [s.pk for s in reversed(sessions)]
    assert _history_ids(first_page) == newest[:20]
    assert "Page 1 of 2" in first_page
    second_page = alice_client.get("/?tab=training&page=2").content.decode()
    assert _history_ids(second_page) == newest[20:]


def test_the_history_filters_by_status_model_and_data_set(alice_client, make_session):
    wine = make_session(dataset="wine", model_type="mlp")
    wine.mark_running("t")
    wine.mark_completed({})
    make_session(dataset="iris")
    ids = _history_ids(
        alice_client.get("/?status=completed&model=mlp&dataset=wine").content.decode()
    )
    assert ids == [wine.pk]
    assert _history_ids(alice_client.get("/?status=failed").content.decode()) == []


def test_the_history_is_searchable_by_name_and_number(alice_client, make_session):
    named = make_session(name="baseline sweep")
    other = make_session()
    assert _history_ids(alice_client.get("/?q=sweep").content.decode()) == [named.pk]
    assert _history_ids(alice_client.get(f"/?q=%23{other.pk}").content.decode()) == [
        other.pk
    ]


def test_bad_filter_values_are_ignored(alice_client, make_session):
    session = make_session()
    response = alice_client.get("/?status=bogus&page=abc")
    assert response.status_code == 200
    assert _history_ids(response.content.decode()) == [session.pk]


def test_a_long_focus_session_is_thinned_in_the_page(alice_client, make_session):
    session = make_session(total_epochs=20_000)
    session.mark_running("t")
    EpochMetric.objects.bulk_create(
        EpochMetric(session=session, epoch=e, train_loss=1 / e, val_loss=2 / e)
        for e in range(1, 20_001)
    )
    data = _page_data(alice_client.get("/").content.decode())
    assert data["downsampled"] is True
    losses = [e for e in data["focusEpochs"] if "train_loss" in e["metrics"]]
    assert 900 <= len(losses) <= 1000


def test_diagnostics_badges_name_the_condition(alice_client, make_session):
    session = make_session()
    session.mark_running("t")
    session.set_diagnostics(
        [{"kind": "plateau", "epoch": 7, "message": "Validation loss has not improved"}]
    )
    html = alice_client.get("/?tab=training").content.decode()
    assert ">plateau</span>" in html
    assert 'title="Validation loss has not improved (from epoch 7)"' in html
