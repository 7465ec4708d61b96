"""Which teams a user can see and act in."""

from studio.accounts.models import Membership, Team


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
