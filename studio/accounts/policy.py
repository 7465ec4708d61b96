"""Who may do what: the one access rule that every page, API call and
WebSocket asks, so that the surfaces cannot disagree.

Everything a team owns (jobs, datasets, artifacts) is seen by its members of
any role and by nobody else; the surfaces answer 404 then, as if it did not
exist. Acting on it needs more:

| action | viewer | member | team admin |
|---|---|---|---|
| view (pages, downloads, the live stream) | yes | yes | yes |
| create (upload, start a job, analyse, a diet step, use an artifact) | no | yes | yes |
| cancel or resume a job | no | their own | any of the team |
| delete a job, dataset or artifact | no | what they made | anything of the team |
| reorder the queue, change priorities | no | no | yes |
| manage the team (invite, change roles, remove members) | no | no | yes |

A user's API tokens, notifications and sign-in settings (two-factor) are their
own alone. An invitation sent to an address is, besides its link, for the one
account whose verified address that is (``invitation_is_for``). Through the
identity provider, with OIDC_ALLOWED_GROUPS set, only people in one of those
groups come in (``identity_provider_refusal``). With REQUIRE_2FA_FOR_ADMINS, site staff and team admins who sign in
with a local password must set up two-factor before anything else
(``must_enrol_second_factor``); API tokens, the script path, keep working.
"""

from __future__ import annotations

from enum import StrEnum

from django.conf import settings

from studio.accounts.models import Membership
from studio.accounts.selectors import admin_team_ids_for_user, membership_role, verified_email_of


class Action(StrEnum):
    VIEW = "view"
    CREATE = "create"
    CANCEL = "cancel"
    RESUME = "resume"
    REORDER = "reorder"
    DELETE = "delete"
    MANAGE = "manage"


WRITERS = (Membership.Role.MEMBER, Membership.Role.ADMIN)
OWNER_OR_ADMIN = (Action.CANCEL, Action.RESUME, Action.DELETE)


def allows(*, user, action: Action, team_id: int, owner_id: int | None = None, roles: dict | None = None) -> bool:
    """Whether ``user`` may do ``action`` to something of team ``team_id``
    (owned by ``owner_id``, where ownership matters). ``roles`` (from
    ``team_roles_for_user``) saves the lookup where one page asks many times."""
    if user is None or not user.is_authenticated:
        return False
    role = roles.get(team_id) if roles is not None else membership_role(user=user, team_id=team_id)
    if role is None:
        return False
    if action == Action.VIEW:
        return True
    if action == Action.CREATE:
        return role in WRITERS
    if action in OWNER_OR_ADMIN:
        return role == Membership.Role.ADMIN or (role == Membership.Role.MEMBER and owner_id == user.pk)
    if action in (Action.REORDER, Action.MANAGE):
        return role == Membership.Role.ADMIN
    raise ValueError(f"unknown action {action!r}")


def job_allows(*, user, job, action: Action, roles: dict | None = None) -> bool:
    return allows(user=user, action=action, team_id=job.team_id, owner_id=job.owner_id, roles=roles)


def may_preempt(*, user, urgent_job, running_job) -> bool:
    """Whether ``user`` may stop ``running_job`` at a checkpoint to give its worker to ``urgent_job``: a team
    admin within the team's own jobs; site staff (who run the machines) across teams."""
    return (job_allows(user=user, job=urgent_job, action=Action.REORDER)
            and (running_job.team_id == urgent_job.team_id or user.is_staff))


def refusal(*, user, action: Action, team_id: int, doing: str = "") -> str:
    """Why ``action`` is refused, in words for the page or the API (``doing``
    names it more precisely: "upload datasets")."""
    role = membership_role(user=user, team_id=team_id)
    if action == Action.DELETE and role == Membership.Role.MEMBER:
        return "Members can delete only what they made; a team admin can delete anything of the team"
    if action in OWNER_OR_ADMIN and role == Membership.Role.MEMBER:
        return f"Members can {action} only their own jobs; a team admin can {action} any job of the team"
    if action == Action.REORDER:
        return "Only a team admin can reorder the queue or change priorities"
    return f"Your role in this team ({role or 'none'}) cannot {doing or action}; ask a team admin for the member role"


def must_enrol_second_factor(*, user) -> bool:
    """Whether REQUIRE_2FA_FOR_ADMINS holds this user to set up two-factor before anything else: site
    staff and team admins with a local password (identity-provider accounts get theirs there)."""
    if not settings.REQUIRE_2FA_FOR_ADMINS or user is None or not user.is_authenticated:
        return False
    if not user.has_usable_password():
        return False
    return user.is_staff or user.is_superuser or bool(admin_team_ids_for_user(user=user))


def invitation_is_for(*, user, invitation) -> bool:
    """Whether ``user`` may see and accept ``invitation`` without its link: it was sent to their verified
    address (an address merely typed on a form could be anyone's)."""
    email = verified_email_of(user=user)
    return bool(email and invitation.email and invitation.email.lower() == email.lower())


def identity_provider_refusal(*, groups: list[str]) -> str:
    """Why a person the identity provider vouched for may not sign in here ("" if they may):
    OIDC_ALLOWED_GROUPS, when set, lets in only people in at least one of those groups."""
    allowed = settings.OIDC_ALLOWED_GROUPS
    if allowed and not set(groups) & set(allowed):
        return (f"Your account at {settings.OIDC_PROVIDER_NAME} is in none of the groups allowed to use this "
                f"studio ({', '.join(allowed)}); ask your IT admin to add you to one of them.")
    return ""
