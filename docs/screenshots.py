"""The README's screenshots, taken from a real studio: the path a new user
follows with the bundled SmolLM2-135M.

    .venv/bin/python docs/screenshots.py [--steps 30]

Starts the stack the end-to-end tests use (tests/stack.py: embedded Redis,
uvicorn, the workers, on 127.0.0.1), registers the bundled model as
``studio_setup`` does, uploads samples/instructions-sample.jsonl, trains a
LoRA adapter for ``--steps`` steps, and photographs each page in headless
Chromium (Debian's, never a downloaded one): the job page with its charts,
the artifact's page, the playground answering with the adapter and the job
list. The PNGs go to docs/screenshots/, replacing the README's.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from studio.launcher import stop_all  # noqa: E402
from tests.e2e.test_browser_flow import CHROMIUM, CHROMIUM_ARGS  # noqa: E402
from tests.stack import ADMIN, start_stack  # noqa: E402
from tests.tiny_model import tiny_model_dir  # noqa: E402

OUT = REPO / "docs" / "screenshots"
BUNDLED_ID = ("from studio.catalog.models import BaseModel; print('bundled #%d' % "
              "BaseModel.objects.get(source='bundled', name__icontains='SmolLM2').pk)")
PROMPT = "What is the capital of France?"


def shoot(page, name: str) -> None:
    page.wait_for_load_state("load")
    page.screenshot(path=str(OUT / f"{name}.png"))
    print(f"{name}.png", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="screenshots-") as data_dir:
        stack = start_stack(Path(data_dir), tiny_model_dir())
        try:
            stack.manage("studio_setup")  # the bundled model, as a fresh install registers it
            bundled = int(re.search(r"bundled #(\d+)", stack.manage("shell", "-c", BUNDLED_ID)).group(1))
            session = stack.login()
            dataset_id = stack.upload(session, "instructions-sample.jsonl",
                                      (REPO / "samples" / "instructions-sample.jsonl").read_text())
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
                page = browser.new_context(viewport={"width": 1280, "height": 1000}).new_page()
                page.set_default_timeout(120_000)
                page.goto(stack.base_url + "/accounts/login/")
                page.fill("input[name=username]", ADMIN[0])
                page.fill("input[name=password]", ADMIN[1])
                page.click("button[type=submit]")
                page.wait_for_url(stack.base_url + "/")

                job_id = stack.start_job(session, dataset_id, base_model=bundled, max_steps=args.steps,
                                         learning_rate=0.0001, method__rank=8, batch_size=4)
                page.goto(f"{stack.base_url}/jobs/{job_id}/")
                deadline = time.monotonic() + 1800
                while not page.locator("#job-status[data-status=succeeded]").count():
                    if time.monotonic() > deadline or page.locator("#job-status[data-status=failed]").count():
                        raise SystemExit(f"job {job_id} did not succeed: {stack.job_state(session, job_id)}")
                    time.sleep(2)
                time.sleep(2)  # the last points drawn
                shoot(page, "job")

                artifact_id = next(e for e in stack.job_state(session, job_id)["events"]
                                   if e["kind"] == "artifact")["data"]["artifact_id"]
                page.goto(f"{stack.base_url}/artifacts/{artifact_id}/")
                shoot(page, "artifact")
                page.goto(f"{stack.base_url}/playground/?artifact={artifact_id}")
                page.wait_for_selector("#playground-state:has-text('Ready')", timeout=600_000)
                page.click("summary:has-text('Generation settings')")
                page.fill("#temperature", "0")
                page.fill("#max_new_tokens", "40")
                page.fill("#prompt", PROMPT)
                page.click("#send")
                page.wait_for_selector(".answer[data-side=a] .answer-stats:has-text('pieces in')", timeout=600_000)
                shoot(page, "playground")
                page.goto(stack.base_url + "/")
                shoot(page, "jobs")
                browser.close()
        finally:
            stop_all(stack.procs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
