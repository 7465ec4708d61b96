"""Teams that run themselves: the team page, invitations by single-use link,
roles, removal (tokens and sockets stop at once), leaving, the last admin,
switching the current team; the same operations through the API; and the
one access rule walked over the team page and the API."""

import re

import pytest
from asgiref.sync import async_to_sync
from asgiref.testing import ApplicationCommunicator
from django.core import mail
from django.test import Client

from studio.accounts.models import ApiToken, Invitation, Membership, Team
from studio.accounts.services import api_token_create, default_team, user_create
from studio.accounts.teams import invitation_create
from studio.audit.models import AuditEntry
from studio.jobs.models import Job
from studio.jobs.state import job_create
from studio.live.consumers import JobEventsConsumer
from studio.notifications.models import Notification


@pytest.fixture
def people(db):
    team = default_team()
    return team, {
        "admin": user_create(username="ada", password="pw-ada-123", team=team, role=Membership.Role.ADMIN),
        "member": user_create(username="tim", password="pw-tim-123", team=team),
        "viewer": user_create(username="vic", password="pw-vic-123", team=team, role=Membership.Role.VIEWER),
        "other team": user_create(username="mallory", password="pw-mallory-123", role=Membership.Role.ADMIN,
                                  team=Team.objects.create(name="Rivals", slug="rivals")),
    }


def logged_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def invite_link(client, team, **fields) -> str:
    page = client.post(f"/teams/{team.slug}/invite/", {"role": "member", "days": 7, **fields}).content.decode()
    return re.search(r"<code>http://testserver(/join/[^<]+)</code>", page).group(1)


def test_an_invitation_link_lets_a_new_person_make_an_account_and_join_once(people,
                                                                           django_capture_on_commit_callbacks):
    team, users = people
    job = job_create(kind="train", team=team, owner=users["member"], config={}, name="tim's run")
    with django_capture_on_commit_callbacks(execute=True):  # the mail goes after the commit
        link = invite_link(logged_in(users["admin"]), team, email="newcomer@example.com", role="viewer")
    assert "/join/inv_" in mail.outbox[-1].body and "as viewer" in mail.outbox[-1].subject
    assert Invitation.objects.get().hashed_token not in link  # only a hash is stored

    newcomer = Client()
    page = newcomer.get(link)
    assert page.status_code == 200 and "Join Default team" in page.content.decode()
    weak = newcomer.post(link, {"username": "nina", "password": "123", "email": "newcomer@example.com"})
    assert weak.status_code == 400 and "too short" in weak.content.decode()
    joined = newcomer.post(link, {"username": "nina", "password": "a-long-enough-pass", "email": "n@example.com"})
    assert joined.status_code == 302 and joined.url == f"/teams/{team.slug}/"
    assert Membership.objects.get(user__username="nina").role == "viewer"
    assert f"/jobs/{job.pk}/" in newcomer.get("/").content.decode()  # sees the team's jobs

    again = Client().get(link)
    assert again.status_code == 410 and "used up" in again.content.decode()
    assert AuditEntry.objects.filter(action="member.added", target_label="nina").exists()


def test_a_signed_in_user_of_another_team_joins_and_it_becomes_their_current_team(people):
    team, users = people
    link = invite_link(logged_in(users["admin"]), team)
    rival = logged_in(users["other team"])
    assert rival.post(link).status_code == 302
    assert set(Membership.objects.filter(user=users["other team"]).values_list("team__slug", flat=True)) == {
        "rivals", "default"}
    header = rival.get("/").content.decode()
    assert 'aria-label="current team"' in header and f'<option value="{team.pk}" selected>' in header
    rival.post("/teams/switch/", {"team": Team.objects.get(slug="rivals").pk, "next": "https://evil.example/"})
    assert 'selected>Rivals</option>' in rival.get("/").content.decode()


def test_an_expired_or_revoked_link_is_refused(people):
    team, users = people
    invitation, raw = invitation_create(user=users["admin"], team=team, days=1)
    logged_in(users["admin"]).post(f"/teams/{team.slug}/invitations/{invitation.pk}/revoke/")
    assert Client().get(f"/join/{raw}/").status_code == 410
    expiring, raw = invitation_create(user=users["admin"], team=team, days=1)
    Invitation.objects.filter(pk=expiring.pk).update(expires_at=expiring.created_at)
    assert Client().get(f"/join/{raw}/").status_code == 410


def test_a_role_change_holds_from_the_next_request_and_the_person_is_told(people):
    team, users = people
    member = logged_in(users["member"])
    assert member.get("/datasets/").status_code == 200
    response = logged_in(users["admin"]).post(f"/teams/{team.slug}/members/{users['member'].pk}/role/",
                                              {"role": "viewer"})
    assert response.status_code == 302
    assert "view-only" in member.post("/models/", {"add": "hub", "repo_id": "a/b"}).content.decode()
    assert Notification.objects.get(user=users["member"]).message == "ada made you viewer in Default team"
    entry = AuditEntry.objects.get(action="member.role_changed")
    assert entry.detail == {"from": "member", "to": "viewer"}


def _socket_closes_on_removal(user, job, remove) -> dict:
    async def run():
        scope = {"type": "websocket", "path": f"/ws/jobs/{job.pk}/", "headers": [], "subprotocols": [],
                 "user": user, "url_route": {"args": (), "kwargs": {"job_id": job.pk}}}
        communicator = ApplicationCommunicator(JobEventsConsumer.as_asgi(), scope)
        await communicator.send_input({"type": "websocket.connect"})
        assert (await communicator.receive_output(timeout=5))["type"] == "websocket.accept"
        from channels.db import database_sync_to_async

        await database_sync_to_async(remove)()
        return await communicator.receive_output(timeout=5)

    return async_to_sync(run)()


@pytest.mark.django_db(transaction=True)  # the consumer reads the database from another thread
def test_a_removed_member_loses_tokens_and_open_sockets_at_once_but_their_jobs_go_on(people):
    team, users = people
    member = users["member"]
    job = job_create(kind="train", team=team, owner=member, config={}, name="tim's run")
    _, tied = api_token_create(user=member, name="ci", team=team)
    _, untied = api_token_create(user=member, name="laptop")

    def remove():
        logged_in(users["admin"]).post(f"/teams/{team.slug}/members/{member.pk}/remove/")

    closed = _socket_closes_on_removal(member, job, remove)
    assert closed == {"type": "websocket.close", "code": 4404}
    assert ApiToken.objects.get(name="ci").revoked_at is not None
    for raw in (tied, untied):
        answer = Client(HTTP_AUTHORIZATION=f"Bearer {raw}").get(f"/api/v1/fine_tuning/jobs/{job.pk}")
        assert answer.status_code in (401, 403, 404)
    job.refresh_from_db()
    assert job.team == team and job.owner == member and job.status == Job.Status.QUEUED
    assert "removed you from Default team" in Notification.objects.get(user=member).message


def test_the_last_admin_cannot_leave_or_step_down_but_others_can_leave(people):
    team, users = people
    admin = logged_in(users["admin"])
    refused = admin.post(f"/teams/{team.slug}/members/{users['admin'].pk}/remove/")
    assert refused.status_code == 409 and "last admin cannot leave" in refused.content.decode()
    refused = admin.post(f"/teams/{team.slug}/members/{users['admin'].pk}/role/", {"role": "member"})
    assert refused.status_code == 409
    assert logged_in(users["viewer"]).post(f"/teams/{team.slug}/members/{users['viewer'].pk}/remove/").url == "/"
    assert not Membership.objects.filter(user=users["viewer"]).exists()
    assert AuditEntry.objects.filter(action="member.left", target_label="vic").exists()


ALLOWED, REFUSED, HIDDEN = "allowed", "refused", "hidden"
# What each role may do on the team page and through the API.
TEAM_RULE = {"view": {"admin": ALLOWED, "member": ALLOWED, "viewer": ALLOWED, "other team": HIDDEN},
             "invite": {"admin": ALLOWED, "member": REFUSED, "viewer": REFUSED, "other team": HIDDEN},
             "role": {"admin": ALLOWED, "member": REFUSED, "viewer": REFUSED, "other team": HIDDEN},
             "remove": {"admin": ALLOWED, "member": REFUSED, "viewer": REFUSED, "other team": HIDDEN}}


def _outcome(status: int) -> str:
    return {403: REFUSED, 404: HIDDEN}.get(status, ALLOWED if status < 400 else f"status {status}")


def on_page(client, team, target, action) -> int:
    return {"view": lambda: client.get(f"/teams/{team.slug}/"),
            "invite": lambda: client.post(f"/teams/{team.slug}/invite/", {"role": "member", "days": 3}),
            "role": lambda: client.post(f"/teams/{team.slug}/members/{target.pk}/role/", {"role": "viewer"}),
            "remove": lambda: client.post(f"/teams/{team.slug}/members/{target.pk}/remove/")}[action]().status_code


def through_api(client, team, target, action) -> int:
    base = f"/api/v1/teams/{team.slug}"
    return {"view": lambda: client.get(f"{base}/members"),
            "invite": lambda: client.post(f"{base}/invitations", {"role": "member"}, content_type="application/json"),
            "role": lambda: client.patch(f"{base}/members/{target.pk}", {"role": "viewer"},
                                         content_type="application/json"),
            "remove": lambda: client.delete(f"{base}/members/{target.pk}")}[action]().status_code


@pytest.mark.parametrize("surface", ["page", "api"])
@pytest.mark.parametrize("action", list(TEAM_RULE))
@pytest.mark.parametrize("role", ["admin", "member", "viewer", "other team"])
def test_the_team_page_and_api_follow_the_one_rule(people, surface, action, role):
    team, users = people
    target = user_create(username="target", password="pw-target-123", team=team)
    if surface == "page":
        status = on_page(logged_in(users[role]), team, target, action)
    else:
        raw = api_token_create(user=users[role], name="t")[1]
        status = through_api(Client(HTTP_AUTHORIZATION=f"Bearer {raw}"), team, target, action)
    assert _outcome(status) == TEAM_RULE[action][role], f"{surface}: {role} {action} → {status}"


def test_a_script_provisions_a_team_through_the_api(people):
    team, users = people
    api = Client(HTTP_AUTHORIZATION="Bearer " + api_token_create(user=users["admin"], name="ops")[1])
    created = api.post(f"/api/v1/teams/{team.slug}/invitations", {"role": "admin", "days": 2},
                       content_type="application/json")
    assert created.status_code == 201 and created.json()["url"].startswith("http://testserver/join/inv_")
    bad = api.post(f"/api/v1/teams/{team.slug}/invitations", {"email": "not an address"},
                   content_type="application/json")
    assert bad.status_code == 400 and bad.json()["error"]["field"] == "email"
    members = api.get(f"/api/v1/teams/{team.slug}/members").json()["data"]
    assert {m["username"]: m["role"] for m in members} == {"ada": "admin", "tim": "member", "vic": "viewer"}
    changed = api.patch(f"/api/v1/teams/{team.slug}/members/{users['member'].pk}", {"role": "admin"},
                        content_type="application/json")
    assert changed.json()["role"] == "admin"
    assert api.get("/api/v1/teams/rivals/members").status_code == 404
