"""An invitation sent to an address that is already an account's verified
address waits for that user: a notification, the header's Invitations link,
accept or decline on their Invitations page with no link. An address merely
typed on a form matches nothing (anyone could type it); joining through a
link sent to one's own address verifies it."""

import re

import pytest
from django.test import Client

from studio.accounts.models import Membership, Team, VerifiedEmail
from studio.accounts.services import api_token_create, default_team, user_create
from studio.audit.models import AuditEntry
from studio.notifications.models import Notification


@pytest.fixture
def people(db):
    team = default_team()
    ada = user_create(username="ada", password="pw-ada-12345", team=team, role=Membership.Role.ADMIN)
    other = Team.objects.create(name="Vision", slug="vision")
    nina = user_create(username="nina", password="pw-nina-12345", team=other)
    nina.email = "Nina@Example.com"
    nina.save()
    VerifiedEmail.objects.create(user=nina, email="nina@example.com", how=VerifiedEmail.How.ADMIN)
    return team, ada, nina


def logged_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def invite(admin, team, email, role="member") -> str:
    page = logged_in(admin).post(f"/teams/{team.slug}/invite/", {"role": role, "days": 7, "email": email})
    return re.search(r"<code>http://testserver(/join/[^<]+)</code>", page.content.decode()).group(1)


def test_an_invitation_to_a_verified_address_waits_on_the_users_page(people):
    team, ada, nina = people
    invite(ada, team, "NINA@example.com", role="viewer")
    assert Notification.objects.filter(user=nina, message__contains="invites you to Default team as viewer").exists()
    client = logged_in(nina)
    assert "Invitations (1)" in client.get("/datasets/").content.decode()
    page = client.get("/invitations/").content.decode()
    invitation_id = re.search(r"/invitations/(\d+)/accept/", page).group(1)
    joined = client.post(f"/invitations/{invitation_id}/accept/")
    assert joined.status_code == 302 and joined.url == f"/teams/{team.slug}/"
    assert Membership.objects.get(user=nina, team=team).role == "viewer"
    assert AuditEntry.objects.filter(action="member.added", team=team, username="nina").exists()
    assert "Invitations (" not in client.get("/datasets/").content.decode()  # nothing waits any more
    again = client.post(f"/invitations/{invitation_id}/accept/")
    assert again.status_code == 410 and "used up" in again.content.decode()


def test_declining_stops_the_link_too(people):
    team, ada, nina = people
    link = invite(ada, team, "nina@example.com")
    client = logged_in(nina)
    invitation_id = re.search(r"/invitations/(\d+)/accept/", client.get("/invitations/").content.decode()).group(1)
    assert client.post(f"/invitations/{invitation_id}/decline/").status_code == 302
    assert AuditEntry.objects.get(action="invitation.revoked").detail == {"declined": True}
    assert Client().get(link).status_code == 410


def test_nobody_else_sees_or_accepts_it(people):
    team, ada, nina = people
    invite(ada, team, "nina@example.com")
    invitation_id = team.invitations.get().pk
    typed = user_create(username="eve", password="pw-eve-12345", team=Team.objects.create(name="X", slug="x"))
    typed.email = "nina@example.com"  # typed on a form, never verified
    typed.save()
    client = logged_in(typed)
    assert "nina" not in client.get("/invitations/").content.decode().lower()
    assert client.post(f"/invitations/{invitation_id}/accept/").status_code == 404
    assert not Membership.objects.filter(user=typed, team=team).exists()
    assert not Notification.objects.filter(user=typed).exists()


def test_joining_through_a_link_sent_to_ones_own_address_verifies_it(people):
    team, ada, _ = people
    link = invite(ada, team, "newcomer@example.com")
    Client().post(link, {"username": "newcomer", "password": "a-long-enough-pass", "email": "newcomer@example.com"})
    assert VerifiedEmail.objects.get(email="newcomer@example.com").how == "invitation"
    other_link = invite(ada, team, "someone@example.com")
    Client().post(other_link, {"username": "claims", "password": "a-long-enough-pass", "email": "ceo@example.com"})
    assert not VerifiedEmail.objects.filter(email="ceo@example.com").exists()  # a typed address stays unverified


def test_the_api_lists_and_answers_them(people):
    team, ada, nina = people
    invite(ada, team, "nina@example.com", role="viewer")
    tied = Client(HTTP_AUTHORIZATION="Bearer " + api_token_create(user=nina, name="t", team=nina_team(nina))[1])
    listed = tied.get("/api/v1/invitations").json()["data"]
    assert [(i["team"], i["role"]) for i in listed] == [(team.slug, "viewer")]
    refused = tied.post(f"/api/v1/invitations/{listed[0]['id']}/accept")
    assert refused.status_code == 403 and "tied to one team" in refused.json()["error"]["message"]
    script = Client(HTTP_AUTHORIZATION="Bearer " + api_token_create(user=nina, name="all")[1])
    joined = script.post(f"/api/v1/invitations/{listed[0]['id']}/accept")
    assert joined.status_code == 200 and joined.json()["team"] == team.slug and joined.json()["role"] == "viewer"
    assert script.get("/api/v1/invitations").json()["data"] == []
    mallory = user_create(username="mallory", password="pw-mallory-123", team=Team.objects.create(name="R", slug="r"))
    other = Client(HTTP_AUTHORIZATION="Bearer " + api_token_create(user=mallory, name="m")[1])
    assert other.post(f"/api/v1/invitations/{listed[0]['id']}/decline").status_code == 404


def nina_team(nina):
    return Membership.objects.filter(user=nina).select_related("team").first().team
