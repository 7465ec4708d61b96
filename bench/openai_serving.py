"""The OpenAI-compatible endpoint against plain transformers ``generate``
on the same model: time to first token and tokens per second.

    .venv/bin/python bench/openai_serving.py [--runs 5] [--max-tokens 64] [--model bundled|tiny]

Starts a real studio on 127.0.0.1 (tests/stack.py: embedded Redis,
uvicorn, the Celery workers), registers the bundled SmolLM2-135M-Instruct
(or uses the tiny test model) and, for the same greedy chat request:

- transformers: this process loads the model the way the worker does
  (tuning.loading.load_artifact) and times ``generate`` with a
  TextIteratorStreamer: first piece (TTFT) and new tokens / wall time;
  also when generate produced its first token (the streamer shows text
  only at the end of a word; the served path shows each token's text);
- served: the official openai client streams /v1/chat/completions; TTFT is
  the first content chunk, tokens/s the usage's completion tokens / wall time
  of the whole request (HTTP, Celery, Redis and the channel layer included).

One warm-up request each (the worker loads the model and keeps it warm),
then ``--runs`` timed pairs, a baseline run and a served run one after the
other, so that both see the same load on a shared machine (while one runs
the other process is idle); medians printed as JSON lines, then the ratios
served / transformers.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from studio.launcher import stop_all  # noqa: E402
from tests.stack import start_stack  # noqa: E402
from tests.tiny_model import CACHE, tiny_model_dir  # noqa: E402

MESSAGES = [{"role": "user", "content": "Write a short story about a dragon who learns to bake bread."}]
TOKEN = """
from django.contrib.auth import get_user_model
from studio.accounts.services import api_token_create
print(api_token_create(user=get_user_model().objects.get(username="admin"), name="bench")[1])
"""


def transformers_run(model, tokenizer, max_tokens: int) -> tuple[float, float, int, float]:
    """(TTFT s, tokens/s, new tokens, first token s) of one greedy generate with a streamer. TTFT is the
    streamer's first text piece; the first token is when generate hands its first new token to the
    streamer, which holds the text back to the end of the word: the earliest any streamer could show it."""
    import torch
    from transformers import TextIteratorStreamer

    from tuning.generate import encode_messages

    class TimedStreamer(TextIteratorStreamer):
        first_token = None

        def put(self, value):
            if not self.next_tokens_are_prompt and self.first_token is None:
                self.first_token = time.perf_counter() - started
            super().put(value)

    inputs = encode_messages(tokenizer, MESSAGES)
    streamer = TimedStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    output: list = []
    started = time.perf_counter()

    def work():
        with torch.no_grad():
            output.append(model.generate(**inputs, max_new_tokens=max_tokens, do_sample=False, streamer=streamer,
                                         pad_token_id=tokenizer.eos_token_id))

    thread = threading.Thread(target=work)
    thread.start()
    first = None
    for piece in streamer:
        if piece and first is None:
            first = time.perf_counter() - started
    thread.join()
    elapsed = time.perf_counter() - started
    new = output[0].shape[1] - inputs["input_ids"].shape[1]
    return first or elapsed, new / elapsed, new, streamer.first_token or elapsed


def served_run(client, model_id: str, max_tokens: int) -> tuple[float, float, int]:
    started, first, usage = time.perf_counter(), None, None
    for chunk in client.chat.completions.create(model=model_id, messages=MESSAGES, max_tokens=max_tokens,
                                                temperature=0, stream=True, stream_options={"include_usage": True}):
        if chunk.choices and chunk.choices[0].delta.content and first is None:
            first = time.perf_counter() - started
        usage = chunk.usage or usage
    elapsed = time.perf_counter() - started
    return first or elapsed, usage.completion_tokens / elapsed, usage.completion_tokens


def summary(name: str, runs: list[tuple]) -> dict:
    row = {"path": name, "ttft_ms": round(statistics.median(r[0] for r in runs) * 1000, 1),
           "tokens_per_s": round(statistics.median(r[1] for r in runs), 1),
           "new_tokens": round(statistics.median(r[2] for r in runs))}
    if len(runs[0]) > 3:
        row["first_token_ms"] = round(statistics.median(r[3] for r in runs) * 1000, 1)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--model", choices=("bundled", "tiny"), default="bundled")
    args = parser.parse_args()

    import openai
    import torch

    from tuning.loading import load_artifact

    if args.model == "bundled":
        from tuning.models import prepare_bundled_model

        model_path = str(prepare_bundled_model(CACHE / "smollm2-135m-instruct"))
    else:
        model_path = str(tiny_model_dir())
    with tempfile.TemporaryDirectory(prefix="openai-bench-") as data_dir:
        stack = start_stack(Path(data_dir), tiny_model_dir())
        try:
            if args.model == "bundled":
                registered = stack.manage("register_base_model", "SmolLM2-135M-Instruct", model_path)
                model_id = "base-" + registered.split("#", 1)[1].split()[0].strip(".:,)")
            else:
                model_id = f"base-{stack.tiny_model_id}"
            raw = stack.manage("shell", "-c", TOKEN).strip().splitlines()[-1]
            client = openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key=raw, max_retries=0, timeout=600)

            model, tokenizer = load_artifact(model_path)
            transformers_run(model, tokenizer, 4)  # warm-up: one-off costs of the first generate
            served_run(client, model_id, 4)  # warm-up: the worker loads the model and keeps it
            baseline, served = [], []
            for _ in range(args.runs):
                baseline.append(transformers_run(model, tokenizer, args.max_tokens))
                served.append(served_run(client, model_id, args.max_tokens))
        finally:
            stop_all(stack.procs)
    rows = [summary("transformers generate", baseline), summary("/v1/chat/completions (stream)", served)]
    for row in rows:
        print(json.dumps({"model": args.model, "threads": torch.get_num_threads(), **row}))
    # Per pair (run back to back, so under the same load), then the median: steadier on a busy machine.
    ttft = [round(s[0] / b[0], 2) for b, s in zip(baseline, served)]
    speed = [round(s[1] / b[1], 2) for b, s in zip(baseline, served)]
    first_token = [round(s[0] / b[3], 2) for b, s in zip(baseline, served)]
    print(f"served / transformers, median of pairs: TTFT x{statistics.median(ttft):.2f} {ttft}, "
          f"tokens/s x{statistics.median(speed):.2f} {speed}; served TTFT / generate's first token "
          f"x{statistics.median(first_token):.2f} {first_token}")
    print(json.dumps({"figure": "served_over_generate", "model": args.model, "ttft_ratio": statistics.median(ttft),
                      "tokens_per_s_ratio": statistics.median(speed), "ttft_ratios": ttft, "speed_ratios": speed,
                      "ttft_over_first_token": statistics.median(first_token), "ttft_over_first_token_ratios":
                      first_token, "load_average": [round(x, 2) for x in os.getloadavg()]}))


if __name__ == "__main__":
    main()
