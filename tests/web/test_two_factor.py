"""Two-factor sign-in (django-otp TOTP + recovery codes): set up with the
secret the page shows and a code computed from it (django-otp's own TOTP),
log in with the password then a code, a recovery code works once, wrong
codes are refused and throttled, REQUIRE_2FA_FOR_ADMINS sends admins to set
it up first while their API tokens keep working, and the audit log records it."""

import re
import time
from base64 import b32decode

import pytest
from django.test import Client
from django_otp.oath import TOTP

from studio.accounts.models import Membership
from studio.accounts.services import api_token_create, default_team, user_create
from studio.audit.models import AuditEntry

PASSWORD = "pw-ada-12345"


def code_for(secret: str, *, steps_ahead: int = 0) -> str:
    """The code an authenticator app shows for ``secret``, ``steps_ahead`` 30-second steps from now
    (django-otp accepts one step of drift; a code it took once is not taken again)."""
    totp = TOTP(b32decode(secret))
    totp.time = time.time() + 30 * steps_ahead
    return f"{totp.token():06d}"


@pytest.fixture(autouse=True)
def no_throttle(settings):
    """django-otp makes each wrong code double the wait before the next try (1 s after the first):
    the tests type wrong codes on purpose, then right ones at once. test_wrong_codes_are_throttled
    turns it back on."""
    settings.OTP_TOTP_THROTTLE_FACTOR = settings.OTP_STATIC_THROTTLE_FACTOR = 0


@pytest.fixture
def ada(db):
    return user_create(username="ada", password=PASSWORD, team=default_team(), role=Membership.Role.ADMIN)


def logged_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def enrol(client) -> tuple[str, list[str]]:
    """Set up two-factor through the page: the secret it shows, the recovery codes it shows once."""
    client.post("/accounts/two-factor/start/")
    page = client.get("/accounts/two-factor/").content.decode()
    assert "<svg" in page  # the QR code, inline
    secret = re.search(r'id="two-factor-secret">([A-Z2-7]+)<', page).group(1)
    wrong = client.post("/accounts/two-factor/confirm/", {"code": "000000" if code_for(secret) != "000000" else "1"})
    assert wrong.status_code == 400 and "not right" in wrong.content.decode()
    done = client.post("/accounts/two-factor/confirm/", {"code": code_for(secret)})
    assert done.status_code == 200 and "no-store" in done["Cache-Control"]
    codes = re.findall(r"<li><code>([a-z2-7]+)</code></li>", done.content.decode())
    assert len(codes) == 10
    return secret, codes


def password_step(client, password=PASSWORD, username="ada"):
    return client.post("/accounts/login/", {"username": username, "password": password, "next": "/datasets/"})


def test_enrol_then_log_in_with_a_generated_code(ada):
    secret, _ = enrol(logged_in(ada))
    assert "2fa.enabled" in AuditEntry.objects.values_list("action", flat=True)

    client = Client()
    first = password_step(client)
    assert first.status_code == 302 and first.url == "/accounts/login/code/"
    assert client.get("/datasets/").status_code == 302  # not signed in until the code
    wrong = client.post("/accounts/login/code/", {"code": "12345x"})
    assert wrong.status_code == 400 and "not right" in wrong.content.decode()
    right = client.post("/accounts/login/code/", {"code": code_for(secret, steps_ahead=1)})
    assert right.status_code == 302 and right.url == "/datasets/"
    assert client.get("/datasets/").status_code == 200

    replay = Client()  # the same code again (as a thief who watched it typed): refused
    password_step(replay)
    assert replay.post("/accounts/login/code/", {"code": code_for(secret, steps_ahead=1)}).status_code == 400


def test_a_wrong_password_never_reaches_the_code_step(ada):
    enrol(logged_in(ada))
    client = Client()
    assert "enter a correct username and password" in password_step(client, password="wrong").content.decode()
    assert client.get("/accounts/login/code/").url == "/accounts/login/"


def test_a_recovery_code_works_once(ada):
    _, codes = enrol(logged_in(ada))
    client = Client()
    password_step(client)
    assert client.post("/accounts/login/code/", {"code": codes[0].upper()}).status_code == 302
    entry = AuditEntry.objects.filter(action="2fa.recovery_code_used").get()
    assert entry.detail == {"left": 9}

    again = Client()
    password_step(again)
    assert again.post("/accounts/login/code/", {"code": codes[0]}).status_code == 400
    assert "9 recovery codes left" in client.get("/accounts/two-factor/").content.decode()


def test_turning_off_needs_a_current_code(ada):
    secret, _ = enrol(client := logged_in(ada))
    again = client.post("/accounts/two-factor/start/")  # a stolen session cannot move it to another phone
    assert again.status_code == 409 and "turn it off" in again.content.decode()
    assert client.post("/accounts/two-factor/disable/", {"code": "nope"}).status_code == 400
    assert client.post("/accounts/two-factor/disable/", {"code": code_for(secret, steps_ahead=1)}).status_code == 302
    assert "2fa.disabled" in AuditEntry.objects.values_list("action", flat=True)
    assert password_step(Client()).url == "/datasets/"  # no code asked any more


def test_the_requirement_sends_an_admin_to_set_up_first_but_tokens_still_work(ada, settings):
    settings.REQUIRE_2FA_FOR_ADMINS = True
    _, token = api_token_create(user=ada, name="provisioning script")
    client = logged_in(ada)
    response = client.get("/datasets/")
    assert response.status_code == 302 and response.url == "/accounts/two-factor/?required=1"
    assert "requires two-factor" in client.get(response.url).content.decode()
    refused = client.get("/api/v1/fine_tuning/jobs")
    assert refused.status_code == 403 and "two-factor" in refused.json()["error"]["message"]
    scripted = Client().get("/api/v1/fine_tuning/jobs", HTTP_AUTHORIZATION=f"Bearer {token}")
    assert scripted.status_code == 200

    member = user_create(username="tim", password="pw-tim-12345", team=default_team())
    assert logged_in(member).get("/datasets/").status_code == 200  # members are not held to it

    secret, _ = enrol(client)
    assert client.get("/datasets/").status_code == 200
    off = client.post("/accounts/two-factor/disable/", {"code": code_for(secret, steps_ahead=1)})
    assert off.status_code == 403 and "requires two-factor" in off.content.decode()


def test_the_admin_site_login_asks_for_the_code_too(ada):
    enrol(logged_in(ada))
    client = Client()
    response = client.post("/admin/login/", {"username": "ada", "password": PASSWORD})
    assert response.status_code == 302 and response.url == "/accounts/login/code/"


def test_wrong_codes_are_throttled(ada, settings):
    secret, _ = enrol(logged_in(ada))
    settings.OTP_TOTP_THROTTLE_FACTOR = settings.OTP_STATIC_THROTTLE_FACTOR = 60
    client = Client()
    password_step(client)
    assert client.post("/accounts/login/code/", {"code": "000001"}).status_code == 400
    refused = client.post("/accounts/login/code/", {"code": code_for(secret, steps_ahead=1)})
    assert refused.status_code == 400 and "wait" in refused.content.decode()  # the right code, too soon
