import json

import pytest

from sessions.models import TrainingEvent, TrainingSession

pytestmark = pytest.mark.django_db
URL = "/api/ml/runs"


def post(client, body, auth):
    data = body if isinstance(body, str | bytes) else json.dumps(body)
    return client.post(URL, data=data, content_type="application/json", **auth)


def test_it_starts_an_external_run(client, auth, alice):
    response = post(
        client,
        {
            "name": "resnet",
            "params": {"lr": 0.001, "layers": [64, 32]},
            "totalEpochs": 50,
        },
        auth,
    )
    assert response.status_code == 201
    body = response.json()
    assert body["stopRequested"] is False
    session = TrainingSession.objects.get(pk=body["session"]["id"])
    assert (session.owner, session.model_type, session.status) == (
        alice,
        "external",
        "running",
    )
    assert session.name == "resnet" and session.total_epochs == 50
    assert session.params == {"lr": 0.001, "layers": [64, 32]}
    assert session.started_at and session.heartbeat_at  # the lost check sees it


def test_it_announces_the_run_at_once(client, auth):
    session_id = post(client, {"name": "x"}, auth).json()["session"]["id"]
    event = TrainingEvent.objects.get(session_id=session_id)
    assert event.type == "training_started"
    assert event.data["session"]["status"] == "running"


def test_everything_is_optional(client, auth):
    response = post(client, "", auth)
    assert response.status_code == 201
    session = response.json()["session"]
    assert session["totalEpochs"] is None and session["dataset"] == "custom"


def test_it_accepts_an_integral_float_for_total_epochs(client, auth):
    assert (
        post(client, {"totalEpochs": 20.0}, auth).json()["session"]["totalEpochs"] == 20
    )


@pytest.mark.parametrize(
    "body, field, text",
    [
        ({"name": 5}, "name", "must be a string"),
        ({"name": "x" * 201}, "name", "at most 200"),
        ({"dataset": "d" * 33}, "dataset", "at most 32"),
        ({"params": [1, 2]}, "params", "JSON object"),
        ({"params": "lr=1"}, "params", "JSON object"),
        ({"totalEpochs": 0}, "totalEpochs", "between 1 and"),
        ({"totalEpochs": -3}, "totalEpochs", "between 1 and"),
        ({"totalEpochs": 10**9}, "totalEpochs", "between 1 and"),
        ({"totalEpochs": "ten"}, "totalEpochs", "integer"),
        ({"totalEpochs": 2.5}, "totalEpochs", "integer"),
        ({"totalEpochs": True}, "totalEpochs", "integer"),
    ],
)
def test_it_rejects_bad_input_naming_the_field(client, auth, body, field, text):
    response = post(client, body, auth)
    assert response.status_code == 400
    assert text in response.json()["fields"][field]
    assert TrainingSession.objects.count() == 0


def test_it_rejects_nan_in_params(client, auth):
    response = post(client, '{"params": {"lr": NaN}}', auth)
    assert response.status_code == 400
    assert "params.lr" in response.json()["fields"]


@pytest.mark.parametrize("body", ["{not json", "[1, 2]", '"text"'])
def test_it_rejects_a_body_that_is_not_a_json_object(client, auth, body):
    response = post(client, body, auth)
    assert response.status_code == 400
    assert "JSON" in response.json()["error"]
    assert TrainingSession.objects.count() == 0


def test_runs_show_on_the_models_page(alice_client):
    response = alice_client.post(
        URL, data={"name": "notebook"}, content_type="application/json"
    )
    session_id = response.json()["session"]["id"]
    page = alice_client.get("/?tab=training").content.decode()
    assert f"#{session_id} external" in page


@pytest.mark.parametrize(
    "raw, field",
    [
        ('{"name": "run", "params": {"note": "a\\u0000b"}}', "params.note"),
        ('{"name": "x\\ud800y"}', "name"),
        ('{"name": "run", "params": {"layers": [1, "\\u0000"]}}', "params.layers[1]"),
        # The same without a \\u escape in the bytes: a surrogate encoded in UTF-8
        # (Python's parser lets it through), and an escape in a UTF-16 body.
        (b'{"name": "x\xed\xa0\x80y"}', "name"),
        ('{"params": {"note": "a\\u0000b"}}'.encode("utf-16-le"), "params.note"),
    ],
)
def test_it_rejects_text_the_database_cannot_store(client, auth, raw, field):
    # Found by the schemathesis run: PostgreSQL refused these after validation.
    response = post(client, raw, auth)
    assert response.status_code == 400
    assert field in response.json()["fields"]
    assert TrainingSession.objects.count() == 0
