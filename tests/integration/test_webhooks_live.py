"""A webhook on a real stack: a team admin adds it on the page, a job ends,
and the interactive worker posts the signed event to the receiver."""

import json
import re
import time

import pytest

from studio.notifications.webhooks import webhook_signature_verify
from tests.web.test_webhooks import Receiver

pytestmark = pytest.mark.integration

PAIRS = "".join(json.dumps({"instruction": f"Say {w}.", "output": f"{w}!"}) + "\n" for w in ("hi", "yes", "no"))


def test_a_finished_job_is_posted_by_the_interactive_worker(stack):
    session = stack.login()
    receiver = Receiver()
    try:
        page = session.get(f"{stack.base_url}/accounts/webhooks/").text
        team = re.search(r'<select name="team"[^>]*>\s*<option value="(\d+)"', page).group(1)
        added = stack.post(session, "/accounts/webhooks/", data={"team": team, "url": receiver.url,
                                                                 "events": ["fine_tuning.job.succeeded"]})
        assert added.status_code == 200, added.text
        secret = added.text.split('id="new-webhook-secret" type="text" readonly value="')[1].split('"')[0]
        job_id = stack.start_job(session, stack.upload(session, "hooks.jsonl", PAIRS), max_steps=2)
        stack.wait_for_status(session, job_id, {"succeeded"}, timeout=180)
        deadline = time.monotonic() + 60
        while not receiver.requests:
            assert time.monotonic() < deadline, "the webhook was not delivered"
            time.sleep(0.2)
    finally:
        receiver.close()
    request = receiver.requests[0]
    event = json.loads(request["body"])
    assert event["type"] == "fine_tuning.job.succeeded" and event["data"]["job"]["id"] == job_id
    assert webhook_signature_verify(secret=secret, body=request["body"], header=request["headers"]["Studio-Signature"])
