"""The API docs page in headless Chromium with the Content-Security-Policy
enforced: the vendored Swagger UI (static/vendor) draws every operation of
/api/v1/openapi.json, the /v1/ OpenAI-compatible ones included, with no
violation, and the nav links to it."""

import pytest

from tests.e2e.test_browser_flow import browser, logged_in_page  # noqa: F401 (browser is a fixture)

pytestmark = pytest.mark.e2e


def test_the_docs_page_renders_the_operations(browser, stack):
    page = logged_in_page(browser, stack, enforce_csp=True)
    violations, failed = [], []
    page.on("console", lambda message: "Content Security Policy" in message.text and violations.append(message.text))
    page.on("requestfailed", lambda request: failed.append(request.url))
    page.click("nav a:has-text('API docs')")
    page.wait_for_url(stack.base_url + "/api/docs/")
    page.wait_for_selector("#swagger-ui .opblock")
    paths = page.locator("#swagger-ui .opblock-summary-path").all_inner_texts()
    schema = page.request.get(stack.base_url + "/api/v1/openapi.json").json()
    operations = sum(len(set(item) - {"servers"}) for item in schema["paths"].values())
    assert len(paths) == operations >= 30
    for path in ("/fine_tuning/jobs", "/datasets/{dataset_id}/operations", "/merges", "/v1/chat/completions"):
        assert path in [p.replace("\u200b", "") for p in paths], path  # Swagger UI breaks long paths with ZWSPs
    # An operation opens with its parameters and responses.
    page.locator("#swagger-ui .opblock-summary", has_text="/fine_tuning/jobs/{job_id}/events").first.click()
    page.wait_for_selector("#swagger-ui .opblock.is-open .parameters-container")
    assert "after" in page.inner_text("#swagger-ui .opblock.is-open")
    # The worked examples sit above the reference.
    assert "/api/v1/artifacts/5/content" in page.inner_text("#example-curl")
    assert violations == [] and failed == []
