"""A job's system prompt, set in the new-job form in headless Chromium: a
custom prompt without text is refused next to the field, then a job with
one trains and its log says which system prompt the rows were rendered with
(tests/core/test_system_prompts.py proves what reaches the tokens)."""

import json

import pytest

from tests.e2e.test_browser_flow import PAIRS, browser, logged_in_page  # noqa: F401 (browser is a fixture)

pytestmark = pytest.mark.e2e


def test_a_custom_system_prompt_from_the_form(browser, stack, tmp_path):  # noqa: F811
    page = logged_in_page(browser, stack)
    data = tmp_path / "system-prompt.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in PAIRS))
    page.goto(stack.base_url + "/datasets/")
    page.set_input_files("input[name=file]", str(data))
    page.click("#upload-form button[type=submit]")
    page.wait_for_url("**/datasets/*/")

    page.click("text=Train on this dataset")
    page.select_option("select[name=base_model]", label="Tiny Llama (test)")
    page.fill("input[name=max_steps]", "2")
    page.fill("input[name=batch_size]", "2")
    page.click("summary:has-text('Advanced settings')")
    assert "SmolLM2" in page.inner_text(".field:has(#id_system_prompt) small")  # which templates write a default
    page.select_option("select[name=system_prompt]", "custom")
    page.click("text=Start training")
    error = page.wait_for_selector(".field:has(textarea[name=system_prompt_text]) .error")
    assert "write the system prompt, or choose template or none" in error.inner_text()

    page.fill("textarea[name=system_prompt_text]", "You answer in one word.")
    page.click("text=Start training")
    page.wait_for_url("**/jobs/*/")
    page.wait_for_selector("#job-status[data-status=succeeded]", timeout=180_000)
    assert "system prompt “You answer in one word.” for rows without one" in page.inner_text("#log")
