"""Two-factor in headless Chromium: a user sets it up from the page the header's
user name links to (the secret beside the QR code, a code computed from it as
an authenticator app would), sees the recovery codes once, logs out, and
logging in again asks for the code after the password."""

import re

import pytest

from tests.e2e.test_browser_flow import browser  # noqa: F401 (a fixture)
from tests.web.test_two_factor import code_for

pytestmark = pytest.mark.e2e

TESS = ("tess", "tess-pass-12345")


def log_in_with_password(page, stack):
    page.goto(stack.base_url + "/")
    page.fill("input[name=username]", TESS[0])
    page.fill("input[name=password]", TESS[1])
    page.click("button[type=submit]")


def test_set_up_two_factor_then_log_in_with_a_code(browser, stack):
    stack.manage("shell", "-c", "from studio.accounts.services import user_create; "
                                f"user_create(username={TESS[0]!r}, password={TESS[1]!r})")
    page = browser.new_context().new_page()  # the studio's CSP enforced
    page.set_default_timeout(60_000)
    log_in_with_password(page, stack)
    page.wait_for_url(stack.base_url + "/")
    page.click(f"form.logout a:has-text('{TESS[0]}')")
    page.click("#start-two-factor")
    assert page.locator("#two-factor-qr svg").count() == 1
    secret = page.inner_text("#two-factor-secret")
    page.fill("input[name=code]", code_for(secret))
    page.click("#confirm-two-factor")
    codes = page.locator("#recovery-codes li code").all_inner_texts()
    assert len(codes) == 10 and all(re.fullmatch(r"[a-z2-7]{8}", code) for code in codes)
    assert "Two-factor sign-in is on" in page.inner_text("#two-factor-status")
    page.click("form.logout button")

    log_in_with_password(page, stack)
    page.wait_for_url("**/accounts/login/code/")
    page.fill("input[name=code]", code_for(secret, steps_ahead=1))
    page.click("button[type=submit]")
    page.wait_for_url(stack.base_url + "/")
    assert TESS[0] in page.inner_text("form.logout")
