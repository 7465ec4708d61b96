"""In headless Chromium, against the real stack: a judged comparison of a tune with its base, judged by a
fake OpenAI-compatible judge over real HTTP on 127.0.0.1 (tests/judge_server.py), read on its result page;
a forgetting check with a dataset version as a harness task, started from the artifact page, read there."""

import json

import pytest

from tests.e2e.test_browser_flow import browser, logged_in_page  # noqa: F401 (browser is a fixture)
from tests.judge_server import JudgeServer

pytestmark = pytest.mark.e2e

ROWS = "".join(json.dumps({"instruction": f"Say {word}.", "output": f"{word.capitalize()}!"}) + "\n"
               for word in ["hello", "yes", "blue", "green"])
QUIZ = "".join(json.dumps({"question": f"Pick {i}.", "choices": ["red", "blue", "green"], "answer": "ABC"[i % 3]})
               + "\n" for i in range(6))


@pytest.fixture(scope="module")
def tuned(stack):
    admin = stack.login()
    dataset_id = stack.upload(admin, "judge-words.jsonl", ROWS)
    job_id = stack.start_job(admin, dataset_id, max_steps=2)
    stack.wait_for_status(admin, job_id, {"succeeded"})
    artifact_id = next(e for e in stack.job_state(admin, job_id)["events"]
                       if e["kind"] == "artifact")["data"]["artifact_id"]
    return admin, artifact_id


def test_a_judged_comparison_against_a_fake_judge_reads_on_its_result_page(browser, stack, tuned):  # noqa: F811
    _, artifact_id = tuned
    page = logged_in_page(browser, stack)
    with JudgeServer(policy="always_a") as judge:
        page.goto(f"{stack.base_url}/jobs/new/judge/?b={artifact_id}")
        page.check("input[name=prompts_from][value=typed]")
        page.fill("#judge-prompts-text", "Say hello.\nSay blue.")
        page.fill("#judge-max-new-tokens", "4")
        page.check("input[name=judge_kind][value=endpoint]")
        page.fill("#judge-url", judge.url)
        page.fill("#judge-model", "fake-judge")
        page.click("#judge-form button[type=submit]")
        page.wait_for_selector("#job-status[data-status=succeeded]", timeout=300_000)
        page.click("#judged-link a")
        page.wait_for_selector("#judged-summary")
        # a judge that always prefers the first position: every verdict cancels out on the swap
        assert page.inner_text("#judged-ties td.num >> nth=0") == "2"
        assert page.inner_text("#judged-wins td.num >> nth=0") == "0"
        assert page.locator("#judged-pairs tr").count() == 3  # a header and the two prompts
        assert "Say blue." in page.inner_text("#judged-pairs")
        assert len(judge.requests) == 4  # each prompt judged twice, over HTTP


def test_a_forgetting_check_with_a_harness_task_from_the_artifact_page(browser, stack, tuned):  # noqa: F811
    admin, artifact_id = tuned
    quiz_id = stack.upload(admin, "judge-quiz.jsonl", QUIZ)
    page = logged_in_page(browser, stack)
    page.goto(f"{stack.base_url}/artifacts/{artifact_id}/")
    page.fill("#forgetting-threshold", "10000")  # a threshold no two-step tune passes: the result, not a warning
    page.click("#forgetting-form summary")
    page.select_option("#forgetting-harness-dataset", str(quiz_id))
    page.click("#forgetting-form button[type=submit]")
    page.wait_for_selector("#job-status[data-status=succeeded]", timeout=300_000)
    page.reload()  # the result section is drawn with the page
    assert "within the 10000% threshold" in page.inner_text("#forgetting-result")
    page.goto(f"{stack.base_url}/artifacts/{artifact_id}/")
    section = page.inner_text("#forgetting")
    assert "Perplexity on general text" in section and "Possible forgetting" not in section
    rows = page.locator("#forgetting table.forgetting-harness tbody tr")
    assert rows.count() == 1 and "studio_judge_quiz" in rows.inner_text() and "within it" in rows.inner_text()
