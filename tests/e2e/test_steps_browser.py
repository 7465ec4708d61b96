"""In headless Chromium: queue fold → quantize from a training job's page and
read the report; chat with two artifacts in the playground and watch the
tokens arrive. SCREENSHOT_DIR=docs/screenshots saves the pages for the README."""

import json
import os
import re

import pytest

from tests.e2e.test_browser_flow import browser, logged_in_page  # noqa: F401 (browser is a fixture)

pytestmark = pytest.mark.e2e

ROWS = "".join(json.dumps({"instruction": f"Say {word}.", "output": f"{word.capitalize()}!"}) + "\n"
               for word in ["hello", "yes", "blue", "green"])


def screenshot(page, name: str) -> None:
    if os.environ.get("SCREENSHOT_DIR"):
        page.screenshot(path=os.path.join(os.environ["SCREENSHOT_DIR"], name), full_page=True)


@pytest.fixture(scope="module")
def finished_job(stack):
    admin = stack.login()
    dataset_id = stack.upload(admin, "steps-words.jsonl", ROWS)
    job_id = stack.start_job(admin, dataset_id, max_steps=3, golden_prompts="Say hello.\nSay blue.")
    stack.wait_for_status(admin, job_id, {"succeeded"})
    return admin, job_id


def test_queue_fold_and_quantize_from_the_job_page_and_read_the_report(browser, stack, finished_job):  # noqa: F811
    _, job_id = finished_job
    page = logged_in_page(browser, stack)
    page.goto(f"{stack.base_url}/jobs/{job_id}/")
    # The golden prompts, answered before training and by the output (step 3), side by side.
    page.wait_for_selector("#golden:not([hidden])")
    header = page.locator("#golden-table tr").first.inner_text()
    assert "before training" in header and "step 3" in header
    assert page.locator("#golden-table tr").count() == 3  # a header and two prompts
    page.select_option("#chain-scheme", "safetensors_fp16")
    page.click("#chain-form button[type=submit]")
    queued = page.wait_for_selector("#chain-form .notice")
    fold_url, quantize_url = re.findall(r'href="(/jobs/\d+/)"', queued.inner_html())

    page.goto(stack.base_url + quantize_url)
    page.wait_for_selector("#job-status[data-status=succeeded]", timeout=300_000)
    assert "Safetensors fp16" in page.inner_text("#log") or page.locator("progress#progress").count() == 1
    page.click("#job-status >> text=Model page")
    page.wait_for_selector("#report")
    report = page.inner_text("#report")
    assert "Weights on disk" in report and "Next-token agreement" in report  # the default report's parts
    assert page.locator("#report table.answers tr").count() == 0  # answers are a part the default leaves off
    lineage = page.inner_text("#lineage")
    assert "fold" in lineage and "adapter" in lineage
    screenshot(page, "artifact.png")


def test_chat_with_two_artifacts_side_by_side_and_watch_tokens_stream(browser, stack, finished_job):  # noqa: F811
    admin, job_id = finished_job
    artifact_id = next(e for e in stack.job_state(admin, job_id)["events"]
                       if e["kind"] == "artifact")["data"]["artifact_id"]
    page = logged_in_page(browser, stack)
    page.goto(f"{stack.base_url}/playground/?artifact={artifact_id}")
    page.wait_for_selector("#playground-state:has-text('Ready')")
    page.select_option("#artifact-b", str(artifact_id))
    page.click("summary:has-text('Generation settings')")
    page.fill("#temperature", "0")
    page.fill("#max_new_tokens", "12")
    page.fill("#prompt", "Say hello.")
    # Count how often each answer grows: streamed text grows piece by piece.
    page.evaluate("""() => { window.growth = {a: 0, b: 0};
        for (const side of ['a', 'b']) new MutationObserver(() => window.growth[side]++)
            .observe(document.getElementById('answer-' + side), {childList: true, characterData: true, subtree: true}); }""")
    page.click("#send")
    for side in "ab":
        page.wait_for_selector(f".answer[data-side={side}] .answer-stats:has-text('pieces in')", timeout=120_000)
    growth = page.evaluate("window.growth")
    assert growth["a"] >= 2 and growth["b"] >= 2, growth
    # Greedy decoding of one model twice: the two columns agree.
    assert page.inner_text("#answer-a") == page.inner_text("#answer-b") != ""
    screenshot(page, "playground.png")
