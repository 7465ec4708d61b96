"""A team admin invites a colleague in headless Chromium: the team page makes
a single-use link; the colleague opens it in their own browser, makes an
account and sees the team's jobs; the admin makes them a viewer (it holds on
their next page) and cannot leave the team as its last admin."""

import re

import pytest

from tests.e2e.test_browser_flow import browser, logged_in_page  # noqa: F401 (browser is a fixture)

pytestmark = pytest.mark.e2e


def test_invite_join_change_role_and_the_last_admin_stays(browser, stack):
    admin = logged_in_page(browser, stack)
    admin.click("a.team-link")
    admin.wait_for_selector("#members")
    admin.select_option("#invitations select[name=role]", "member")
    admin.click("#invite")
    link = re.search(r"https?://\S+/join/inv_\S+", admin.inner_text("#invitation-link")).group(0)

    colleague = browser.new_context(bypass_csp=True).new_page()
    colleague.goto(link)
    assert "Join" in colleague.inner_text("h1")
    colleague.fill("input[name=username]", "colleague")
    colleague.fill("input[name=password]", "a-long-enough-pass")
    colleague.click("#join-team")
    colleague.wait_for_selector("#members")
    assert "colleague (you)" in colleague.inner_text("#members")
    colleague.goto(stack.base_url + "/")
    assert colleague.locator("a[href^='/jobs/']").count() >= 1  # the team's jobs (earlier tests ran some)

    admin.reload()
    admin.select_option("tr[data-member=colleague] select[name=role]", "viewer")
    admin.click("tr[data-member=colleague] .role-form button")
    admin.wait_for_selector("tr[data-member=colleague] option[value=viewer][selected]", state="attached")
    colleague.goto(stack.base_url + "/datasets/")  # a viewer's upload is refused, saying why
    colleague.set_input_files("input[name=file]", files=[{"name": "rows.jsonl", "mimeType": "application/json",
                                                          "buffer": b'{"instruction": "a", "output": "b"}\n'}])
    colleague.click("#upload-form button[type=submit]")
    colleague.wait_for_selector("text=view-only access")

    admin.click("#leave-team")
    assert "last admin cannot leave" in admin.inner_text("#team-error")
