"""Logins and tokens that keep failing are locked out (django-axes), every
page carries a Content-Security-Policy that allows no inline script, and the
production settings pass Django's deployment check behind HTTPS."""

import os
import re
import subprocess
import sys
from pathlib import Path

from studio.accounts.services import api_token_create, user_create
from studio.security import CONTENT_SECURITY_POLICY

REPO = Path(__file__).resolve().parents[2]


def test_a_login_that_keeps_failing_is_locked_out_even_with_the_right_password(client, db, settings):
    user_create(username="carol", password="pw-carol-12345")
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        response = client.post("/accounts/login/", {"username": "carol", "password": "guess"})
        assert response.status_code == 200 and "enter a correct username and password" in response.content.decode()
    assert client.post("/accounts/login/", {"username": "carol", "password": "guess"}).status_code == 429
    locked = client.post("/accounts/login/", {"username": "carol", "password": "pw-carol-12345"})
    page = locked.content.decode()
    assert locked.status_code == 429 and "Too many failed logins" in page and "Traceback" not in page
    assert "_auth_user_id" not in client.session
    # Another user from the same address is not locked out by carol's failures.
    user_create(username="dave", password="pw-dave-123456")
    assert client.post("/accounts/login/", {"username": "dave", "password": "pw-dave-123456"}).status_code == 302


def test_an_address_that_keeps_guessing_api_tokens_is_locked_out(client, member, settings):
    for _ in range(settings.AXES_FAILURE_LIMIT):
        guess = client.get("/api/v1/models", HTTP_AUTHORIZATION="Bearer tsk_000000000000_guess")
        assert guess.status_code == 401
    _, real = api_token_create(user=member, name="script")
    locked = client.get("/api/v1/models", HTTP_AUTHORIZATION=f"Bearer {real}")
    assert locked.status_code == 429 and "Too many unknown API tokens" in locked.json()["error"]["message"]


def test_every_page_forbids_inline_scripts(member_client):
    response = member_client.get("/datasets/")
    policy = response["Content-Security-Policy"]
    assert policy == CONTENT_SECURITY_POLICY and "script-src 'self'" in policy and "unsafe" not in policy.split(
        "style-src")[0]
    assert "frame-ancestors 'none'" in policy and response["X-Frame-Options"] == "DENY"
    # So no template may carry an inline handler, an inline script or an htmx expression that needs eval.
    for template in (REPO / "templates").rglob("*.html"):
        text = template.read_text()
        assert not re.search(r"\son[a-z]+=\"", text), f"{template}: inline event handler"
        assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", text), f"{template}: inline script"
        assert "hx-on" not in text and not re.search(r'hx-trigger="[^"]*\[', text), f"{template}: needs eval"


def test_passwords_are_hashed_with_argon2_in_production():
    from studio import settings as production

    assert production.PASSWORD_HASHERS[0].endswith("Argon2PasswordHasher")
    assert {v["NAME"].rsplit(".", 1)[1] for v in production.AUTH_PASSWORD_VALIDATORS} >= {
        "MinimumLengthValidator", "CommonPasswordValidator", "NumericPasswordValidator",
        "UserAttributeSimilarityValidator"}


def test_the_deployment_check_passes_behind_https(tmp_path):
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "studio.settings", "DATA_DIR": str(tmp_path), "HTTPS": "true",
           "SECRET_KEY": "k" * 20 + "-production-secret-key-with-enough-entropy-0123456789",
           "ALLOWED_HOSTS": "studio.example.com", "DEBUG": "false"}
    result = subprocess.run([sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout
