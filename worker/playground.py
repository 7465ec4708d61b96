"""Playground generation on a worker: a loaded model stays warm between
requests and is unloaded after PLAYGROUND_IDLE_UNLOAD_S seconds unused."""

from __future__ import annotations

import gc
import logging
import threading
import time

from django.conf import settings

from tuning.errors import TuningError
from worker.relay import PieceRelay

log = logging.getLogger(__name__)


class WarmModels:
    """Loaded models, at most ``capacity`` at once (two: a side-by-side
    comparison), least recently used dropped first; a timer thread unloads
    idle ones. Adapters of one base (and peft type) share one entry, an
    ``AdapterSet`` holding the base once: requests naming different
    fine-tunes of it switch adapters instead of loading models."""

    def __init__(self, capacity: int = 2):
        self.capacity, self.lock = capacity, threading.Lock()
        # key (an artifact directory, or an AdapterSet's sharing key) -> (AdapterSet or (model, tokenizer), last use)
        self.loaded: dict[str, tuple[object, float]] = {}
        self.timer: threading.Thread | None = None

    def get(self, path: str, base_model: str):
        from tuning.adapter_sets import AdapterSet, sharing_key
        from tuning.loading import load_artifact

        with self.lock:
            key = sharing_key(path, base_model) or path
            if key in self.loaded:
                entry, _ = self.loaded[key]
            else:
                while len(self.loaded) >= self.capacity:
                    self._drop(min(self.loaded, key=lambda k: self.loaded[k][1]))
                entry = AdapterSet(base_model) if key != path else load_artifact(path, base_model=base_model)
            model, tokenizer = entry.use(path) if isinstance(entry, AdapterSet) else entry
            self.loaded[key] = (entry, time.monotonic())
            self._start_timer()
        return model, tokenizer

    def _drop(self, key: str) -> None:
        self.loaded.pop(key, None)
        gc.collect()
        log.info("playground: unloaded %s", key.replace("\n", " "))

    def unload_idle(self, idle_s: float) -> None:
        with self.lock:
            now = time.monotonic()
            for key in [k for k, (_, used) in self.loaded.items() if now - used > idle_s]:
                self._drop(key)

    def _start_timer(self) -> None:
        if self.timer and self.timer.is_alive():
            return

        def sweep():
            while self.loaded:
                time.sleep(min(settings.PLAYGROUND_IDLE_UNLOAD_S, 30))
                self.unload_idle(settings.PLAYGROUND_IDLE_UNLOAD_S)

        self.timer = threading.Thread(target=sweep, name="playground-unload", daemon=True)
        self.timer.start()


WARM = WarmModels()


def playground_generate(reply_channel: str, request: dict) -> None:
    """Stream the reply to ``request`` to the WebSocket consumer at ``reply_channel``."""
    from tuning.generate import generate_stream

    head = {"request_id": request["request_id"], "side": request["side"]}
    pieces = PieceRelay(reply_channel, lambda text: {"type": "playground.piece", **head, "text": text})
    started = time.monotonic()
    try:
        model, tokenizer = WARM.get(request["path"], request["base_model"])
        reply = generate_stream(model, tokenizer, request["prompt"], max_new_tokens=request["max_new_tokens"],
                                temperature=request["temperature"], top_p=request["top_p"],
                                system_prompt=request["system_prompt"] or None)
        reply.run(pieces.put)
        pieces.close()  # a piece that could not be sent fails the request here, with the message below
    except TuningError as exc:
        pieces.end({"type": "playground.error", **head, "message": str(exc)}, failed=True)
        return
    except Exception as exc:  # the browser gets one line; the details go to the worker log
        log.exception("playground generation failed")
        pieces.end({"type": "playground.error", **head,
                    "message": f"generation failed ({type(exc).__name__}); see the worker log"}, failed=True)
        return
    # pieces: the messages the text came in (tokens written while one was sent go in the next);
    # empty_reason: why an answer has no text (None when it has), so the page never shows a blank bubble
    pieces.end({"type": "playground.done", **head, "pieces": pieces.messages,
                "seconds": round(time.monotonic() - started, 2), "empty_reason": reply.empty_reason})
