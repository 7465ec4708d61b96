"""The playground worker's messages (worker/playground.py) over a real
in-memory channel layer: a reply with text, and an empty one that says why."""

import json
import shutil

import pytest
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

from worker.playground import WARM, playground_generate


def _chat(path: str, **options) -> list[dict]:
    layer = get_channel_layer()
    channel = async_to_sync(layer.new_channel)()
    playground_generate(channel, {"request_id": "r1", "side": "a", "path": path, "base_model": "",
                                  "prompt": "Say hello.", "system_prompt": "", "temperature": 0.0, "top_p": 1.0,
                                  "max_new_tokens": 6, **options})
    messages = []
    while True:
        message = async_to_sync(layer.receive)(channel)
        messages.append(message)
        if message["type"] != "playground.piece":
            return messages


@pytest.fixture
def ends_at_once(tiny_model, tmp_path):
    """A model folder whose generation settings make the end token its first:
    what a chat model does when it is prompted outside its template."""
    folder = tmp_path / "ends-at-once"
    shutil.copytree(tiny_model, folder)
    settings = json.loads((folder / "generation_config.json").read_text())
    settings.update(eos_token_id=2, sequence_bias=[[[2], 1000.0]])
    (folder / "generation_config.json").write_text(json.dumps(settings))
    yield folder
    WARM.unload_idle(0)


def test_a_reply_streams_its_pieces_and_carries_no_empty_reason(tiny_model):
    *pieces, done = _chat(str(tiny_model))
    assert pieces and all(p["type"] == "playground.piece" and p["text"] for p in pieces)
    assert done["type"] == "playground.done" and done["pieces"] == len(pieces)
    assert done["empty_reason"] is None


def test_an_empty_reply_is_done_with_the_reason_the_page_shows(ends_at_once):
    [done] = _chat(str(ends_at_once))
    assert done["type"] == "playground.done" and done["pieces"] == 0
    assert done["empty_reason"] == "the model ended its turn at once: its first token was the end token '<|im_end|>'"
