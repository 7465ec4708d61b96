"""The whole path in headless Chromium: log in, upload, start a LoRA job,
watch the live loss chart (through a reload and from a second browser),
cancel, then train to the end and download the adapter."""

import json
import zipfile
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.e2e

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-quic", "--no-first-run", "--disable-sync"]
PAIRS = [{"instruction": "Say hello.", "output": "Hello!"}, {"instruction": "Say yes.", "output": "Yes."},
         {"instruction": "Name a colour.", "output": "Blue."}]


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `python3 run.py test` installs it with apt-get")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


def logged_in_page(browser, stack, *, enforce_csp: bool = False):
    """A logged-in page. The tests' own waits (wait_for_function) evaluate strings in the page, which the
    studio's Content-Security-Policy forbids, so they run with it bypassed; test_the_pages_run_under_the_csp
    (tests/e2e/test_datasets_browser.py) proves the studio's own scripts run with it enforced."""
    page = browser.new_context(accept_downloads=True, bypass_csp=not enforce_csp).new_page()
    page.set_default_timeout(60_000)
    page.goto(stack.base_url + "/")
    assert "/accounts/login/" in page.url  # every page needs a login
    page.fill("input[name=username]", "admin")
    page.fill("input[name=password]", "admin-pass-123")
    page.click("button[type=submit]")
    page.wait_for_url(stack.base_url + "/")
    page.on("dialog", lambda dialog: dialog.accept())  # the cancel confirmation
    return page


def chart_points(page) -> int:
    return int(page.get_attribute("#loss-chart", "data-points"))


def wait_for_points(page, at_least: int):
    page.wait_for_function(f"Number(document.querySelector('#loss-chart').dataset.points) >= {at_least}")


def start_job(page, stack, dataset_url, max_steps):
    page.goto(stack.base_url + dataset_url)
    page.click("text=Train on this dataset")
    page.select_option("select[name=base_model]", label="Tiny Llama (test)")
    page.fill("input[name=max_steps]", str(max_steps))
    page.fill("input[name=batch_size]", "2")
    page.fill("input[name=learning_rate]", "0.01")
    page.fill("input[name=method__rank]", "4")
    page.click("text=Start training")
    page.wait_for_url("**/jobs/*/")
    return page.url


def test_upload_train_watch_cancel_and_download(browser, stack, tmp_path):
    page = logged_in_page(browser, stack)

    # Upload: a bad file first (the message names the line), then a good one.
    bad = tmp_path / "broken.jsonl"
    bad.write_text(json.dumps(PAIRS[0]) + "\n{not json\n")
    page.goto(stack.base_url + "/datasets/")
    page.set_input_files("input[name=file]", str(bad))
    page.click("#upload-form button[type=submit]")
    page.wait_for_selector("text=broken.jsonl, row 2: invalid JSON")
    good = tmp_path / "greetings.jsonl"
    good.write_text("".join(json.dumps(row) + "\n" for row in PAIRS))
    page.set_input_files("input[name=file]", str(good))
    page.click("#upload-form button[type=submit]")
    page.wait_for_url("**/datasets/*/")
    assert page.inner_text("#row-count") == "3 rows"
    assert "Name a colour." in page.inner_text("table.preview")
    dataset_url = page.url.removeprefix(stack.base_url)

    # A long job: points appear live, survive a reload, and reach a second viewer.
    job_url = start_job(page, stack, dataset_url, max_steps=100000)
    wait_for_points(page, 3)
    assert "step" in page.inner_text("#progress-text") and "/ 100000" in page.inner_text("#progress-text")
    before_reload = chart_points(page)
    page.reload()
    wait_for_points(page, before_reload)  # every point so far is back
    wait_for_points(page, before_reload + 2)  # and new ones keep coming
    second = logged_in_page(browser, stack)
    second.goto(job_url)
    wait_for_points(second, before_reload + 2)
    assert page.locator("#log").inner_text().count("status: running") == 1

    # Cancel from the job page: both viewers see it end as cancelled.
    page.click("text=Cancel job")
    for viewer in (page, second):
        viewer.wait_for_selector("#job-status[data-status=cancelled]")
    page.wait_for_selector("#log:has-text('checkpoint saved')")
    stopped_at = chart_points(page)
    assert chart_points(second) == stopped_at

    # A short job to the end, then download the adapter.
    start_job(page, stack, dataset_url, max_steps=4)
    page.wait_for_selector("#job-status[data-status=succeeded]", timeout=180_000)
    assert chart_points(page) == 4
    with page.expect_download() as download_info:
        page.click("text=Download adapter")
    archive = tmp_path / "adapter.zip"
    download_info.value.save_as(archive)
    with zipfile.ZipFile(archive) as zipped:
        zipped.extractall(tmp_path / "unzipped")
        names = {Path(name).name for name in zipped.namelist()}
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md"} <= names

    # The stock library loads what the browser downloaded.
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    adapter_dir = next((tmp_path / "unzipped").iterdir())
    base = AutoModelForCausalLM.from_pretrained(stack.tiny_model_path, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, adapter_dir)
    assert sum(p.numel() for n, p in model.named_parameters() if "lora_" in n) > 0
    assert "greetings.jsonl" in (adapter_dir / "README.md").read_text()
