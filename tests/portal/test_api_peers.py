"""Peers over the API: staff read them, changing them needs the model
permissions, and the echo action C-ECHOes a real runscp."""

import pytest
from django.contrib.auth.models import Permission

from dicomnodes.models import Peer
from tests.support.processes import free_port

ORTHANC = {"name": "Orthanc", "ae_title": "ORTHANC", "host": "127.0.0.1", "port": 4242}


@pytest.fixture
def a_peer(db):
    return Peer.objects.create(**ORTHANC)


def test_an_admin_creates_a_peer(an_api_admin, db):
    response = an_api_admin.post("/api/peers/", {**ORTHANC, "may_query": True}, format="json")

    assert response.status_code == 201, response.json()
    peer = Peer.objects.get()
    assert (peer.ae_title, peer.port, peer.may_query) == ("ORTHANC", 4242, True)
    assert response.json()["id"] == peer.pk


def test_a_peer_created_without_check_host_checks_its_host_unless_told_not_to(an_api_admin, db):
    assert an_api_admin.post("/api/peers/", ORTHANC, format="json").json()["check_host"] is True
    other = {**ORTHANC, "host": "10.0.0.2", "check_host": False}
    assert an_api_admin.post("/api/peers/", other, format="json").json()["check_host"] is False

    assert dict(Peer.objects.values_list("host", "check_host")) == {"127.0.0.1": True, "10.0.0.2": False}


def test_a_peer_with_a_bad_ae_title_or_host_is_refused_with_the_reason(an_api_admin, db):
    response = an_api_admin.post("/api/peers/", {**ORTHANC, "ae_title": "TOO LONG FOR AN AE TITLE"}, format="json")
    assert response.status_code == 400
    assert "ae_title" in response.json()

    response = an_api_admin.post("/api/peers/", {**ORTHANC, "host": "bad host"}, format="json")
    assert response.status_code == 400
    assert response.json()["host"] == ["A host name has no spaces."]
    assert not Peer.objects.exists()


def test_the_same_ae_host_and_port_twice_is_refused(an_api_admin, a_peer):
    response = an_api_admin.post("/api/peers/", {**ORTHANC, "name": "again"}, format="json")
    assert response.status_code == 400
    assert Peer.objects.count() == 1


def test_an_admin_changes_and_deletes_a_peer(an_api_admin, a_peer):
    response = an_api_admin.patch(f"/api/peers/{a_peer.pk}/", {"port": 4243}, format="json")
    assert response.status_code == 200, response.json()
    a_peer.refresh_from_db()
    assert a_peer.port == 4243

    assert an_api_admin.delete(f"/api/peers/{a_peer.pk}/").status_code == 204
    assert not Peer.objects.exists()


def test_a_reader_may_read_but_not_change_peers(a_reader, a_peer):
    assert a_reader.get("/api/peers/").json()["count"] == 1
    assert a_reader.post("/api/peers/", {**ORTHANC, "port": 1}, format="json").status_code == 403
    assert a_reader.patch(f"/api/peers/{a_peer.pk}/", {"port": 1}, format="json").status_code == 403
    assert a_reader.delete(f"/api/peers/{a_peer.pk}/").status_code == 403
    assert a_reader.post(f"/api/peers/{a_peer.pk}/echo/").status_code == 403
    a_peer.refresh_from_db()
    assert a_peer.port == 4242


def test_the_change_peer_permission_allows_editing_and_echo_but_not_deleting(django_user_model, a_peer):
    from rest_framework.test import APIClient

    user = django_user_model.objects.create_user("operator", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="change_peer"))
    client = APIClient()
    client.force_login(user)

    assert client.patch(f"/api/peers/{a_peer.pk}/", {"name": "PACS 2"}, format="json").status_code == 200
    assert client.delete(f"/api/peers/{a_peer.pk}/").status_code == 403
    a_peer.port = free_port()  # nothing listens there
    a_peer.save()
    assert client.post(f"/api/peers/{a_peer.pk}/echo/").status_code == 200


def test_anonymous_and_non_staff_clients_cannot_echo_or_write(anonymous, a_clerk, a_peer):
    assert anonymous.post(f"/api/peers/{a_peer.pk}/echo/").status_code == 401
    assert a_clerk.post(f"/api/peers/{a_peer.pk}/echo/").status_code == 403
    assert anonymous.post("/api/peers/", ORTHANC, format="json").status_code == 401
    assert a_clerk.delete(f"/api/peers/{a_peer.pk}/").status_code == 403


def test_echo_reaches_our_own_runscp(an_api_admin, shared_scp):
    peer = Peer.objects.create(name="ourselves", ae_title="PACS", host="127.0.0.1", port=shared_scp.port)

    response = an_api_admin.post(f"/api/peers/{peer.pk}/echo/")

    assert response.status_code == 200
    body = response.json()
    assert body["ok"] is True
    assert 0 < body["round_trip_ms"] < 5000
    assert body["message"].startswith("echo OK in")


def test_echo_says_why_it_failed(an_api_admin, shared_scp):
    wrong_ae = Peer.objects.create(name="wrong AE", ae_title="NOTPACS", host="127.0.0.1", port=shared_scp.port)
    nobody = Peer.objects.create(name="nobody", ae_title="PACS", host="127.0.0.1", port=free_port())

    refused = an_api_admin.post(f"/api/peers/{wrong_ae.pk}/echo/").json()
    closed = an_api_admin.post(f"/api/peers/{nobody.pk}/echo/").json()

    assert (refused["ok"], refused["round_trip_ms"]) == (False, None)
    assert "NOTPACS not recognised" in refused["message"]
    assert closed["ok"] is False
    assert "connection refused" in closed["message"]
