"""Who a person who signed in at the identity provider is here, from the
claims it vouched for (``studio.accounts.oidc`` checked them):

1. the policy may refuse them (``OIDC_ALLOWED_GROUPS``), whoever they are;
2. the account already tied to the provider's ``sub`` for them;
3. else the account whose verified address is their verified address (tied to them from then on);
4. else, when an account here merely has that address typed in, a refusal
   (taking it over would trust a typed address);
5. else a new account without a password, its address verified when the
   provider says so, in the teams OIDC_GROUP_TEAMS maps their groups to.
Steps 3 and 5 are their first sign-in, when the group mapping applies: it adds
memberships, never lowers a role. Everything is in the audit log.
"""

from __future__ import annotations

import re

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import transaction

from studio.accounts.models import ExternalIdentity, Membership, Team, VerifiedEmail
from studio.accounts.policy import identity_provider_refusal
from studio.accounts.selectors import user_with_verified_email
from studio.audit.services import audit_record

ROLE_RANK = {Membership.Role.VIEWER: 0, Membership.Role.MEMBER: 1, Membership.Role.ADMIN: 2}


class SignInRefused(Exception):
    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


def _groups(claims: dict) -> list[str]:
    groups = claims.get(settings.OIDC_GROUPS_CLAIM) or []
    return [groups] if isinstance(groups, str) else [str(g) for g in groups]


def _refuse(message: str, *, claims: dict, request, why: str) -> SignInRefused:
    audit_record(user=None, team=None, action="signin.refused", request=request,
                 detail={"why": why, "sub": claims.get("sub"), "email": claims.get("email", ""),
                         "groups": _groups(claims)})
    return SignInRefused(message)


def _username(claims: dict) -> str:
    """preferred_username, else the address's local part, else the subject; made unique here."""
    wanted = claims.get("preferred_username") or (claims.get("email") or "").split("@")[0] or claims["sub"]
    base = re.sub(r"[^\w.@+-]", "-", str(wanted))[:140] or "user"
    taken = set(get_user_model().objects.filter(username__istartswith=base).values_list("username", flat=True))
    name, n = base, 1
    while name in taken:
        n += 1
        name = f"{base}-{n}"
    return name


def _join_mapped_teams(user, groups: list[str], request) -> None:
    wanted: dict[str, tuple[str, str]] = {}  # team slug → (role, group); the highest role wins
    for group in groups:
        if group in settings.OIDC_GROUP_TEAMS:
            slug, role = settings.OIDC_GROUP_TEAMS[group]
            if slug not in wanted or ROLE_RANK[role] > ROLE_RANK[wanted[slug][0]]:
                wanted[slug] = (role, group)
    for slug, (role, group) in wanted.items():
        team, _ = Team.objects.get_or_create(slug=slug, defaults={"name": slug})
        membership, created = Membership.objects.get_or_create(user=user, team=team, defaults={"role": role})
        if not created and ROLE_RANK[membership.role] >= ROLE_RANK[role]:
            continue
        if not created:
            membership.role = role
            membership.save(update_fields=["role"])
        audit_record(user=user, team=team, action="member.added", target=user, request=request,
                     detail={"role": role, "group": group, "by": "identity provider"})


def sign_in_user(*, issuer: str, claims: dict, request=None):
    """The account for this person (see the module's steps); raises SignInRefused saying why not."""
    groups = _groups(claims)
    refusal = identity_provider_refusal(groups=groups)
    if refusal:
        raise _refuse(refusal, claims=claims, request=request, why="group")
    subject = str(claims.get("sub") or "")
    if not subject:
        raise _refuse("The identity provider sent no subject (sub) for you.", claims=claims, request=request,
                      why="no sub")
    identity = ExternalIdentity.objects.filter(issuer=issuer, subject=subject).select_related("user").first()
    if identity is not None:
        if not identity.user.is_active:
            raise _refuse("Your account here is deactivated; ask a site admin.", claims=claims, request=request,
                          why="inactive")
        return identity.user
    email = str(claims.get("email") or "").strip()
    verified = bool(email) and claims.get("email_verified") in (True, "true")
    user = user_with_verified_email(email) if verified else None
    if user is None and email and get_user_model().objects.filter(email__iexact=email).exists():
        raise _refuse(f"An account here already uses {email}, but that address was never verified here, so it "
                      "cannot be given to you. Sign in with its password, or ask a site admin to verify the "
                      "address (Verified e-mails, in the admin).", claims=claims, request=request,
                      why="unverified address in use")
    with transaction.atomic():
        if user is None:
            user = get_user_model().objects.create_user(_username(claims), email=email)  # no usable password
            if verified:
                VerifiedEmail.objects.create(user=user, email=email.lower(), how=VerifiedEmail.How.IDENTITY_PROVIDER)
            audit_record(user=user, team=None, action="account.created", target=user, request=request,
                         detail={"issuer": issuer, "sub": subject, "groups": groups})
        ExternalIdentity.objects.create(user=user, issuer=issuer, subject=subject)
        _join_mapped_teams(user, groups, request)
    return user
