"""The admin's peer list: Echo per row, "Echo selected", who may do it.

Personas: an admin (a superuser), a viewer (staff who may only view peers).
"""

import re
from html.parser import HTMLParser

import pytest
from django.contrib import messages
from django.contrib.auth.models import Permission
from django.test import Client
from django.urls import reverse

from dicomnodes.models import Peer
from tests.support.processes import free_port

# WhiteNoise warns that STATIC_ROOT does not exist: tests run without collectstatic.
pytestmark = pytest.mark.filterwarnings("ignore:No directory at")

CHANGELIST = reverse("admin:dicomnodes_peer_changelist")
ADD = reverse("admin:dicomnodes_peer_add")


def echo_url(peer):
    return reverse("admin:dicomnodes_peer_echo", args=[peer.pk])


@pytest.fixture
def a_peer_viewer(client, django_user_model):
    user = django_user_model.objects.create_user("viewer", "", None, is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_peer"))
    client.force_login(user)
    return client


@pytest.fixture
def peer_at_scp(shared_scp):
    return Peer.objects.create(name="Our runscp", ae_title=shared_scp.ae_title, host="127.0.0.1", port=shared_scp.port)


@pytest.fixture
def dead_peer(db):
    return Peer.objects.create(name="Switched off", ae_title="OLDPACS", host="127.0.0.1", port=free_port())


def reported(response):
    """(level, text) of each message the admin shows after the redirect."""
    return [(m.level, m.message) for m in messages.get_messages(response.wsgi_request)]


class ChangelistForm(HTMLParser):
    """The changelist form's hidden fields and the Echo buttons inside it."""

    def __init__(self, html):
        super().__init__()
        self.inside = False
        self.hidden = {}
        self.echo_actions = []
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "form" and attrs.get("id") == "changelist-form":
            self.inside = True
        elif self.inside and tag == "input" and attrs.get("type") == "hidden":
            self.hidden[attrs["name"]] = attrs.get("value", "")
        elif self.inside and tag == "button" and "formaction" in attrs:
            self.echo_actions.append((attrs["formaction"], attrs.get("formmethod")))

    def handle_endtag(self, tag):
        if tag == "form":
            self.inside = False


def test_the_list_shows_an_echo_button_in_every_row(an_admin, dead_peer):
    other = Peer.objects.create(name="Workstation", ae_title="WS1", host="10.0.0.5", port=104)
    form = ChangelistForm(an_admin.get(CHANGELIST).content.decode())
    assert sorted(form.echo_actions) == sorted([(echo_url(dead_peer), "post"), (echo_url(other), "post")])


def test_the_echo_button_sends_the_lists_csrf_token(dead_peer, django_user_model):
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(django_user_model.objects.create_superuser("admin", "", None))
    form = ChangelistForm(browser.get(CHANGELIST).content.decode())
    [(action, _)] = form.echo_actions
    assert browser.post(action, {}).status_code == 403, "no token, no echo"
    response = browser.post(action, form.hidden)
    assert response.status_code == 302
    assert response["Location"] == CHANGELIST


def test_echo_of_a_peer_that_answers_reports_success_with_the_round_trip_time(an_admin, peer_at_scp):
    response = an_admin.post(echo_url(peer_at_scp), follow=True)
    [(level, text)] = reported(response)
    assert level == messages.SUCCESS
    assert re.fullmatch(rf"Our runscp \(PACS@127\.0\.0\.1:{peer_at_scp.port}\): echo OK in \d+\.\d ms", text), text
    assert text in response.content.decode()


def test_echo_of_a_peer_on_a_dead_port_reports_the_error(an_admin, dead_peer):
    response = an_admin.post(echo_url(dead_peer), follow=True)
    [(level, text)] = reported(response)
    assert level == messages.ERROR
    assert text == (
        f"Switched off (OLDPACS@127.0.0.1:{dead_peer.port}): "
        f"connection refused: nothing listens on 127.0.0.1:{dead_peer.port}"
    )


def test_echo_goes_back_to_the_filtered_list_it_came_from(an_admin, dead_peer):
    came_from = f"http://testserver{CHANGELIST}?may_store__exact=1"
    response = an_admin.post(echo_url(dead_peer), headers={"referer": came_from})
    assert response["Location"] == came_from


def test_echo_selected_reports_every_selected_peer(an_admin, peer_at_scp, dead_peer):
    response = an_admin.post(
        CHANGELIST,
        {"action": "echo_selected", "_selected_action": [peer_at_scp.pk, dead_peer.pk]},
        follow=True,
    )
    report = {text.split("): ")[0] + ")": level for level, text in reported(response)}
    assert report == {
        f"Our runscp (PACS@127.0.0.1:{peer_at_scp.port})": messages.SUCCESS,
        f"Switched off (OLDPACS@127.0.0.1:{dead_peer.port})": messages.ERROR,
    }


def test_echo_needs_a_post(an_admin, dead_peer):
    assert an_admin.get(echo_url(dead_peer)).status_code == 405


def test_a_viewer_may_not_echo(a_peer_viewer, dead_peer):
    assert a_peer_viewer.post(echo_url(dead_peer)).status_code == 403


def test_a_viewer_sees_the_list_without_echo_buttons_or_action(a_peer_viewer, dead_peer):
    response = a_peer_viewer.get(CHANGELIST)
    assert response.status_code == 200
    assert ChangelistForm(response.content.decode()).echo_actions == []
    assert "echo_selected" not in response.content.decode()


def test_a_viewer_may_not_change_or_delete_a_peer(a_peer_viewer, dead_peer):
    change = reverse("admin:dicomnodes_peer_change", args=[dead_peer.pk])
    delete = reverse("admin:dicomnodes_peer_delete", args=[dead_peer.pk])
    assert a_peer_viewer.post(change, {"name": "Renamed", "ae_title": "X", "host": "h", "port": 1}).status_code == 403
    assert a_peer_viewer.post(delete, {"post": "yes"}).status_code == 403
    assert Peer.objects.get(pk=dead_peer.pk).name == "Switched off"


def test_an_admin_may_delete_a_peer(an_admin, dead_peer):
    response = an_admin.post(reverse("admin:dicomnodes_peer_delete", args=[dead_peer.pk]), {"post": "yes"})
    assert response.status_code == 302
    assert not Peer.objects.exists()


def peer_form(**values):
    data = {"name": "CT", "ae_title": "CT1", "host": "10.0.0.1", "port": 104, "may_store": "on"}
    data.update(values)
    return data


def test_two_peers_may_share_an_ae_title_on_different_hosts(an_admin):
    assert an_admin.post(ADD, peer_form(name="CT room 1", host="10.0.0.1")).status_code == 302
    assert an_admin.post(ADD, peer_form(name="CT room 2", host="10.0.0.2")).status_code == 302
    assert sorted(Peer.objects.values_list("ae_title", "host")) == [("CT1", "10.0.0.1"), ("CT1", "10.0.0.2")]


def test_the_same_ae_title_host_and_port_twice_is_refused(an_admin):
    an_admin.post(ADD, peer_form(name="CT room 1"))
    response = an_admin.post(ADD, peer_form(name="CT room 1 again"))
    assert response.status_code == 200
    assert "already exists" in str(response.context["adminform"].form.errors)
    assert Peer.objects.count() == 1


def test_the_add_form_offers_check_host_ticked_and_saves_what_was_posted(an_admin):
    page = an_admin.get(ADD).content.decode()
    assert re.search(r'<input[^>]*name="check_host"[^>]*checked', page), "ticked for a new peer"

    an_admin.post(ADD, peer_form(name="as offered", check_host="on"))
    an_admin.post(ADD, peer_form(name="unticked", host="10.0.0.2"))  # the browser omits an unticked box

    assert dict(Peer.objects.values_list("name", "check_host")) == {"as offered": True, "unticked": False}
