"""Two-factor sign-in (TOTP) for accounts with a local password, through
django-otp: an authenticator app's 6-digit codes (``TOTPDevice``) and ten
recovery codes (``StaticDevice``, each usable once: django-otp deletes a
static token when it matches). django-otp also throttles wrong codes (each
failure doubles the wait before the next try) and refuses a TOTP code that
was already used. Accounts that sign in through the identity provider
(``studio.accounts.oidc``) get their second factor there.

Every change is in the audit log of each of the user's teams."""

from __future__ import annotations

from base64 import b32encode

import segno
from django.db import transaction
from django_otp.plugins.otp_static.models import StaticDevice, StaticToken
from django_otp.plugins.otp_totp.models import TOTPDevice

from studio.accounts.selectors import teams_for_user
from studio.audit.services import audit_record

RECOVERY_CODES = 10
APP_DEVICE = "authenticator app"
RECOVERY_DEVICE = "recovery codes"


def _audit(*, user, action: str, request=None, detail: dict | None = None) -> None:
    for team in teams_for_user(user=user) or [None]:
        audit_record(user=user, team=team, action=action, target=user, request=request, detail=detail)


def _code(raw: str) -> str:
    """What people type: spaces and dashes (as apps group the digits) dropped, lower case."""
    return "".join(raw.split()).replace("-", "").lower()


def has_second_factor(user) -> bool:
    return TOTPDevice.objects.filter(user=user, confirmed=True).exists()


def recovery_codes_left(user) -> int:
    return StaticToken.objects.filter(device__user=user, device__confirmed=True).count()


def enrolment_pending(user) -> TOTPDevice | None:
    """The authenticator being set up (shown as a QR code until a code from it confirms it)."""
    return TOTPDevice.objects.filter(user=user, confirmed=False).first()


def enrolment_start(*, user) -> TOTPDevice:
    """A new secret for the user's authenticator app; it counts only once a code from it is confirmed."""
    with transaction.atomic():
        TOTPDevice.objects.filter(user=user, confirmed=False).delete()
        return TOTPDevice.objects.create(user=user, name=APP_DEVICE, confirmed=False)


def enrolment_secret(device: TOTPDevice) -> str:
    """The base32 secret, for typing into an app that cannot scan."""
    return b32encode(device.bin_key).decode()


def enrolment_qr_svg(device: TOTPDevice) -> str:
    """The otpauth:// link as an inline SVG QR code (the page's CSP allows no external image)."""
    return segno.make(device.config_url, error="m").svg_inline(scale=4)


def _new_recovery_codes(user) -> list[str]:
    StaticDevice.objects.filter(user=user).delete()
    device = StaticDevice.objects.create(user=user, name=RECOVERY_DEVICE, confirmed=True)
    codes = [StaticToken.random_token() for _ in range(RECOVERY_CODES)]
    StaticToken.objects.bulk_create([StaticToken(device=device, token=code) for code in codes])
    return codes


def enrolment_confirm(*, user, code: str, request=None) -> list[str] | None:
    """Turn two-factor on with a code from the new authenticator. Returns the recovery codes (to be
    shown once), or None when the code is wrong."""
    device = enrolment_pending(user)
    if device is None or not device.verify_token(_code(code)):
        return None
    with transaction.atomic():
        TOTPDevice.objects.filter(user=user, confirmed=True).delete()
        device.confirmed = True
        device.save(update_fields=["confirmed"])
        codes = _new_recovery_codes(user)
        _audit(user=user, action="2fa.enabled", request=request)
    return codes


def second_factor_verify(*, user, code: str, request=None) -> bool:
    """Whether ``code`` is the user's current authenticator code or one of their unused recovery codes
    (which is then used up)."""
    code = _code(code)
    if not code:
        return False
    for device in TOTPDevice.objects.filter(user=user, confirmed=True):
        if code.isdigit() and device.verify_token(code):
            return True
    for device in StaticDevice.objects.filter(user=user, confirmed=True):
        if device.verify_token(code):
            _audit(user=user, action="2fa.recovery_code_used", request=request,
                   detail={"left": recovery_codes_left(user)})
            return True
    return False


def recovery_codes_renew(*, user, code: str, request=None) -> list[str] | None:
    """Ten new recovery codes (the old ones stop working), given a current code; None when it is wrong."""
    if not has_second_factor(user) or not second_factor_verify(user=user, code=code, request=request):
        return None
    with transaction.atomic():
        codes = _new_recovery_codes(user)
        _audit(user=user, action="2fa.recovery_codes_renewed", request=request)
    return codes


def second_factor_disable(*, user, code: str, request=None) -> bool:
    """Turn two-factor off, given a current code."""
    if not second_factor_verify(user=user, code=code, request=request):
        return False
    with transaction.atomic():
        TOTPDevice.objects.filter(user=user).delete()
        StaticDevice.objects.filter(user=user).delete()
        _audit(user=user, action="2fa.disabled", request=request)
    return True
