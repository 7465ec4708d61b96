"""Which teams a user can see and act in."""

from django.contrib.auth import get_user_model
from django.utils import timezone

from studio.accounts.models import ApiToken, Invitation, Membership, Team, VerifiedEmail


def team_ids_for_user(*, user) -> list[int]:
    if not user.is_authenticated:
        return []
    return list(Membership.objects.filter(user=user).values_list("team_id", flat=True))


WRITERS = (Membership.Role.MEMBER, Membership.Role.ADMIN)


def memberships_for_user(*, user) -> list[Membership]:
    """The user's memberships with their teams, first joined first (one query)."""
    return list(Membership.objects.filter(user=user).select_related("team").order_by("created_at", "pk"))


def pick_current(memberships: list[Membership]) -> Membership | None:
    """The one the user picked in the header, else the first they joined where they may write, else
    the first they joined."""
    return (next((m for m in memberships if m.is_current), None)
            or next((m for m in memberships if m.role in WRITERS), None) or next(iter(memberships), None))


def current_team(*, user) -> Team | None:
    chosen = pick_current(memberships_for_user(user=user)) if user.is_authenticated else None
    return chosen.team if chosen else None


def team_for_new_work(*, user) -> Team | None:
    """The team a user's new uploads and jobs go to: the current team (see current_team), when the
    user may write there; None when they may only read it (the pages then say so)."""
    team = current_team(user=user)
    if team is None or membership_role(user=user, team_id=team.pk) not in WRITERS:
        return None
    return team


def teams_for_user(*, user) -> list[Team]:
    """The user's teams, first joined first (the first is the default team
    of the API and the tokens page)."""
    if not user.is_authenticated:
        return []
    return [m.team for m in Membership.objects.filter(user=user).select_related("team").order_by("created_at", "pk")]


def membership_role(*, user, team_id: int) -> str | None:
    """The user's role in the team (viewer, member, admin), None if not in it."""
    return Membership.objects.filter(user=user, team_id=team_id).values_list("role", flat=True).first()


def team_roles_for_user(*, user) -> dict[int, str]:
    """{team id: the user's role} for every team of the user (one query)."""
    if not user.is_authenticated:
        return {}
    return dict(Membership.objects.filter(user=user).values_list("team_id", "role"))


def admin_team_ids_for_user(*, user) -> list[int]:
    return list(Membership.objects.filter(user=user, role=Membership.Role.ADMIN).values_list("team_id", flat=True))


def api_token_list_for_user(*, user):
    """The user's own tokens, newest first; never anyone else's."""
    return ApiToken.objects.filter(user=user).select_related("team")


def verified_email_of(*, user) -> str:
    """The address the user has shown to be theirs (``VerifiedEmail``), "" if none."""
    if not user.is_authenticated:
        return ""
    return VerifiedEmail.objects.filter(user=user).values_list("email", flat=True).first() or ""


def user_with_verified_email(email: str):
    """The account whose verified address ``email`` is (any letter case), or None."""
    found = VerifiedEmail.objects.filter(email__iexact=email.strip()).values_list("user_id", flat=True).first()
    return get_user_model().objects.filter(pk=found, is_active=True).first() if found else None


def invitations_for_user(*, user) -> list[Invitation]:
    """Usable invitations sent to the user's verified address, to teams they are not in yet."""
    email = verified_email_of(user=user)
    if not email:
        return []
    return list(Invitation.objects.filter(email__iexact=email, accepted_at=None, revoked_at=None,
                                          expires_at__gt=timezone.now())
                .exclude(team__memberships__user=user).select_related("team", "created_by"))
