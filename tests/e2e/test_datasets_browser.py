"""The dataset page in headless Chromium: upload a CSV whose columns need
mapping, confirm the mapping, analyse (preview with masked tokens, the
histogram picture, a lint finding), run dedupe, see the new version and
train on it."""

import re

import pytest

from tests.e2e.test_browser_flow import browser, logged_in_page  # noqa: F401 (browser is a fixture)

pytestmark = pytest.mark.e2e

CSV = ("question,answer\n" + "".join(f"What comes after {i}?,{i + 1}\n" for i in range(5))
       + "What comes after 2?,3\n")  # row 6 repeats row 3


def test_upload_map_analyse_and_dedupe_in_the_browser(browser, stack, tmp_path):
    page = logged_in_page(browser, stack)
    page.goto(stack.base_url + "/datasets/")
    data = tmp_path / "numbers.csv"
    data.write_text(CSV)
    page.set_input_files("input[name=file]", str(data))
    # The bar follows the upload (the form's handler runs first, the event then bubbles here);
    # sessionStorage keeps the last reading across the redirect.
    page.evaluate("""() => document.body.addEventListener('htmx:xhr:progress', () => {
        const bar = document.getElementById('upload-progress');
        sessionStorage.uploadProgress = `${bar.value}/${bar.max}/${document.getElementById('upload-progress-text').textContent}`;
    })""")
    page.click("#upload-form button[type=submit]")
    page.wait_for_url("**/datasets/*/")
    value, maximum, text = page.evaluate("sessionStorage.uploadProgress").split("/", 2)
    assert float(value) == float(maximum) > 0 and text == "Uploaded; checking every row…"

    # The detection is shown, unsure: the mapping form comes pre-filled and must be confirmed.
    assert page.inner_text("#detected-format") == "csv" and page.inner_text("#detected-encoding") == "utf-8"
    assert page.inner_text("#detected-schema") == "prompt_completion"
    assert page.locator("text=Train on this dataset").count() == 0
    assert page.input_value("#mapping-form select[name=prompt]") == "question"
    assert page.input_value("#mapping-form select[name=completion]") == "answer"
    page.click("#mapping-form button[type=submit]")
    # The step is a job: the progress component follows its events over the WebSocket (nothing polls) and
    # fetches the result when the job ends.
    page.wait_for_selector(".operation [data-job-progress]", state="attached")
    page.wait_for_selector(".operation[data-status=succeeded]")
    page.click("a.new-version")
    page.wait_for_selector("text=Train on this dataset")
    assert page.inner_text("#row-count") == "6 rows"

    # Analysis on the worker with the tiny model: a progress bar, then the results.
    page.select_option("select[name=base_model]", label="Tiny Llama (test)")
    page.fill("input[name=max_length]", "48")
    page.click("#analysis-box button[type=submit]")
    page.wait_for_selector("#analysis [data-job-progress]", state="attached")
    page.wait_for_selector("#analysis[data-status=succeeded]", timeout=120_000)
    assert page.locator("#analysis [data-job-progress]").count() == 0  # replaced by the results
    assert page.locator("#histogram svg rect").count() >= 1  # the histogram picture
    masked = page.locator(".preview-row .rendered .masked").first
    loss = page.locator(".preview-row .rendered .loss").first
    assert masked.is_visible() and loss.is_visible()
    # Masked and trained tokens are drawn differently.
    assert masked.evaluate("e => getComputedStyle(e).backgroundColor") != \
        loss.evaluate("e => getComputedStyle(e).backgroundColor")
    assert loss.inner_text().strip()
    finding = page.locator("tr.finding[data-code=exact_duplicates]")
    assert "row 6" in finding.inner_text() and "1: 6" not in finding.inner_text()

    # Dedupe from the diet steps: a new version, shown in the tree when done.
    page.click("summary:has-text('Remove duplicates')")
    page.click("#diet-dedupe button[type=submit]")
    page.wait_for_selector("#operations .operation[data-operation=dedupe][data-status=succeeded]")
    page.wait_for_selector("#versions li[data-version='3']")  # the tree refreshed in place
    page.click("#operations .operation[data-operation=dedupe] a.new-version")
    page.wait_for_url("**/datasets/*/")
    assert page.inner_text("#row-count") == "5 rows"
    assert "dedupe" in page.inner_text("#versions li.current")

    # Train on the cleaned version; the job records the hash of exactly that data.
    page.click("text=Train on this dataset")
    page.wait_for_url("**/jobs/new/?dataset=*")
    page.select_option("select[name=base_model]", str(stack.tiny_model_id))
    page.fill("input[name=max_steps]", "2")
    page.click("#job-form button[type=submit]:has-text('Start training')")
    page.wait_for_url("**/jobs/*/")
    page.wait_for_selector("#job-status[data-status=succeeded]", timeout=180_000)
    assert re.search(r"dataset_sha256: [0-9a-f]{64}\n", page.text_content("details.card"))


def test_one_click_clean_up_with_the_histogram_shown_throughout(browser, stack, tmp_path):
    """Three kinds of blocking rows: the histogram and preview show while they are there, the checks are
    grouped with the blocking ones ticked, and one click makes exactly one new version without any of them."""
    from tests.web.test_dataset_versions import MESSY_CHATS, jsonl

    page = logged_in_page(browser, stack)
    page.goto(stack.base_url + "/datasets/")
    data = tmp_path / "messy.jsonl"
    data.write_text(jsonl(MESSY_CHATS))
    page.set_input_files("input[name=file]", str(data))
    page.click("#upload-form button[type=submit]")
    page.wait_for_url("**/datasets/*/")
    assert page.inner_text("#row-count") == "10 rows"
    page.select_option("select[name=base_model]", label="Tiny Llama (test)")
    page.fill("input[name=max_length]", "64")
    page.click("#analysis-box button[type=submit]")
    page.wait_for_selector("#analysis[data-status=succeeded]", timeout=120_000)
    assert page.locator("#histogram svg rect").count() >= 1 and page.locator("#histogram").is_visible()
    assert page.locator(".preview-row").count() >= 1
    assert page.locator("tbody.finding-group[data-severity=blocking] tr.finding").count() == 3
    assert "3 rows" in page.inner_text("#blocking-summary")
    assert "Hello?" in page.inner_text("tr.finding[data-code=ends_on_user]")  # an example of what goes
    assert page.locator("#clean-up input[name=code]:checked").count() == 3
    page.click("#drop-checked")
    page.wait_for_selector("#operations .operation[data-operation=drop_rows][data-status=succeeded]",
                           timeout=120_000)
    assert page.locator("#operations .operation").count() == 1
    page.wait_for_selector("#versions li[data-version='2']")
    assert page.locator("#versions li[data-version]").count() == 2  # the upload and one cleaned version
    page.click("#operations .operation[data-operation=drop_rows] a.new-version")
    page.wait_for_url("**/datasets/*/")
    assert page.inner_text("#row-count") == "7 rows"
    assert page.locator("text=Train on this dataset").count() == 1


def test_the_pages_run_under_the_csp(browser, stack):
    """With the Content-Security-Policy enforced, the studio's own scripts (htmx, the progress component, the
    charts, the page behaviours) run and the browser reports no violation on the pages people use."""
    page = logged_in_page(browser, stack, enforce_csp=True)
    violations = []  # Chromium reports each refused script, style or connection on the console
    page.on("console", lambda message: "Content Security Policy" in message.text and violations.append(message.text))
    for path in ("/", "/datasets/", "/jobs/new/", "/jobs/queue/", "/artifacts/", "/playground/", "/accounts/tokens/"):
        page.goto(stack.base_url + path)
        page.wait_for_load_state("networkidle")
    page.goto(stack.base_url + "/accounts/tokens/")
    page.fill("input[name=name]", "csp check")
    page.click("form.card button[type=submit]")
    page.wait_for_selector("#new-token-secret")
    page.focus("#new-token-secret")
    assert page.evaluate("() => document.activeElement.selectionEnd > 10")  # page_actions.js selected it
    page.goto(stack.base_url + "/jobs/new/")
    page.wait_for_selector("#estimate:not(:has-text('Estimating'))")  # htmx ran and fetched the estimate
    assert violations == []
