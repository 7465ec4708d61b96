"""The API tokens page: a secret is shown once, revoking works, and a user
sees and revokes only their own tokens."""

import hashlib
import re

import pytest

from studio.accounts.models import ApiToken
from studio.accounts.services import api_token_create

SECRET = re.compile(r"tst_[0-9a-f]{12}_[A-Za-z0-9_-]{20,}")


def test_page_needs_login(client, db):
    response = client.get("/accounts/tokens/")
    assert response.status_code == 302 and response.url.startswith("/accounts/login/")


def test_create_shows_the_secret_once(member_client, member):
    response = member_client.post("/accounts/tokens/", {"name": "nightly eval", "team": ""})
    page = response.content.decode()
    assert response.status_code == 200 and response["Cache-Control"] == "no-store"
    secrets_shown = SECRET.findall(page)
    assert len(set(secrets_shown)) == 1
    raw = secrets_shown[0]
    token = ApiToken.objects.get(user=member)
    assert token.name == "nightly eval" and token.team is None and raw.startswith(f"tst_{token.prefix}_")
    assert token.hashed_secret == hashlib.sha256(raw.encode()).hexdigest()
    assert raw not in str(ApiToken.objects.values().get())  # only the hash is stored
    later = member_client.get("/accounts/tokens/").content.decode()
    assert "nightly eval" in later and f"tst_{token.prefix}_" in later and raw not in later
    assert member_client.get("/api/v1/models", HTTP_AUTHORIZATION=f"Bearer {raw}").status_code == 200


def test_htmx_create_returns_the_section_with_the_secret(member_client):
    response = member_client.post("/accounts/tokens/", {"name": "ci"}, HTTP_HX_REQUEST="true")
    page = response.content.decode()
    assert response.status_code == 200 and "<html" not in page and 'id="tokens"' in page
    assert len(SECRET.findall(page)) == 1


def test_a_token_for_one_team_only_among_the_users_teams(member_client, member, team, outsider):
    member_client.post("/accounts/tokens/", {"name": "team bound", "team": str(team.pk)})
    assert ApiToken.objects.get(user=member).team == team
    rivals = outsider.memberships.get().team
    response = member_client.post("/accounts/tokens/", {"name": "sneaky", "team": str(rivals.pk)})
    assert response.status_code == 400 and not ApiToken.objects.filter(name="sneaky").exists()
    assert_no_secret(response)


def test_name_is_required(member_client):
    response = member_client.post("/accounts/tokens/", {"name": ""})
    assert response.status_code == 400 and ApiToken.objects.count() == 0


def assert_no_secret(response):
    assert not SECRET.findall(response.content.decode())


def test_revoke_works_and_the_token_stops_working(member_client, member):
    token, raw = api_token_create(user=member, name="old script")
    response = member_client.post(f"/accounts/tokens/{token.pk}/revoke/", HTTP_HX_REQUEST="true")
    assert response.status_code == 200 and "revoked" in response.content.decode()
    token.refresh_from_db()
    assert token.revoked_at is not None
    # A presented token is judged on its own, even beside a valid session.
    assert member_client.get("/api/v1/models", HTTP_AUTHORIZATION=f"Bearer {raw}").status_code == 401


def test_revoke_without_htmx_redirects(member_client, member):
    token, _ = api_token_create(user=member, name="t")
    response = member_client.post(f"/accounts/tokens/{token.pk}/revoke/")
    assert response.status_code == 302 and response.url == "/accounts/tokens/"


def test_only_own_tokens_are_listed_and_revocable(member_client, outsider):
    theirs, _ = api_token_create(user=outsider, name="mallory's deploy key")
    page = member_client.get("/accounts/tokens/").content.decode()
    assert "mallory" not in page and theirs.prefix not in page
    assert member_client.post(f"/accounts/tokens/{theirs.pk}/revoke/").status_code == 404
    theirs.refresh_from_db()
    assert theirs.revoked_at is None


@pytest.mark.parametrize("method", ["get", "put"])
def test_revoke_is_post_only(member_client, member, method):
    token, _ = api_token_create(user=member, name="t")
    assert getattr(member_client, method)(f"/accounts/tokens/{token.pk}/revoke/").status_code == 405
    token.refresh_from_db()
    assert token.revoked_at is None


def test_nav_links_to_the_tokens_page(member_client):
    assert 'href="/accounts/tokens/"' in member_client.get("/").content.decode()
