"""POST /api/ml/start-training with an uploaded CSV (multipart/form-data)."""

import json

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from sessions.models import ApiToken, TrainingSession
from tests.test_training import CSV_TEXT

pytestmark = pytest.mark.django_db
URL = "/api/ml/start-training"


@pytest.fixture
def media(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"
    return settings.MEDIA_ROOT


@pytest.fixture
def headers(alice):
    return {"HTTP_AUTHORIZATION": f"Bearer {ApiToken.issue(alice)[1]}"}


def upload(client, headers, content, name="fruit.csv", **fields):
    data = {"modelType": "randomforest", "dataset": "csv", "targetColumn": "kind"}
    data.update(fields)
    if content is not None:
        data["csvFile"] = SimpleUploadedFile(name, content, "text/csv")
    return client.post(URL, data, **headers)


def stored_files(media):
    return [p for p in media.rglob("*") if p.is_file()] if media.exists() else []


def test_it_starts_training_on_an_uploaded_csv(
    client, headers, media, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks() as callbacks:
        response = upload(
            client, headers, CSV_TEXT.encode(), params=json.dumps({"max_depth": 4})
        )
    assert response.status_code == 201, response.json()
    session = response.json()["session"]
    assert session["dataset"] == "csv" and session["targetColumn"] == "kind"
    assert session["csvFile"] == "fruit.csv"
    assert session["params"]["max_depth"] == 4
    assert len(callbacks) == 1
    row = TrainingSession.objects.get(pk=session["id"])
    assert row.data_file.path.startswith(str(media))
    assert open(row.data_file.path).read() == CSV_TEXT


def test_the_stored_file_is_not_served(client, headers, media, alice):
    upload(client, headers, CSV_TEXT.encode())
    name = TrainingSession.objects.get().data_file.name
    client.force_login(alice)
    for prefix in ("/media/", "/", "/static/"):
        assert client.get(prefix + name).status_code == 404


@pytest.mark.parametrize(
    ("content", "fields", "field", "text"),
    [
        (None, {}, "csvFile", "Upload a CSV file"),
        (b"", {}, "csvFile", "csvFile is empty"),
        (CSV_TEXT.encode(), {"targetColumn": ""}, "targetColumn", "Name the column"),
        (
            CSV_TEXT.encode(),
            {"targetColumn": "price"},
            "targetColumn",
            "No column named 'price'; the columns are size, colour, weight, kind",
        ),
        (b"kind,x\n" + "é,1\n".encode("latin-1") * 20, {}, "csvFile", "UTF-8"),
        (b"\x89PNG\r\n\x1a\n\x00\x00", {}, "csvFile", "UTF-8"),
        (b"kind,x\n" + b"a,1\n" * 20, {}, "targetColumn", "only one class"),
        (b"kind,x\n" + b"a,1\nb,2\n" * 3, {}, "csvFile", "at least 10 are needed"),
        (b"kind,x\n" + b"a,1\nb,2,3\n" * 6, {}, "csvFile", "Row 3 has 3 fields"),
        (
            b"kind,name\n" + b"".join(b"%d,n%d\n" % (i % 2, i) for i in range(80)),
            {},
            "csvFile",
            "Column 'name' is not numeric and has 80 distinct values",
        ),
        (
            b"kind,x\n" + b"a,1\nb,2\nc,3\nd,4\ne,5\n" * 2,
            {},
            "params.validation_split",
            "holds out 2 of 10 rows, fewer than the 5 classes",
        ),
        (
            CSV_TEXT.encode(),
            {"dataset": "iris"},
            "csvFile",
            'only used with dataset "csv"',
        ),
        (
            CSV_TEXT.encode(),
            {"modelType": "mlp", "params": json.dumps({"solver": "lbfgs"})},
            "params.solver",
            "solver must be one of adam, sgd",
        ),
        (
            CSV_TEXT.encode(),
            {"modelType": "mlp", "params": json.dumps({"momentum": 1.5})},
            "params.momentum",
            "momentum must be at most 0.999",
        ),
    ],
)
def test_it_rejects_a_bad_upload_naming_the_field_and_creates_nothing(
    client, headers, media, content, fields, field, text
):
    response = upload(client, headers, content, **fields)
    assert response.status_code == 400
    assert text in response.json()["fields"][field]
    assert TrainingSession.objects.count() == 0
    assert stored_files(media) == []


def test_it_rejects_a_file_over_the_size_limit(client, headers, media, settings):
    settings.MLTRACK_MAX_UPLOAD_MB = 1
    big = CSV_TEXT.encode() + b"\n" + b"1,red,1.0,apple\n" * 70_000
    response = upload(client, headers, big)
    assert response.status_code == 400
    assert "the limit is 1 MB" in response.json()["fields"]["csvFile"]
    assert TrainingSession.objects.count() == 0 and stored_files(media) == []


def test_a_multipart_body_without_a_boundary_is_refused_with_400(
    client, headers, media
):
    response = client.post(
        URL,
        b'{"modelType": "randomforest", "dataset": "digits"}',
        content_type="multipart/form-data",
        **headers,
    )
    assert response.status_code == 400
    assert "not valid multipart/form-data" in response.json()["error"]
    assert TrainingSession.objects.count() == 0 and stored_files(media) == []
