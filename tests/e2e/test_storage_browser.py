"""Deleting and restoring in headless Chromium: upload a dataset, delete it
from its page (the confirmation says what it frees and for how long it can
come back), find it under Recently deleted on the Storage page, restore it."""

import json

import pytest

from tests.e2e.test_browser_flow import browser, logged_in_page  # noqa: F401 (browser is a fixture)

pytestmark = pytest.mark.e2e


def test_delete_a_dataset_and_restore_it_from_the_storage_page(browser, stack, tmp_path):
    page = logged_in_page(browser, stack)
    data = tmp_path / "throwaway.jsonl"
    data.write_text("".join(json.dumps({"instruction": f"Count to {i}.", "output": str(i)}) + "\n" for i in range(4)))
    page.goto(stack.base_url + "/datasets/")
    page.set_input_files("input[name=file]", str(data))
    page.click("#upload-form button[type=submit]")
    page.wait_for_url("**/datasets/*/")
    dataset_url = page.url

    page.click("#dataset-delete")
    page.wait_for_selector("#delete-plan")
    assert "can restore it" in page.inner_text("#delete-plan")
    page.click("#delete-confirm")
    page.wait_for_url("**/storage/?deleted=*")
    row = page.locator("tr.just-deleted")
    assert "throwaway" in row.inner_text() and row.locator("text=Restore").count() == 1
    page.goto(stack.base_url + "/datasets/")
    assert "throwaway" not in page.inner_text("main")
    assert page.goto(dataset_url).status == 404

    page.goto(stack.base_url + "/storage/")
    page.locator("table.deletions tr", has_text="throwaway").locator("text=Restore").click()
    page.wait_for_url("**/storage/**")
    assert "restored" in page.locator("table.deletions tr", has_text="throwaway").inner_text()
    assert page.goto(dataset_url).status == 200
    assert page.locator("#row-count").inner_text() == "4 rows"
