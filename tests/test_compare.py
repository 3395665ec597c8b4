import json

import pytest

pytestmark = pytest.mark.django_db


def _page_data(html: str) -> dict:
    return json.loads(
        html.split('id="page-data" type="application/json">')[1].split("</script>")[0]
    )


def test_it_requires_login(client):
    assert client.get("/sessions/compare/").status_code == 302


def test_without_sessions_it_offers_a_choice(alice_client, make_session):
    session = make_session()
    response = alice_client.get("/sessions/compare/")
    assert response.status_code == 200
    assert f'<option value="{session.pk}"' in response.content.decode()


def test_it_overlays_sessions_and_highlights_differing_parameters(
    alice_client, make_session
):
    first = make_session(total_epochs=3)
    second = make_session(total_epochs=3, params={**first.params, "max_depth": 4})
    for session in (first, second):
        session.record_epoch(1, {"val_loss": 0.5})
    html = alice_client.get(
        f"/sessions/compare/?ids={first.pk}&ids={second.pk}"
    ).content.decode()
    data = _page_data(html)
    assert [s["session"]["id"] for s in data["sessions"]] == [first.pk, second.pk]
    assert data["sessions"][0]["epochs"][0]["metrics"]["val_loss"] == 0.5
    table = html.split('class="compare-params"')[1].split("</table>")[0]
    differing = [row for row in table.split("<tr") if 'class="differs"' in row]
    assert len(differing) == 1 and "params.max_depth" in differing[0]


def test_it_accepts_comma_separated_ids(alice_client, make_session):
    first, second = make_session(), make_session()
    html = alice_client.get(
        f"/sessions/compare/?ids={first.pk},{second.pk}"
    ).content.decode()
    assert len(_page_data(html)["sessions"]) == 2


def test_it_names_sessions_it_cannot_show(client, bob, make_session):
    hidden = make_session()
    client.force_login(bob)
    response = client.get(f"/sessions/compare/?ids={hidden.pk}&ids=999999")
    assert response.status_code == 400
    assert f"No session #{hidden.pk}, #999999." in response.content.decode()


@pytest.mark.parametrize(
    "ids, message",
    [
        ("abc", "&#x27;abc&#x27; is not a session number."),
        ("1,2,3,4,5,6,7,8,9", "at most 8"),
    ],
)
def test_it_rejects_bad_ids(alice_client, ids, message):
    response = alice_client.get(f"/sessions/compare/?ids={ids}")
    assert response.status_code == 400
    assert message in response.content.decode()
