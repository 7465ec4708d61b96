"""The playground page's script (static/studio/playground.js) in headless
Chromium: an empty answer shows the worker's reason, not a blank bubble.
The socket is a stand-in that answers as the worker does for an empty
reply (tests/web/test_playground_worker.py checks the worker's side)."""

import json
from pathlib import Path

import pytest

from tests.e2e.test_browser_flow import browser  # noqa: F401 (a fixture)

pytestmark = pytest.mark.e2e
SCRIPT = Path(__file__).resolve().parents[2] / "static" / "studio" / "playground.js"
REASON = "the model ended its turn at once: its first token was the end token '<|im_end|>'"
PAGE = """<form id="playground" data-ws-path="/ws/playground/">
<select name="artifact_a"><option value="7" selected>m</option></select>
<select name="artifact_b"><option value=""></option></select>
<input name="temperature" value="0"><input name="top_p" value="1"><input name="max_new_tokens" value="8">
<textarea name="system_prompt"></textarea><textarea name="prompt">Hi</textarea>
<button type="submit" id="send">Send</button><span id="playground-state"></span>
<div id="playground-errors" hidden></div></form>
<section class="answer" data-side="a"><h2 class="answer-title"></h2><div class="answer-text" id="answer-a"></div>
<p class="answer-stats"></p></section><section class="answer" data-side="b" hidden><h2 class="answer-title"></h2>
<div class="answer-text" id="answer-b"></div><p class="answer-stats"></p></section>"""
FAKE_SOCKET = """window.WebSocket = class {
  constructor() { setTimeout(() => this.onopen(), 0); }
  send(data) {
    const reply = (m) => setTimeout(() => this.onmessage({data: JSON.stringify(m)}), 0);
    reply({type: "accepted", request_id: "r1", sides: [{side: "a", artifact: 7, name: "m"}]});
    reply({type: "done", request_id: "r1", side: "a", pieces: 0, seconds: 0.1, empty_reason: %s});
  }
};"""


def test_an_empty_answer_shows_why(browser):  # noqa: F811
    page = browser.new_page()
    page.set_content(PAGE)
    page.add_script_tag(content=FAKE_SOCKET % json.dumps(REASON))
    page.add_script_tag(content=SCRIPT.read_text())
    page.wait_for_selector("#playground-state:has-text('Ready')")
    page.click("#send")
    page.wait_for_selector(".answer[data-side=a] .answer-stats:has-text('0 pieces')")
    assert page.inner_text("#answer-a") == f"No answer: {REASON}."
    assert "answer-empty" in page.get_attribute("#answer-a", "class")
    page.close()
