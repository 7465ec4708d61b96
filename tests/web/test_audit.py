"""The audit log: audit_record writes in the caller's transaction; /audit/
shows a team admin their own teams' entries only, filtered and paginated."""

import pytest
from django.db import transaction
from django.test import RequestFactory

from studio.accounts.models import Membership, Team
from studio.accounts.services import user_create
from studio.audit.models import AuditEntry
from studio.audit.services import audit_record
from studio.audit.views import PAGE_SIZE


@pytest.fixture
def admin(team):
    return user_create(username="ada", password="pw-ada-123", team=team, role=Membership.Role.ADMIN)


@pytest.fixture
def admin_client(client, admin):
    client.force_login(admin)
    return client


def test_record_names_the_target_and_keeps_it_after_deletion(member, team):
    target = Team.objects.create(name="Scratch", slug="scratch")  # any saved model works as a target
    request = RequestFactory().get("/", REMOTE_ADDR="10.1.2.3")
    entry = audit_record(user=member, team=team, action="dataset.deleted", target=target,
                         detail={"rows": 3}, request=request)
    target_pk = target.pk
    target.delete()
    entry.refresh_from_db()
    assert (entry.username, entry.target_type, entry.target_id, entry.target_label) == (
        "alice", "accounts.team", str(target_pk), "Scratch")
    assert entry.detail == {"rows": 3} and entry.ip == "10.1.2.3"


def test_record_rolls_back_with_the_callers_transaction(member, team):
    with pytest.raises(RuntimeError), transaction.atomic():
        audit_record(user=member, team=team, action="job.started", target=team)
        raise RuntimeError("the action failed")
    assert not AuditEntry.objects.exists()


def test_record_refuses_an_unknown_action(member, team):
    with pytest.raises(ValueError, match="job.exploded"):
        audit_record(user=member, team=team, action="job.exploded", target=None)


def test_record_without_user_or_request(team):
    entry = audit_record(user=None, team=team, action="job.cancelled", target=None)
    assert entry.user is None and entry.username == "" and entry.ip is None and entry.target_type == ""


def test_deleting_the_user_keeps_the_entry_and_the_name(member, team):
    entry = audit_record(user=member, team=team, action="token.created", target=None)
    member.delete()
    entry.refresh_from_db()
    assert entry.user is None and entry.username == "alice"


def test_page_needs_login(client):
    response = client.get("/audit/")
    assert response.status_code == 302 and response.url.startswith("/accounts/login/")


def test_member_is_refused_with_404(member_client, member, team):
    audit_record(user=member, team=team, action="job.started", target=team)
    assert member_client.get("/audit/").status_code == 404


def test_admin_sees_own_team_only(admin_client, admin, member, team, outsider):
    rivals = Team.objects.get(slug="rivals")
    audit_record(user=member, team=team, action="job.started", target=team, detail={"job_name": "ours"})
    audit_record(user=outsider, team=rivals, action="job.started", target=rivals, detail={"job_name": "theirs"})
    body = admin_client.get("/audit/").content.decode()
    assert "job_name=ours" in body and "theirs" not in body and "mallory" not in body


def test_newest_first_and_filters(admin_client, admin, member, team):
    audit_record(user=member, team=team, action="dataset.uploaded", target=team, detail={"n": "first"})
    audit_record(user=admin, team=team, action="job.cancelled", target=team, detail={"n": "second"})
    audit_record(user=member, team=team, action="job.cancelled", target=team, detail={"n": "third"})

    body = admin_client.get("/audit/").content.decode()
    assert body.index("n=third") < body.index("n=second") < body.index("n=first")

    body = admin_client.get("/audit/?action=job.cancelled").content.decode()
    assert "n=third" in body and "n=second" in body and "n=first" not in body

    body = admin_client.get(f"/audit/?action=job.cancelled&user={member.pk}").content.decode()
    assert "n=third" in body and "n=second" not in body and "n=first" not in body

    # A made-up action or user id is ignored rather than an error.
    assert admin_client.get("/audit/?action=nonsense&user=abc").status_code == 200


def test_pagination_keeps_the_filters(admin_client, admin, team):
    for i in range(PAGE_SIZE + 2):
        audit_record(user=admin, team=team, action="artifact.downloaded", target=team, detail={"i": i})
    audit_record(user=admin, team=team, action="job.started", target=team)
    first = admin_client.get("/audit/?action=artifact.downloaded").content.decode()
    assert "Page 1 of 2" in first and "i=51<" in first and "i=0<" not in first
    assert "?page=2&amp;action=artifact.downloaded" in first
    second = admin_client.get("/audit/?page=2&action=artifact.downloaded").content.decode()
    assert "i=0<" in second and "i=1<" in second and "i=2<" not in second and "job.started</code>" not in second


def test_admin_of_two_teams_sees_both_with_a_team_column(admin_client, admin, team):
    other = Team.objects.create(name="Second team", slug="second")
    Membership.objects.create(user=admin, team=other, role=Membership.Role.ADMIN)
    audit_record(user=admin, team=other, action="token.revoked", target=other)
    body = admin_client.get("/audit/").content.decode()
    assert "<th>Team</th>" in body and "Second team" in body


def test_viewer_role_in_an_admin_team_only_sees_the_admin_team(client, team, member):
    """Admin of one team, viewer of another: the other team's log stays closed."""
    boss = user_create(username="boss", password="pw-boss-123", team=team, role=Membership.Role.ADMIN)
    other = Team.objects.create(name="Other", slug="other")
    Membership.objects.create(user=boss, team=other, role=Membership.Role.VIEWER)
    audit_record(user=None, team=other, action="job.deleted", target=None, detail={"secret": "x"})
    client.force_login(boss)
    assert "secret=" not in client.get("/audit/").content.decode()


def test_nav_link_for_admins_only(client, admin, member):
    client.force_login(admin)
    assert 'href="/audit/"' in client.get("/").content.decode()
    client.force_login(member)
    assert 'href="/audit/"' not in client.get("/").content.decode()
