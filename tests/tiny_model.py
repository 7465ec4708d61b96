"""A tiny Llama built from a config, with the bundled model's real tokenizer.

Tests train it for real steps in well under a second each. It is written
once to a cache directory and reused across test runs.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

CACHE = Path(os.environ.get("TUNING_TEST_CACHE", Path(__file__).resolve().parent.parent / ".cache" / "tests"))
VERSION = "v2"  # bump when the recipe below changes
# initializer_range 0.3: with the default 0.02 and a frozen tied head, logits
# stay near uniform and no adapter can lower the loss much.


def tiny_model_dir() -> Path:
    dest = CACHE / f"tiny-llama-{VERSION}"
    if (dest / "model.safetensors").exists():
        return dest
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from tuning.models import bundled_gguf_path

    gguf = bundled_gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=True, initializer_range=0.3, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return save_once(LlamaForCausalLM(config), tokenizer, dest)


def save_once(model, tokenizer, dest: Path) -> Path:
    """Write ``model`` and ``tokenizer`` to the cache directory ``dest``.

    Parallel test processes (pytest-xdist workers, or two runs at once) may
    build it together: each writes its own directory, the first to finish
    moves it into place and the others drop theirs."""
    partial = dest.with_name(f"{dest.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial, safe_serialization=True)
    tokenizer.save_pretrained(partial)
    if (dest / "model.safetensors").exists():
        shutil.rmtree(partial, ignore_errors=True)
        return dest
    shutil.rmtree(dest, ignore_errors=True)  # an incomplete earlier attempt
    try:
        os.rename(partial, dest)
    except OSError:  # another process moved its copy in first
        shutil.rmtree(partial, ignore_errors=True)
        if not (dest / "model.safetensors").exists():
            raise
    return dest


if __name__ == "__main__":
    print(tiny_model_dir())
