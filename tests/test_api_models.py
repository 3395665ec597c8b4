import pytest

from sessions.models import ApiToken

pytestmark = pytest.mark.django_db
URL = "/api/ml/models"


def by_key(body):
    return {m["key"]: m for m in body["modelTypes"]}


def test_it_describes_model_types_parameters_and_data_sets(alice_client):
    body = alice_client.get(URL).json()
    forest = by_key(body)["randomforest"]
    trees = next(p for p in forest["params"] if p["name"] == "trees_per_epoch")
    assert (trees["kind"], trees["minimum"], trees["maximum"]) == ("int", 1, 500)
    assert {d["key"] for d in body["datasets"]} >= {"iris", "digits", "synthetic"}
    assert body["commonParams"]


def test_it_gives_each_model_types_latest_status(alice_client, make_session):
    old = make_session(model_type="mlp")
    old.mark_failed("x")
    make_session(model_type="mlp")  # newer, queued
    forest = make_session()
    forest.mark_running("t")
    models = by_key(alice_client.get(URL).json())
    assert models["mlp"]["status"] == "queued"
    assert models["randomforest"]["status"] == "running"
    assert models["randomforest"]["latestSession"]["id"] == forest.pk
    assert models["logistic"]["status"] == "untrained"
    assert models["logistic"]["latestSession"] is None


def test_it_counts_only_the_users_own_sessions(client, bob, make_session):
    make_session()
    raw = ApiToken.issue(bob)[1]
    models = by_key(client.get(URL, HTTP_AUTHORIZATION=f"Bearer {raw}").json())
    assert models["randomforest"]["status"] == "untrained"


def test_it_rejects_post(alice_client):
    assert alice_client.post(URL).status_code == 405
