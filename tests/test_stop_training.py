import pytest

pytestmark = pytest.mark.django_db


def test_it_asks_a_running_session_to_stop(alice_client, make_session):
    session = make_session()
    session.mark_running("t")
    response = alice_client.post(f"/sessions/{session.pk}/stop/")
    assert response.status_code == 302 and response["Location"] == "/?tab=training"
    session.refresh_from_db()
    assert session.status == "stopping"


def test_it_returns_to_the_page_it_came_from(alice_client, make_session):
    session = make_session()
    response = alice_client.post(
        f"/sessions/{session.pk}/stop/", {"next": f"/sessions/{session.pk}/"}
    )
    assert response["Location"] == f"/sessions/{session.pk}/"
    session.refresh_from_db()
    assert session.status == "stopped"


def test_it_never_redirects_off_site(alice_client, make_session):
    session = make_session()
    response = alice_client.post(
        f"/sessions/{session.pk}/stop/", {"next": "//evil.example/"}
    )
    assert response["Location"] == "/?tab=training"


def test_a_finished_session_gets_a_message(alice_client, make_session):
    session = make_session()
    session.mark_running("t")
    session.mark_completed({})
    response = alice_client.post(f"/sessions/{session.pk}/stop/", follow=True)
    assert "has already finished (completed)" in response.content.decode()


def test_it_hides_other_users_sessions(client, bob, make_session):
    session = make_session()
    client.force_login(bob)
    assert client.post(f"/sessions/{session.pk}/stop/").status_code == 404
    session.refresh_from_db()
    assert session.status == "queued"


def test_it_rejects_get(alice_client, make_session):
    assert alice_client.get(f"/sessions/{make_session().pk}/stop/").status_code == 405
