"""Publishing an adapter from its artifact page in headless Chromium: the
Publish form queues a job, the section shows its bar moving in bytes (the
stack's hub on 127.0.0.1 reads slowly here), then where it was published and
the commit, without a reload; the token is never shown back."""

import json

import pytest

from tests.e2e.test_browser_flow import browser, logged_in_page  # noqa: F401 (browser is a fixture)

pytestmark = pytest.mark.e2e

ROWS = "".join(json.dumps({"instruction": f"Say {word}.", "output": f"{word.capitalize()}!"}) + "\n"
               for word in ["hello", "yes", "blue", "green"])


def test_publish_an_adapter_and_watch_the_upload(browser, stack):
    admin = stack.login()
    job_id = stack.start_job(admin, stack.upload(admin, "browser-publish.jsonl", ROWS), max_steps=2)
    state = stack.wait_for_status(admin, job_id, {"succeeded"})
    artifact_id = next(e for e in state["events"] if e["kind"] == "artifact")["data"]["artifact_id"]
    stack.hub.add_user("hf_browser_write_token", "browser-user")
    stack.hub.bytes_per_s = 8 * 1024  # the adapter's weights take a few seconds to arrive
    try:
        page = logged_in_page(browser, stack)
        page.goto(f"{stack.base_url}/artifacts/{artifact_id}/")
        assert "Not published yet." in page.inner_text("#publish")
        page.click("#publish summary")
        page.fill("#publish input[name=repo_id]", "browser-user/words-lora")
        page.fill("#publish input[name=token]", "hf_browser_write_token")
        page.fill("#publish input[name=commit_message]", "From the browser")
        page.click("#publish-submit")
        # The section now follows the publish job: its bar counts the bytes sent.
        page.wait_for_function("[...document.querySelectorAll('#publish [data-role=text]')]"
                               ".some(el => /Uploading to browser-user\\/words-lora: .*B \\/ /.test(el.textContent))",
                               timeout=120_000)
        # When the job ends the section is fetched again: where, on which branch, which commit.
        page.wait_for_selector("#publications tr[data-publication]", timeout=120_000)
    finally:
        stack.hub.bytes_per_s = 0
    repo = stack.hub.repos["browser-user/words-lora"]
    row = page.inner_text("#publications")
    assert "browser-user/words-lora" in row and "private" in row and repo.sha[:12] in row and "main" in row
    assert repo.commits[-1]["summary"] == "From the browser" and "adapter_model.safetensors" in repo.files
    assert "hf_browser_write_token" not in page.content()
