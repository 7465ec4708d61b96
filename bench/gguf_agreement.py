"""How closely the bundled model's GGUF exports answer like their source.

For each prompt, greedy-decode 32 tokens (no early stop) with the source
safetensors model and with the f16 and q8_0 GGUF files the studio writes
(run_quantize, loaded as the playground loads them: tuning.loading.load_artifact),
and print, side by side, how many of the 32 tokens agree position by position
how long the identical prefix is, and at how many of the 32 positions each
file ranks first the same token as the source does, both fed the source's
reply (teacher-forced: one near tie does not change every later token).

    python bench/gguf_agreement.py [work dir]
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

PROMPTS = ["What is the capital of France?", "Write a haiku about autumn leaves.",
           "Explain in two sentences what a neural network is.", "List three fruits that are red.",
           "Write a short, friendly email declining a meeting invitation."]
TOKENS = 32


def greedy(model, tokenizer, prompt: str) -> list[int]:
    import torch

    from tuning.generate import _encode

    inputs = _encode(tokenizer, prompt, None)
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=TOKENS, min_new_tokens=TOKENS, do_sample=False,
                                pad_token_id=tokenizer.pad_token_id)
    return output[0, inputs["input_ids"].shape[1]:].tolist()


def forced(model, tokenizer, prompt: str, reply: list[int]) -> list[int]:
    """The token ``model`` ranks first at each position of ``reply``, fed the prompt and the reply so far."""
    import torch

    from tuning.generate import _encode

    prompt_ids = _encode(tokenizer, prompt, None)["input_ids"]
    ids = torch.cat([prompt_ids, torch.tensor([reply])], dim=1)
    with torch.no_grad():
        return model(ids).logits[0, prompt_ids.shape[1] - 1:-1].argmax(-1).tolist()


def main(work: Path) -> None:
    from tests.tiny_model import CACHE
    from tuning.events import MemorySink
    from tuning.loading import load_artifact
    from tuning.models import prepare_bundled_model
    from tuning.quantize.config import QuantizeConfig
    from tuning.quantize.run import run_quantize

    source_dir = prepare_bundled_model(CACHE / "smollm2-135m-instruct")
    source, tokenizer = load_artifact(source_dir)
    expected = {prompt: greedy(source, tokenizer, prompt) for prompt in PROMPTS}
    choices = {prompt: forced(source, tokenizer, prompt, expected[prompt]) for prompt in PROMPTS}
    print(f"{'prompt':<40} {'kind':<5} {'same tokens':>11} {'same prefix':>11} {'teacher-forced':>14}")
    for kind in ("f16", "q8_0"):
        out = work / f"gguf-{kind}"
        if not out.exists():
            run_quantize(QuantizeConfig.from_dict({"scheme": f"gguf_{kind}", "source_path": str(source_dir),
                                                   "output_dir": str(out), "report": False}), MemorySink())
        model, gguf_tokenizer = load_artifact(out)
        same_total = forced_total = 0
        for prompt in PROMPTS:
            got = greedy(model, gguf_tokenizer, prompt)
            same = sum(a == b for a, b in zip(got, expected[prompt]))
            prefix = next((i for i, (a, b) in enumerate(zip(got, expected[prompt])) if a != b), TOKENS)
            agree = sum(a == b for a, b in zip(forced(model, gguf_tokenizer, prompt, expected[prompt]),
                                               choices[prompt]))
            same_total, forced_total = same_total + same, forced_total + agree
            print(f"{prompt[:40]:<40} {kind:<5} {same:>8}/{TOKENS} {prefix:>8}/{TOKENS} {agree:>11}/{TOKENS}")
        total = TOKENS * len(PROMPTS)
        print(f"{'all prompts':<40} {kind:<5} {same_total / total:>11.1%} {'':>11} {forced_total / total:>14.1%}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp()))
