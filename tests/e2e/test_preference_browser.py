"""Preference tuning in headless Chromium: upload a small pairwise file, see
each pair's chosen and rejected replies side by side in the analysis, pick
DPO with LoRA, watch the job finish with its reward-margin curve and get the
adapter."""

import json

import pytest

from tests.e2e.test_browser_flow import browser, logged_in_page, start_job  # noqa: F401 (browser is a fixture)

pytestmark = pytest.mark.e2e

PAIRS = [{"prompt": f"What is {a} plus {b}?", "chosen": f"{a + b}.", "rejected": f"I cannot add {a} and {b}."}
         for a in range(3) for b in range(2)]
STEPS = 5


def test_upload_pairs_train_dpo_with_lora_and_watch_the_margin(browser, stack, tmp_path):  # noqa: F811
    page = logged_in_page(browser, stack)
    data = tmp_path / "arithmetic-pairs.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in PAIRS))
    page.goto(stack.base_url + "/datasets/")
    page.set_input_files("input[name=file]", str(data))
    page.click("#upload-form button[type=submit]")
    page.wait_for_url("**/datasets/*/")
    assert page.inner_text("#row-count") == f"{len(PAIRS)} rows"

    # The analysis renders each pair as training does: chosen and rejected side by side, the reply carrying loss.
    page.select_option("select[name=base_model]", label="Tiny Llama (test)")
    page.click("#analysis-box button[type=submit]")
    page.wait_for_selector("#analysis[data-status=succeeded]", timeout=120_000)
    chosen, rejected = (page.locator(f".preview-pair >> nth=0 >> .preview-side[data-side={side}]")
                        for side in ("chosen", "rejected"))
    assert chosen.locator(".loss").first.inner_text().startswith(PAIRS[0]["chosen"])
    assert rejected.locator(".loss").first.inner_text().startswith(PAIRS[0]["rejected"])
    assert PAIRS[0]["prompt"] in "".join(chosen.locator(".masked").all_inner_texts())  # the prompt: context only
    left, right = chosen.bounding_box(), rejected.bounding_box()
    assert left["x"] + left["width"] <= right["x"] and abs(left["y"] - right["y"]) < 1  # one row, two columns

    dataset_url = page.url.removeprefix(stack.base_url)
    page.click("text=Train on this dataset")
    assert page.input_value("select[name=task]") == "preference"  # the dataset's own task
    page.wait_for_selector("#preference-title")
    assert page.is_checked("#id_method_lora") and page.is_disabled("#id_method_prefix_tuning")
    assert page.input_value("select[name=preference_loss]") == "dpo" and page.input_value("input[name=beta]") == "0.1"
    start_job(page, stack, dataset_url, max_steps=STEPS)  # LoRA rank 4, DPO with beta 0.1

    page.wait_for_selector("#job-status[data-status=succeeded]", timeout=180_000)
    page.wait_for_function(f"Number(document.querySelector('#rewards-chart').dataset.points) === {STEPS}")
    margins = page.evaluate("window.studioJob.rewardMargins()")
    assert len(margins) == STEPS and margins[0] == 0 and margins[-1] > margins[0], margins
    log = page.inner_text("#log")
    assert "DPO (beta 0.1) against the base model" in log and "adapter ready" in log
    assert "prompt computed once" in log  # the shared-prefix layout, not padded rows
    assert page.is_visible("#reward-accuracy-chart") and page.is_visible("text=Download adapter")
