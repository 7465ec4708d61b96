"""Which teams a user can see and act in."""

from studio.accounts.models import ApiToken, Membership, Team


def team_ids_for_user(*, user) -> list[int]:
    if not user.is_authenticated:
        return []
    return list(Membership.objects.filter(user=user).values_list("team_id", flat=True))


def team_for_new_work(*, user) -> Team | None:
    """The team a user's new uploads and jobs go to: their first team where
    they may write (member or admin). Team switching comes with teams UI."""
    membership = (Membership.objects.filter(user=user, role__in=[Membership.Role.MEMBER, Membership.Role.ADMIN])
                  .select_related("team").order_by("created_at").first())
    return membership.team if membership else None


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
