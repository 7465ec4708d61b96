"""Strict parsing of settings from environment variables: a bad value stops
start-up with a message naming the variable, instead of a surprise later."""

from __future__ import annotations

import json
import os

from django.core.exceptions import ImproperlyConfigured

TRUE, FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off", ""}


def env_str(name: str, default: str = "") -> str:
    return os.environ.get(name, default).strip()


def env_bool(name: str, default: bool = False) -> bool:
    raw = os.environ.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in TRUE:
        return True
    if value in FALSE:
        return False
    raise ImproperlyConfigured(f"{name}={raw!r} is not a boolean; use true or false")


def env_int(name: str, default: int, *, minimum: int = 0) -> int:
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        raise ImproperlyConfigured(f"{name}={raw!r} is not a whole number") from None
    if value < minimum:
        raise ImproperlyConfigured(f"{name}={value} must be at least {minimum}")
    return value


def env_list(name: str, default: list[str]) -> list[str]:
    raw = os.environ.get(name)
    return default if raw is None else [item.strip() for item in raw.split(",") if item.strip()]


ROLES = ("viewer", "member", "admin")


def env_group_teams(name: str) -> dict[str, tuple[str, str]]:
    """A JSON object from an identity provider's group to [team slug, role], e.g.
    ``{"ml-team": ["ml", "member"]}`` (OIDC_GROUP_TEAMS)."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return {}
    try:
        parsed = json.loads(raw)
    except ValueError as error:
        raise ImproperlyConfigured(f"{name} is not JSON ({error}); e.g. {{\"ml-team\": [\"ml\", \"member\"]}}") \
            from None
    if not isinstance(parsed, dict):
        raise ImproperlyConfigured(f"{name} must be a JSON object from group to [team slug, role]")
    mapping = {}
    for group, target in parsed.items():
        if not (isinstance(target, list) and len(target) == 2 and all(isinstance(t, str) for t in target)
                and target[1] in ROLES):
            raise ImproperlyConfigured(f"{name}[{group!r}] = {target!r}: give [team slug, role], the role one of "
                                       f"{', '.join(ROLES)}")
        mapping[group] = (target[0], target[1])
    return mapping
