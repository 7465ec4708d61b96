"""Team secrets: stored encrypted with a key derived from SECRETS_KEY (or,
when unset, SECRET_KEY), so a copy of the database alone does not give away
a team's hub tokens. Rotating that key makes stored secrets unreadable: a
job then fails asking the team to enter the token again."""

from __future__ import annotations

import base64
import hashlib

from cryptography.fernet import Fernet, InvalidToken
from django.conf import settings
from django.utils import timezone

from studio.accounts.models import TeamSecret
from tuning.errors import ConfigError


class SecretUnreadable(Exception):
    pass


def _fernet() -> Fernet:
    material = (getattr(settings, "SECRETS_KEY", "") or settings.SECRET_KEY).encode()
    return Fernet(base64.urlsafe_b64encode(hashlib.sha256(b"studio-team-secrets:" + material).digest()))


def secret_create(*, team, user, name: str, value: str) -> TeamSecret:
    value = value.strip()
    return TeamSecret.objects.create(team=team, created_by=user, name=name[:100], hint=value[-4:] if len(value) > 11
                                     else "", ciphertext=_fernet().encrypt(value.encode()).decode())


def secret_for_job(*, user, team, pasted: str, secret_id: int | None, name: str, field: str) -> int | None:
    """The team secret a job names: a ``pasted`` value is stored as a new one called ``name``, else the saved
    one picked (ConfigError on ``field`` when the team has no such secret), else none."""
    if pasted.strip():
        return secret_create(team=team, user=user, name=name, value=pasted).pk
    if secret_id:
        if not TeamSecret.objects.filter(pk=secret_id, team=team).exists():
            raise ConfigError({field: "no such saved secret in this team"})
        return secret_id
    return None


def secret_value(*, secret_id: int, team_id: int) -> str:
    """The secret in clear, for the job of ``team_id`` that uses it (a worker only)."""
    secret = TeamSecret.objects.filter(pk=secret_id, team_id=team_id).first()
    if secret is None:
        raise SecretUnreadable("the access token this job names was deleted; add it again and start a new job")
    try:
        value = _fernet().decrypt(secret.ciphertext.encode()).decode()
    except InvalidToken:
        raise SecretUnreadable(f"the stored secret '{secret.name}' cannot be decrypted (the server's key changed); "
                               "enter the token again") from None
    TeamSecret.objects.filter(pk=secret.pk).update(last_used_at=timezone.now())
    return value
