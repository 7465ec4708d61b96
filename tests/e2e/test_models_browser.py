"""Adding a model from the hub in headless Chromium: the Models page's form
queues a download job (through huggingface_hub, from the stack's hub on
127.0.0.1); its page shows the bar moving in bytes; the model then appears
on the Models page with its facts and in the new-job form."""

import re

import pytest

from tests.e2e.test_browser_flow import browser, logged_in_page  # noqa: F401 (browser is a fixture)
from tests.hub_server import Repo, model_repo_files

pytestmark = pytest.mark.e2e


def test_add_a_model_from_the_hub_and_watch_the_download(browser, stack):
    stack.hub.repos["acme/browser-llama"] = Repo(files=model_repo_files(stack.tiny_model_path))
    stack.hub.bytes_per_s = 3 * 2**20  # about two seconds for the 6 MiB of weights
    try:
        page = logged_in_page(browser, stack)
        page.goto(stack.base_url + "/models/")
        page.fill("#add-from-hub input[name=repo_id]", "acme/browser-llama")
        page.click("#add-from-hub button[type=submit]")
        page.wait_for_url("**/jobs/*/")
        # The bar follows the download in bytes, from the job's event stream.
        page.wait_for_function("document.getElementById('progress-text').textContent.includes('MiB /')",
                               timeout=60_000)
        assert re.search(r"Downloading acme/browser-llama: \d+ of \d+ files", page.inner_text("#progress-text"))
        page.wait_for_selector("#job-status[data-status=succeeded]", timeout=120_000)
    finally:
        stack.hub.bytes_per_s = 0
    page.goto(stack.base_url + "/models/")
    row = page.locator("#models tr", has_text="acme/browser-llama")
    assert "Llama" in row.inner_text() and "acme/browser-llama@0123456789ab" in row.inner_text()
    page.goto(stack.base_url + "/jobs/new/")
    assert page.locator("select[name=base_model] option", has_text="acme/browser-llama").count() == 1
