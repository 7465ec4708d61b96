"""The one access rule (studio.accounts.policy), walked as a table: every
action on a job × every role × every surface that offers it (the job page,
the queue page, the JSON API, the WebSocket). A surface that disagreed with
the table is the bug this file exists for (a member could cancel a
teammate's job from the job page while the API refused it)."""

import pytest
from asgiref.sync import async_to_sync
from asgiref.testing import ApplicationCommunicator
from django.contrib.auth.models import AnonymousUser
from django.test import Client

from studio.accounts.models import Membership, Team
from studio.accounts.services import api_token_create, default_team, user_create
from studio.accounts.teams import invitation_create
from studio.jobs.models import Job
from studio.jobs.state import job_create
from studio.live.consumers import JobEventsConsumer
from tests.oidc_provider import CLIENT_ID, OidcProvider

ALLOWED, REFUSED, HIDDEN, LOGIN = "allowed", "refused", "hidden", "login"
ROLES = ["owner", "teammate", "admin", "viewer", "other team", "anonymous"]
# What each role may do to a job its team's member ("owner") started.
RULE = {
    "view":    {"owner": ALLOWED, "teammate": ALLOWED, "admin": ALLOWED, "viewer": ALLOWED},
    "cancel":  {"owner": ALLOWED, "teammate": REFUSED, "admin": ALLOWED, "viewer": REFUSED},
    "resume":  {"owner": ALLOWED, "teammate": REFUSED, "admin": ALLOWED, "viewer": REFUSED},
    "reorder": {"owner": REFUSED, "teammate": REFUSED, "admin": ALLOWED, "viewer": REFUSED},
    "delete":  {"owner": ALLOWED, "teammate": REFUSED, "admin": ALLOWED, "viewer": REFUSED},
}


def expected(action: str, role: str) -> str:
    return {"other team": HIDDEN, "anonymous": LOGIN}.get(role) or RULE[action][role]


@pytest.fixture
def people(db):
    team = default_team()
    users = {"owner": user_create(username="olive", password="pw-olive-123", team=team),
             "teammate": user_create(username="tim", password="pw-tim-123", team=team),
             "admin": user_create(username="ada", password="pw-ada-123", team=team, role=Membership.Role.ADMIN),
             "viewer": user_create(username="vic", password="pw-vic-123", team=team, role=Membership.Role.VIEWER),
             "other team": user_create(username="mallory", password="pw-mallory-123", role=Membership.Role.ADMIN,
                                       team=Team.objects.create(name="Rivals", slug="rivals"))}
    job = job_create(kind="train", team=team, owner=users["owner"], config={}, name="olive's run")
    return users, job


def page_client(users, role) -> Client:
    client = Client()
    if role != "anonymous":
        client.force_login(users[role])
    return client


def outcome_of_page(response) -> str:
    if response.status_code == 302 and "/accounts/login/" in response.url:
        return LOGIN
    return {403: REFUSED, 404: HIDDEN}.get(response.status_code, ALLOWED)


def job_page(users, role, job, action):
    client = page_client(users, role)
    if action == "view":
        return outcome_of_page(client.get(f"/jobs/{job.pk}/"))
    if action == "delete":  # the job page's Delete… link leads to the Storage page's confirmation
        response = client.post(f"/storage/delete/job/{job.pk}/")
    else:
        response = client.post(f"/jobs/{job.pk}/{action}/", HTTP_HX_REQUEST="true")
    outcome = outcome_of_page(response)
    if outcome == ALLOWED and action == "resume":
        assert response.status_code == 400 and "left no checkpoint" in response.content.decode()  # allowed, impossible
    if outcome == ALLOWED and action == "delete":
        assert response.status_code == 409 and "cancel them first" in response.content.decode()  # allowed, queued
    return outcome


def queue_page(users, role, job, action):
    client = page_client(users, role)
    if action == "view":
        response = client.get("/jobs/queue/table/")
        if response.status_code == 302:
            return LOGIN
        return ALLOWED if f'data-job="{job.pk}"' in response.content.decode() else HIDDEN
    data = {"action": "cancel"} if action == "cancel" else {"action": "priority", "priority": "7"}
    response = client.post(f"/jobs/{job.pk}/queue-action/", data)
    if response.status_code != 200:
        return outcome_of_page(response)
    job.refresh_from_db()
    done = job.status == Job.Status.CANCELLED if action == "cancel" else job.priority == 7
    assert done or 'role="alert"' in response.content.decode()  # a refusal says why
    return ALLOWED if done else REFUSED


def api(users, role, job, action):
    client = Client()
    if role != "anonymous":
        client.defaults["HTTP_AUTHORIZATION"] = "Bearer " + api_token_create(user=users[role], name="t")[1]
    if action == "view":
        response = client.get(f"/api/v1/fine_tuning/jobs/{job.pk}")
    elif action == "delete":
        response = client.delete(f"/api/v1/fine_tuning/jobs/{job.pk}")
        if response.status_code == 409:  # allowed, but the job is still queued
            assert "cancel them first" in response.json()["error"]["message"]
    else:
        response = client.post(f"/api/v1/fine_tuning/jobs/{job.pk}/cancel", content_type="application/json")
    return {401: LOGIN, 403: REFUSED, 404: HIDDEN}.get(response.status_code, ALLOWED)


def socket(users, role, job, action):
    async def connect():
        # The consumer as the ASGI router hands it a socket (channels.testing would need daphne).
        scope = {"type": "websocket", "path": f"/ws/jobs/{job.pk}/", "headers": [], "subprotocols": [],
                 "user": AnonymousUser() if role == "anonymous" else users[role],
                 "url_route": {"args": (), "kwargs": {"job_id": job.pk}}}
        communicator = ApplicationCommunicator(JobEventsConsumer.as_asgi(), scope)
        await communicator.send_input({"type": "websocket.connect"})
        assert (await communicator.receive_output(timeout=5))["type"] == "websocket.accept"
        if not await communicator.receive_nothing(timeout=0.5):
            return await communicator.receive_output()  # closed at once, with the code saying why
        await communicator.send_input({"type": "websocket.receive", "text": '{"after": 0}'})
        message = await communicator.receive_output(timeout=5)  # the stored events: here the "queued" status
        await communicator.send_input({"type": "websocket.disconnect", "code": 1000})
        await communicator.wait(timeout=5)
        return message

    message = async_to_sync(connect)()
    if message["type"] == "websocket.close":
        return {4401: LOGIN, 4404: HIDDEN}[message["code"]]
    return ALLOWED


# Each surface with the actions it offers (the job page has no reordering, the API no resume yet).
SURFACES = {"job page": (job_page, ["view", "cancel", "resume", "delete"]),
            "queue page": (queue_page, ["view", "cancel", "reorder"]), "api": (api, ["view", "cancel", "delete"])}
CASES = [(surface, action, role) for surface, (_, actions) in SURFACES.items() for action in actions for role in ROLES]


@pytest.mark.parametrize("surface, action, role", CASES)
def test_every_page_and_the_api_follow_the_one_rule(people, surface, action, role):
    users, job = people
    outcome = SURFACES[surface][0](users, role, job, action)
    assert outcome == expected(action, role), f"{surface}: {role} {action} → {outcome}"


@pytest.mark.django_db(transaction=True)  # the consumer reads the database from another thread
@pytest.mark.parametrize("role", ROLES)
def test_the_live_socket_follows_the_one_rule(people, role):
    users, job = people
    assert socket(users, role, job, "view") == expected("view", role)


# Sign-in settings and invitations are each user's own (the two-factor and invitations pages name no
# one else; an invitation sent to another's address is hidden, as if it did not exist); with
# REQUIRE_2FA_FOR_ADMINS, team admins are sent to set two-factor up before any other page.
ENROL_FIRST = "enrol first"
OWN = {"owner": ALLOWED, "teammate": ALLOWED, "admin": ALLOWED, "viewer": ALLOWED, "other team": ALLOWED,
       "anonymous": LOGIN}
ACCOUNT_RULE = {
    "two-factor page": OWN,
    "invitations page": OWN,
    "accept another's invitation": {"owner": HIDDEN, "teammate": HIDDEN, "admin": HIDDEN, "viewer": HIDDEN,
                                    "other team": HIDDEN, "anonymous": LOGIN},
    # The way in is open to everyone (the provider and OIDC_ALLOWED_GROUPS decide, tests/web/test_oidc.py).
    "identity-provider sign-in": {role: ALLOWED for role in ROLES},
    "job page, 2FA required": {"owner": ALLOWED, "teammate": ALLOWED, "admin": ENROL_FIRST, "viewer": ALLOWED,
                               "other team": ENROL_FIRST, "anonymous": LOGIN},
}


@pytest.mark.parametrize("page, role", [(page, role) for page in ACCOUNT_RULE for role in ROLES])
def test_the_sign_in_settings_follow_the_one_rule(people, settings, page, role):
    users, job = people
    settings.REQUIRE_2FA_FOR_ADMINS = page.endswith("required")
    client = page_client(users, role)
    if page == "accept another's invitation":
        invitation, _ = invitation_create(user=users["admin"], team=job.team, email="someone@example.com")
        response = client.post(f"/invitations/{invitation.pk}/accept/")
    elif page == "identity-provider sign-in":
        provider = OidcProvider()
        settings.OIDC_ISSUER, settings.OIDC_RP_CLIENT_ID = provider.start(), CLIENT_ID
        try:
            response = client.get("/oidc/authenticate/")
        finally:
            provider.stop()
        assert response.status_code == 302 and response.url.startswith(f"{settings.OIDC_ISSUER}/authorize?")
    else:
        response = client.get({"two-factor page": "/accounts/two-factor/", "invitations page": "/invitations/"}
                              .get(page, f"/jobs/{job.pk}/"))
    outcome = ENROL_FIRST if response.status_code == 302 and "required=1" in response.url else \
        outcome_of_page(response)
    assert outcome == ACCOUNT_RULE[page][role], f"{page}: {role} → {outcome}"
