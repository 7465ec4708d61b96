"""Charts in headless Chromium: a reload mid-run loses no point, every
metric chart fills, and the compare page overlays two finished jobs."""

import json
import time

import pytest

from tests.e2e.test_browser_flow import browser, logged_in_page  # noqa: F401 (browser is a fixture)

pytestmark = pytest.mark.e2e

ROWS = "".join(json.dumps({"instruction": f"Say {word}.", "output": f"{word.capitalize()}!"}) + "\n"
               for word in ["hello", "yes", "blue", "green", "one", "two", "red", "tea"])
STEPS_OF = "studioJob.trainSteps()"


@pytest.fixture(scope="module")
def admin_and_dataset(stack):
    admin = stack.login()
    return admin, stack.upload(admin, "words.jsonl", ROWS)


def wait_for_points(page, at_least: int):
    page.wait_for_function(f"Number(document.querySelector('#loss-chart').dataset.points) >= {at_least}")


def test_a_reload_mid_run_loses_no_point(browser, stack, admin_and_dataset):  # noqa: F811
    admin, dataset_id = admin_and_dataset
    job_id = stack.start_job(admin, dataset_id, max_steps=100000, save_every=1000)
    page = logged_in_page(browser, stack)
    page.goto(f"{stack.base_url}/jobs/{job_id}/")
    wait_for_points(page, 3)
    page.reload()
    wait_for_points(page, 3)
    seen = page.evaluate(STEPS_OF)
    assert seen == list(range(1, len(seen) + 1))  # the history came back whole
    wait_for_points(page, len(seen) + 3)  # and live points follow it

    stack.post(admin, f"/jobs/{job_id}/cancel/")
    page.wait_for_selector("#job-status[data-status=cancelled]")
    stored = [e["data"]["step"] for e in stack.job_state(admin, job_id)["events"] if e["kind"] == "metrics"]
    assert page.evaluate(STEPS_OF) == stored == list(range(1, len(stored) + 1))
    # every metric chart got a point per step (learning rate, grad norm, tokens/s, memory)
    assert page.evaluate("studioJob.charts.slice(1).map(c => c.data.datasets[0].data.length)") == [len(stored)] * 4
    # no eval data in this run, so the legend does not promise an eval loss line
    legend = page.evaluate("studioJob.charts[0].legend.legendItems.map(i => i.text)")
    assert "train loss" in legend and "eval loss" not in legend


def test_compare_two_finished_jobs(browser, stack, admin_and_dataset):  # noqa: F811
    admin, dataset_id = admin_and_dataset
    settings = {"max_steps": 6, "validation_ratio": 0.25, "eval_every": 3}
    first = stack.start_job(admin, dataset_id, **settings, learning_rate=0.01)
    second = stack.start_job(admin, dataset_id, **settings, learning_rate=0.002)
    for job_id in (first, second):
        stack.wait_for_status(admin, job_id, {"succeeded"})

    page = logged_in_page(browser, stack)
    assert page.locator("svg.sparkline").count() >= 2
    page.check(f"input[name=ids][value='{first}']")
    page.check(f"input[name=ids][value='{second}']")
    page.click("button:has-text('Compare')")
    page.wait_for_url("**/jobs/compare/?ids=*")
    page.wait_for_function("window.studioCompare !== undefined")

    lengths = "studioCompare.chart.data.datasets.map(d => d.data.length)"
    assert page.evaluate(lengths) == [6, 2, 6, 2]  # train and eval (steps 3 and 6) of each job
    assert page.evaluate("studioCompare.chart.data.datasets[0].data.map(p => p.x)") == [1, 2, 3, 4, 5, 6]
    page.check("input[name=align][value=tokens]")
    tokens = page.evaluate("studioCompare.chart.data.datasets[0].data.map(p => p.x)")
    assert tokens == sorted(tokens) and tokens[0] > 1  # cumulative tokens, not steps
    assert "learning_rate" in page.inner_text("table.config-diff")
    assert page.locator("table.compare-table tbody tr").count() == 2
    # a run with eval data names its eval loss line in the job page's legend
    page.goto(f"{stack.base_url}/jobs/{first}/")
    wait_for_points(page, 6)
    assert "eval loss" in page.evaluate("studioJob.charts[0].legend.legendItems.map(i => i.text)")


def test_adalora_charts_its_penalty_apart_from_the_loss(browser, stack, admin_and_dataset):  # noqa: F811
    admin, dataset_id = admin_and_dataset
    job_id = stack.start_job(admin, dataset_id, max_steps=6, method="adalora", method__initial_rank=6,
                             method__target_rank=2)
    metrics = [e["data"] for e in stack.wait_for_status(admin, job_id, {"succeeded"})["events"]
               if e["kind"] == "metrics"]
    page = logged_in_page(browser, stack)
    page.goto(f"{stack.base_url}/jobs/{job_id}/")
    wait_for_points(page, 6)
    assert "orthogonality penalty" in page.get_attribute("#penalty-chart", "data-label")
    points = "Chart.getChart(document.querySelector('#penalty-chart')).data.datasets[0].data.map(p => p.y)"
    assert page.evaluate(points) == [m["penalty"] for m in metrics] and all(m["penalty"] > 0 for m in metrics)
    assert page.evaluate("studioJob.charts[0].data.datasets[0].data.map(p => p.y)") == [m["loss"] for m in metrics]


PAUSED_STEPS = 200


def test_a_preempted_run_shows_where_it_paused(browser, stack, admin_and_dataset):  # noqa: F811
    admin, dataset_id = admin_and_dataset
    # Long enough that the preemption lands mid-run: the tiny model takes 30 steps in about a second on a
    # quiet machine, less than submitting the urgent job and preempting took once.
    paused = stack.start_job(admin, dataset_id, max_steps=PAUSED_STEPS, save_every=100000)
    deadline = time.monotonic() + 120
    while sum(e["kind"] == "metrics" for e in stack.job_state(admin, paused)["events"]) < 5:
        assert time.monotonic() < deadline, "the run took no steps"
        time.sleep(0.2)
    urgent = stack.start_job(admin, dataset_id, max_steps=3)
    stack.post(admin, f"/jobs/{urgent}/queue-action/", data={"action": "priority", "priority": 10})
    stack.post(admin, f"/jobs/{urgent}/queue-action/", data={"action": "preempt"})
    events = stack.wait_for_status(admin, paused, {"succeeded"})["events"]
    requeued = next(e["data"]["message"] for e in events
                    if e["kind"] == "status" and e["data"]["status"] == "queued" and e["data"].get("message"))
    at = int(requeued.split("Preempted at step ")[1].split(";")[0])

    page = logged_in_page(browser, stack)
    page.goto(f"{stack.base_url}/jobs/{paused}/")
    wait_for_points(page, PAUSED_STEPS)
    assert page.evaluate("studioJob.pauses") == [{"x": at, "label": "paused: preempted"}]
    # nothing lost or repeated around the pause
    assert page.evaluate(STEPS_OF) == list(range(1, PAUSED_STEPS + 1))
    page.wait_for_function("studioJob.charts.every(c => c.$pausesDrawn === 1)")  # the line, on every chart
