"""Creating users and team memberships; API tokens."""

import hashlib
import hmac
import secrets

from django.contrib.auth import get_user_model
from django.db import transaction
from django.utils import timezone

from studio.accounts.models import DEFAULT_TEAM_SLUG, ApiToken, Membership, Team


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


# API tokens look like "tst_<prefix>_<secret>": the prefix finds the row,
# the sha256 of the whole token proves it. The "tst_" tag lets secret
# scanners (and people) recognise a leaked Tuning Studio token.
TOKEN_TAG = "tst_"


def _token_hash(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def api_token_create(*, user, name: str, team: Team | None = None) -> tuple[ApiToken, str]:
    """A new token and its secret; the secret is never stored or shown again.
    ``team`` must be one of the user's teams (or None: all of them)."""
    if team is not None and not Membership.objects.filter(user=user, team=team).exists():
        raise ValueError(f"{user} is not in team {team}")
    prefix = secrets.token_hex(6)  # 48 bits: collisions are rare; the unique index catches them
    raw = f"{TOKEN_TAG}{prefix}_{secrets.token_urlsafe(32)}"
    token = ApiToken.objects.create(user=user, team=team, name=name.strip()[:100] or "API token", prefix=prefix,
                                    hashed_secret=_token_hash(raw))
    return token, raw


def api_token_revoke(*, user, token_id: int) -> ApiToken:
    """Revoke one of the user's own tokens (another user's → DoesNotExist)."""
    token = ApiToken.objects.get(pk=token_id, user=user)
    if token.revoked_at is None:
        token.revoked_at = timezone.now()
        token.save(update_fields=["revoked_at"])
    return token


# last_used_at is written at most this often per token, so that a script
# polling the API does not turn every read into a database write.
TOKEN_USE_RESOLUTION_S = 60


def api_token_authenticate(*, raw: str) -> ApiToken | None:
    """The active token for a presented ``raw`` token, or None (unknown,
    malformed, revoked or its user deactivated)."""
    if not raw.startswith(TOKEN_TAG) or raw.count("_") < 2:
        return None
    prefix = raw[len(TOKEN_TAG):].split("_", 1)[0]
    token = ApiToken.objects.select_related("user", "team").filter(prefix=prefix, revoked_at=None).first()
    if token is None or not hmac.compare_digest(token.hashed_secret, _token_hash(raw)):
        return None
    if not token.user.is_active:
        return None
    now = timezone.now()
    if token.last_used_at is None or (now - token.last_used_at).total_seconds() > TOKEN_USE_RESOLUTION_S:
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
        token.last_used_at = now
    return token
