"""Creating users and team memberships."""

import secrets

from django.contrib.auth import get_user_model
from django.db import transaction

from studio.accounts.models import DEFAULT_TEAM_SLUG, Membership, Team


def default_team() -> Team:
    team, _ = Team.objects.get_or_create(slug=DEFAULT_TEAM_SLUG, defaults={"name": "Default team"})
    return team


@transaction.atomic
def user_create(*, username: str, password: str, team: Team | None = None, role: str = Membership.Role.MEMBER,
                is_superuser: bool = False):
    User = get_user_model()
    factory = User.objects.create_superuser if is_superuser else User.objects.create_user
    user = factory(username=username, password=password, email="")
    Membership.objects.create(user=user, team=team or default_team(), role=role)
    return user


def admin_ensure(*, username: str, password: str | None) -> tuple[object, str | None]:
    """Create the first admin unless one exists. Returns (user, generated
    password or None); a generated password is shown to the operator once."""
    User = get_user_model()
    existing = User.objects.filter(username=username).first()
    if existing:
        return existing, None
    generated = None
    if not password:
        password = generated = secrets.token_urlsafe(12)
    user = user_create(username=username, password=password, role=Membership.Role.ADMIN, is_superuser=True)
    return user, generated
