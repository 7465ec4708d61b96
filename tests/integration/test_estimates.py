"""The new-job form's estimate on a real stack: the web process asks, the
interactive worker counts on a weightless copy of the model, and the form,
asking again each second as the page does, then shows the figures."""

import time

import pytest

pytestmark = pytest.mark.integration


def test_the_interactive_worker_counts_what_the_form_shows(stack):
    session = stack.login()
    query = {"base_model": stack.tiny_model_id, "method": "lora", "task": "sft", "method__rank": "3"}
    page = ""
    for waited in range(60):
        page = session.get(f"{stack.base_url}/jobs/new/estimate/", params={**query, "waited": waited}).text
        if "trainable of" in page:
            break
        assert "Counting trainable parameters on a worker" in page, page
        time.sleep(1)
    assert "trainable of" in page and "needs ≈" in page, page
