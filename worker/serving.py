"""OpenAI-compatible completions on the playground's worker: the same warm
models (worker.playground.WARM: kept loaded between requests, unloaded when
idle), answering the web process's /v1/ views through the channel layer.

A request (studio/api/serving.py builds it) is a chat ("messages") or a
plain completion ("prompt"). The reply goes to ``reply_channel`` as
``serving.piece`` messages, then one ``serving.done`` (token counts and why
generation ended) or one ``serving.error``.
"""

from __future__ import annotations

import logging

from tuning.errors import TuningError
from worker.playground import WARM
from worker.relay import PieceRelay

log = logging.getLogger(__name__)


class StopCutter:
    """Text pieces with everything from the first stop string on removed.
    A piece may end in the first part of a stop string, so the last
    ``longest - 1`` characters are held back until the next piece shows
    whether the stop string follows."""

    def __init__(self, stops: list[str]):
        self.stops, self.held, self.stopped = [s for s in stops if s], "", False
        self.keep = max((len(s) for s in self.stops), default=1) - 1

    def feed(self, piece: str) -> str:
        if self.stopped:
            return ""
        text = self.held + piece
        found = [text.index(s) for s in self.stops if s in text]
        if found:
            self.stopped, self.held = True, ""
            return text[:min(found)]
        cut = len(text) - self.keep if self.keep else len(text)
        self.held = text[max(cut, 0):]
        return text[:max(cut, 0)]

    def rest(self) -> str:
        held, self.held = ("" if self.stopped else self.held), ""
        return held


def serve_completion(reply_channel: str, request: dict) -> None:
    from tuning.generate import encode_messages, encode_text, stream_inputs

    pieces = PieceRelay(reply_channel, lambda text: {"type": "serving.piece", "text": text})
    try:
        model, tokenizer = WARM.get(request["path"], request["base_model"])
        inputs = (encode_messages(tokenizer, request["messages"]) if "messages" in request
                  else encode_text(tokenizer, request["prompt"]))
        reply = stream_inputs(model, tokenizer, inputs, max_new_tokens=request["max_tokens"],
                              temperature=request["temperature"], top_p=request["top_p"], stop=request["stop"])
        cutter = StopCutter(request["stop"])

        def on_piece(piece: str) -> None:  # called to the end even after a stop string: generation stops there
            if text := cutter.feed(piece):
                pieces.put(text)

        reply.run(on_piece)
        if text := cutter.rest():
            pieces.put(text)
        pieces.close()  # a piece that could not be sent fails the request here, with the message below
    except TuningError as exc:
        pieces.end({"type": "serving.error", "message": str(exc)}, failed=True)
        return
    except Exception as exc:  # the client gets one line; the details go to the worker log
        log.exception("completion failed")
        pieces.end({"type": "serving.error",
                    "message": f"generation failed ({type(exc).__name__}); see the worker log"}, failed=True)
        return
    # "length": cut off by max_tokens; "stop": the model ended its turn or wrote a stop string
    finish = "length" if reply.completion_tokens >= request["max_tokens"] and not cutter.stopped else "stop"
    pieces.end({"type": "serving.done", "finish_reason": finish, "prompt_tokens": reply.prompt_tokens,
                "completion_tokens": reply.completion_tokens})
