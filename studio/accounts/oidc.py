"""Sign-in with the organisation's identity provider over OpenID Connect,
through mozilla-django-oidc (the authorization code flow with PKCE, state and
nonce, the ID token's signature checked against the provider's JWKS). What
this module adds to it:

- discovery: the endpoints come from ``OIDC_ISSUER/.well-known/openid-configuration``
  (read when first needed, kept an hour) unless settings name them;
- the ID token's issuer and audience are checked too (the library checks the
  signature, expiry and nonce only), and userinfo must be about the same ``sub``;
- who the person is here (``studio.accounts.sign_in``): an account found by
  the provider's ``sub``, else by a verified address, else a new one placed in
  teams by OIDC_GROUP_TEAMS; or a refusal, which the refused page shows.
"""

from __future__ import annotations

import logging
import time

import requests
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.exceptions import SuspiciousOperation
from mozilla_django_oidc.auth import OIDCAuthenticationBackend
from mozilla_django_oidc.utils import import_from_settings

from studio.accounts.sign_in import SignInRefused, sign_in_user

log = logging.getLogger(__name__)

# The settings that name an endpoint, and the discovery document's key for it.
ENDPOINTS = {"OIDC_OP_AUTHORIZATION_ENDPOINT": "authorization_endpoint", "OIDC_OP_TOKEN_ENDPOINT": "token_endpoint",
             "OIDC_OP_USER_ENDPOINT": "userinfo_endpoint", "OIDC_OP_JWKS_ENDPOINT": "jwks_uri"}
DISCOVERY_KEPT_S = 3600
REFUSAL = "sign_in_refused"  # session: why the last sign-in was refused, for the refused page
_discovered: dict[str, tuple[float, dict]] = {}


class ProviderUnavailable(Exception):
    """The identity provider's discovery document could not be read or does not fit; the message says why."""


def discovery(issuer: str) -> dict:
    kept = _discovered.get(issuer)
    if kept and time.monotonic() - kept[0] < DISCOVERY_KEPT_S:
        return kept[1]
    url = f"{issuer}/.well-known/openid-configuration"
    try:
        response = requests.get(url, timeout=settings.OIDC_TIMEOUT)
        response.raise_for_status()
        document = response.json()
    except (requests.RequestException, ValueError) as error:
        raise ProviderUnavailable(f"could not read {url}: {error}") from None
    if str(document.get("issuer", "")).rstrip("/") != issuer:
        raise ProviderUnavailable(f"{url} names the issuer {document.get('issuer')!r}, not {issuer!r} (OIDC_ISSUER)")
    missing = [key for key in ENDPOINTS.values() if not document.get(key)]
    if missing:
        raise ProviderUnavailable(f"{url} names no {', '.join(missing)}")
    _discovered[issuer] = (time.monotonic(), document)
    return document


def provider_setting(name: str, *default):
    """mozilla-django-oidc's settings, with the endpoints left unset taken from discovery."""
    if name in ENDPOINTS and not getattr(settings, name, ""):
        return discovery(settings.OIDC_ISSUER)[ENDPOINTS[name]]
    return import_from_settings(name, *default)


class IdentityProviderBackend(OIDCAuthenticationBackend):
    get_settings = staticmethod(provider_setting)

    def __init__(self, *args, **kwargs):
        # The library reads the endpoints here; Django makes a backend for every password login too,
        # which must not wait for (or fail with) the provider. They are read in authenticate.
        self.UserModel = get_user_model()

    def authenticate(self, request, **kwargs):
        if request is None or "nonce" not in kwargs:  # not the provider's callback (a password login)
            return None
        try:
            super().__init__()
            return super().authenticate(request, **kwargs)
        except ProviderUnavailable as error:
            log.warning("identity provider unavailable: %s", error)
            request.session[REFUSAL] = f"The identity provider cannot be reached ({error}); try again later."
        except (SuspiciousOperation, requests.RequestException) as error:
            log.warning("identity provider sign-in failed: %s", error)
            request.session[REFUSAL] = "The identity provider's answer could not be verified; try again."
        return None

    def get_user(self, user_id):
        user = super().get_user(user_id)  # the library's returns deactivated accounts too; Django's does not
        return user if user is not None and self.user_can_authenticate(user) else None

    def verify_token(self, token, **kwargs):
        payload = super().verify_token(token, **kwargs)
        if str(payload.get("iss", "")).rstrip("/") != settings.OIDC_ISSUER:
            raise SuspiciousOperation(f"ID token issued by {payload.get('iss')!r}, not {settings.OIDC_ISSUER!r}")
        audience = payload.get("aud")
        if self.OIDC_RP_CLIENT_ID not in ([audience] if isinstance(audience, str) else audience or []):
            raise SuspiciousOperation("ID token not meant for this studio (aud)")
        return payload

    def get_or_create_user(self, access_token, id_token, payload):
        userinfo = self.get_userinfo(access_token, id_token, payload)
        if userinfo.get("sub") != payload.get("sub"):
            raise SuspiciousOperation("userinfo is about another subject than the ID token")
        try:
            return sign_in_user(issuer=settings.OIDC_ISSUER, claims={**payload, **userinfo}, request=self.request)
        except SignInRefused as refused:
            self.request.session[REFUSAL] = refused.message
            return None
