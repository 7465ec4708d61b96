"""The playground worker's messages (worker/playground.py) over a real
in-memory channel layer: a reply with text, and an empty one that says why;
and how a reply's pieces are sent (worker/relay.py): tokens written while a
piece is on its way go together in the next message, and a send that fails
fails the reply with an error that still ends it."""

import asyncio
import json
import shutil
import threading

import pytest
from asgiref.sync import async_to_sync
from channels.exceptions import ChannelFull
from channels.layers import InMemoryChannelLayer, get_channel_layer

from worker.playground import WARM, playground_generate
from worker.relay import PieceRelay


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


def test_fine_tunes_of_one_base_share_one_warm_model(tiny_model, tmp_path):
    """Two LoRA adapters of the tiny model and the model itself: the adapters take one entry (one base in
    memory, switched per request), the whole model another; each chat still answers."""
    from tests.core.test_adapter_sets import _adapter

    first, second = (_adapter(tiny_model, tmp_path / name, seed=seed) for name, seed in (("a", 1), ("b", 2)))
    WARM.unload_idle(0)
    try:
        for path in (first, second, first):
            *pieces, done = _chat(path, base_model=str(tiny_model))
            assert done["type"] == "playground.done", done
        assert len(WARM.loaded) == 1
        [(entry, _)] = WARM.loaded.values()
        assert len(entry.adapters) == 2
        *pieces, done = _chat(str(tiny_model))
        assert done["type"] == "playground.done" and len(WARM.loaded) == 2
    finally:
        WARM.unload_idle(0)


@pytest.mark.parametrize("method, method_params", [("mos", {"rank": 4, "pool_rank": 4}),
                                                   ("mola", {"experts": "2,4", "rank": 2})])
def test_a_mos_or_mola_adapter_answers_in_the_playground(method, method_params, tiny_model, tmp_path):
    """MoS saves a plain LoRA adapter (it joins the base's shared adapters); MoLA its own form, which the
    studio's loader puts back on the base."""
    import torch
    from transformers import AutoModelForCausalLM

    from tuning.fields import config_from_dict
    from tuning.methods import METHODS, MethodContext

    row = METHODS[method]
    model = row.prepare(AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32),
                        config_from_dict(row.params, method_params), MethodContext())
    row.export(model, tmp_path / method)
    WARM.unload_idle(0)
    try:
        *pieces, done = _chat(str(tmp_path / method), base_model=str(tiny_model))
        assert pieces and done["type"] == "playground.done" and done["pieces"] == len(pieces), done
    finally:
        WARM.unload_idle(0)


class HeldLayer(InMemoryChannelLayer):
    """The in-memory channel layer, its second send held until ``release`` is set (a slow Redis), its
    sends from ``fail_from`` on refused."""

    def __init__(self, fail_from: int = 0):
        super().__init__()
        self.sends, self.fail_from = 0, fail_from
        self.holding, self.release = threading.Event(), threading.Event()

    async def send(self, channel, message):
        self.sends += 1
        if self.fail_from and self.sends >= self.fail_from:
            raise ChannelFull()
        if self.sends == 2:
            self.holding.set()
            await asyncio.get_running_loop().run_in_executor(None, self.release.wait, 10)
        await super().send(channel, message)


def _received(layer, channel: str) -> list[dict]:
    async def drain():
        messages = []
        while channel in layer.channels and not layer.channels[channel].empty():
            messages.append(await layer.receive(channel))
        return messages

    return async_to_sync(drain)()


def test_pieces_written_during_a_send_go_together_in_the_next_message():
    layer = HeldLayer()
    relay = PieceRelay("reply!one", lambda text: {"type": "serving.piece", "text": text}, layer=layer)
    relay.put("Once")  # the first piece alone, sent before put returns
    assert [m["text"] for m in _received(layer, "reply!one")] == ["Once"]
    relay.put(" upon")
    assert layer.holding.wait(10)  # " upon" is being sent; the next tokens arrive meanwhile
    relay.put(" a")
    relay.put(" time")
    layer.release.set()
    relay.end({"type": "serving.done"})
    assert [m.get("text") for m in _received(layer, "reply!one")] == [" upon", " a time", None]
    assert relay.messages == 3


def test_a_piece_that_cannot_be_sent_fails_the_reply_and_the_error_still_ends_it():
    layer = HeldLayer(fail_from=2)
    relay = PieceRelay("reply!two", lambda text: {"type": "serving.piece", "text": text}, layer=layer)
    relay.put("Once")
    relay.put(" upon")  # refused: Redis is full or gone
    with pytest.raises(ChannelFull):
        relay.close()
    relay.put(" a")  # nothing more is tried after a failure
    layer.fail_from = 0
    relay.end({"type": "serving.error", "message": "gone"}, failed=True)
    assert [m.get("text", m["type"]) for m in _received(layer, "reply!two")] == ["Once", "serving.error"]
    assert relay.messages == 1
