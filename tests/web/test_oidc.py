"""Sign-in with an identity provider, end to end over real HTTP: the studio
(pytest-django's live server) and an OpenID Connect provider built from
authlib (tests/oidc_provider.py), both on 127.0.0.1. A requests session plays
the browser, following the redirects: the studio reads the provider's
discovery document, sends the browser to /authorize (state, nonce, PKCE),
trades the code at /token, checks the ID token's signature against the JWKS,
reads /userinfo. Cases: a new colleague lands in the team their group maps
to; a group that is not allowed gets a page saying so; an existing account is
reached through its verified address; a forged signature is refused; with
LOCAL_PASSWORDS=false the password ways in refuse."""

import pytest
import requests
from django.contrib.auth import get_user_model
from django.test import Client

from studio.accounts.models import ExternalIdentity, Membership, Team, VerifiedEmail
from studio.accounts.services import default_team, user_create
from studio.accounts.teams import invitation_create
from studio.audit.models import AuditEntry
from tests.oidc_provider import CLIENT_ID, CLIENT_SECRET, OidcProvider

BACKENDS = ["axes.backends.AxesStandaloneBackend", "django.contrib.auth.backends.ModelBackend",
            "studio.accounts.oidc.IdentityProviderBackend"]


@pytest.fixture
def provider(live_server, settings):
    running = OidcProvider()
    settings.OIDC_ISSUER = running.start()
    running.client.redirect_uris = [f"{live_server.url}/oidc/callback/"]
    settings.OIDC_RP_CLIENT_ID, settings.OIDC_RP_CLIENT_SECRET = CLIENT_ID, CLIENT_SECRET
    settings.OIDC_PROVIDER_NAME = "Example SSO"
    settings.AUTHENTICATION_BACKENDS = BACKENDS
    settings.OIDC_GROUP_TEAMS = {"ml-team": ("ml", "member"), "ml-leads": ("ml", "admin")}
    settings.OIDC_ALLOWED_GROUPS = []
    yield running
    running.stop()


def sign_in(live_server, person: dict, provider, next_path="/datasets/") -> requests.Response:
    """A browser signed in at the provider as ``person`` clicks "Sign in with Example SSO"."""
    provider.person = person
    browser = requests.Session()
    login_page = browser.get(f"{live_server.url}/accounts/login/?next={next_path}", timeout=30)
    assert "Sign in with Example SSO" in login_page.text
    response = browser.get(f"{live_server.url}/oidc/authenticate/?next={next_path}", timeout=30)
    response.browser = browser
    return response


NEWCOMER = {"sub": "okta-00u1", "email": "Ravi@example.com", "email_verified": True, "preferred_username": "ravi",
            "groups": ["ml-team", "everyone"]}


def test_a_new_colleague_lands_in_the_team_their_group_maps_to(live_server, provider):
    response = sign_in(live_server, NEWCOMER, provider)
    assert response.status_code == 200 and response.url == f"{live_server.url}/datasets/", response.text[:500]
    assert [path for path in provider.requests if path != "/jwks"][:4] == [
        "/.well-known/openid-configuration", "/authorize", "/token", "/userinfo"]
    assert "/jwks" in provider.requests  # the ID token's signature was checked against the provider's keys
    membership = Membership.objects.select_related("user", "team").get(team__slug="ml")
    assert (membership.user.username, membership.role) == ("ravi", "member")
    assert not membership.user.has_usable_password()
    assert VerifiedEmail.objects.get(user=membership.user).email == "ravi@example.com"
    assert response.browser.get(f"{live_server.url}/teams/ml/", timeout=30).status_code == 200
    actions = set(AuditEntry.objects.values_list("action", flat=True))
    assert {"account.created", "member.added"} <= actions

    again = sign_in(live_server, {**NEWCOMER, "email": "ravi.k@example.com", "groups": ["ml-leads"]}, provider)
    assert again.status_code == 200  # the same account, found by the provider's subject
    assert ExternalIdentity.objects.get().user == membership.user
    membership.refresh_from_db()
    assert membership.role == "member"  # the mapping applies on the first sign-in only

    get_user_model().objects.filter(pk=membership.user_id).update(is_active=False)
    signed_out = again.browser.get(f"{live_server.url}/datasets/", allow_redirects=False, timeout=30)
    assert signed_out.status_code == 302 and "/accounts/login/" in signed_out.headers["Location"]


def test_a_group_that_is_not_allowed_gets_a_page_saying_so(live_server, provider, settings):
    settings.OIDC_ALLOWED_GROUPS = ["ml-team", "ml-leads"]
    response = sign_in(live_server, {**NEWCOMER, "groups": ["contractors"]}, provider)
    assert response.status_code == 403 and response.url == f"{live_server.url}/accounts/sign-in-refused/"
    assert "none of the groups allowed to use this studio (ml-team, ml-leads)" in response.text
    assert not ExternalIdentity.objects.exists() and not Team.objects.filter(slug="ml").exists()
    refused = AuditEntry.objects.get(action="signin.refused")
    assert refused.detail["groups"] == ["contractors"] and refused.detail["why"] == "group"
    assert response.browser.get(f"{live_server.url}/datasets/", allow_redirects=False, timeout=30).status_code == 302


def test_an_existing_account_is_reached_through_its_verified_address(live_server, provider):
    nina = user_create(username="nina", password="pw-nina-12345", team=default_team())
    VerifiedEmail.objects.create(user=nina, email="nina@example.com", how=VerifiedEmail.How.ADMIN)
    response = sign_in(live_server, {"sub": "okta-00u2", "email": "NINA@example.com", "email_verified": True,
                                     "groups": []}, provider)
    assert response.status_code == 200 and "nina</a>" in response.text  # the header names who is signed in
    assert ExternalIdentity.objects.get(subject="okta-00u2").user == nina

    typed = user_create(username="omar", password="pw-omar-12345", team=default_team())
    typed.email = "omar@example.com"  # typed on a form: not enough to hand the account to the provider's omar
    typed.save()
    refused = sign_in(live_server, {"sub": "okta-00u3", "email": "omar@example.com", "email_verified": True},
                      provider)
    assert refused.status_code == 403 and "never verified here" in refused.text


def test_a_forged_signature_is_refused(live_server, provider):
    from joserfc.jwk import RSAKey

    provider.published_key = RSAKey.generate_key(2048, parameters={"kid": "test-key", "use": "sig",
                                                                   "alg": "RS256"})
    response = sign_in(live_server, NEWCOMER, provider)
    assert response.status_code == 403 and "could not be verified" in response.text
    assert not ExternalIdentity.objects.exists()


def test_an_invitation_waits_for_the_account_the_provider_made(live_server, provider):
    """Invitations match the address the provider verified: a colleague invited before their first
    sign-in finds it on their Invitations page."""
    admin = user_create(username="ada", password="pw-ada-12345", team=default_team(), role=Membership.Role.ADMIN)
    response = sign_in(live_server, {**NEWCOMER, "groups": []}, provider)
    invitation_create(user=admin, team=default_team(), email="ravi@example.com")
    assert "Invitations (1)" in response.browser.get(f"{live_server.url}/datasets/", timeout=30).text


@pytest.mark.django_db
def test_with_local_passwords_off_the_password_ways_in_refuse(settings):
    settings.OIDC_ISSUER, settings.LOCAL_PASSWORDS = "http://127.0.0.1:9", False
    settings.AUTHENTICATION_BACKENDS = [b for b in BACKENDS if not b.endswith("ModelBackend")]
    admin = user_create(username="ada", password="pw-ada-12345", team=default_team(), role=Membership.Role.ADMIN)
    page = Client().get("/accounts/login/").content.decode()
    assert 'name="password"' not in page and "/oidc/authenticate/" in page
    refused = Client().post("/accounts/login/", {"username": "ada", "password": "pw-ada-12345"})
    assert refused.status_code == 403 and "Passwords are turned off" in refused.content.decode()
    assert Client().post("/admin/login/", {"username": "ada", "password": "pw-ada-12345"}).status_code == 403
    _, raw = invitation_create(user=admin, team=default_team())
    join = Client().get(f"/join/{raw}/").content.decode()
    assert 'name="password"' not in join and "/oidc/authenticate/?next=" in join
    sign_up = Client().post(f"/join/{raw}/", {"username": "eve", "password": "a-long-enough-pass"})
    assert sign_up.status_code == 403 and "Passwords are turned off" in sign_up.content.decode()
