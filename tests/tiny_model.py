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
    move_into_place(partial, dest, lambda: (dest / "model.safetensors").exists())
    return dest


def move_into_place(partial: Path, dest: Path, complete) -> None:
    """Rename the directory ``partial`` to ``dest``, unless another process
    has put a complete one there first (``complete()`` says)."""
    if complete():
        shutil.rmtree(partial, ignore_errors=True)
        return
    shutil.rmtree(dest, ignore_errors=True)  # an incomplete earlier attempt
    try:
        os.rename(partial, dest)
    except OSError:  # another process moved its copy in first
        shutil.rmtree(partial, ignore_errors=True)
        if not complete():
            raise


LORA_SOURCES = [CACHE / f"tiny-lora-sources-{VERSION}-v1" / name for name in ("a", "b", "c")]


def tiny_lora_sources() -> list[Path]:
    """Three LoRA adapters (rank 4, every linear layer) of the tiny model
    whose A rows and B columns lie close to one shared 6-dimensional
    subspace per module, as adapters of related tasks do (EigenLoRAx's
    premise): the sources its tests build on (built once, cached)."""
    if all((path / "adapter_model.safetensors").exists() for path in LORA_SOURCES):
        return LORA_SOURCES
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base, parent = tiny_model_dir(), LORA_SOURCES[0].parent
    partial = parent.with_name(f"{parent.name}.partial-{os.getpid()}")
    shared = torch.Generator().manual_seed(0)  # the subspaces, the same for every source
    bases = {}
    for seed, dest in enumerate(LORA_SOURCES, start=1):
        own = torch.Generator().manual_seed(seed)
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                               LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
        with torch.no_grad():
            for name, weight in model.named_parameters():
                if "lora_A" in name or "lora_B" in name:
                    rows = "lora_A" in name  # A (r × n): its rows span the subspace; B (m × r): its columns
                    width = weight.shape[1] if rows else weight.shape[0]
                    if name not in bases:
                        bases[name] = torch.linalg.qr(torch.randn(width, 6, generator=shared))[0].T  # 6 × width
                    mixed = torch.randn(4, 6, generator=own) @ bases[name] * 0.3
                    mixed += 0.003 * torch.randn(4, width, generator=own)  # a little off the subspace
                    weight.copy_(mixed if rows else mixed.T)
        model.save_pretrained(partial / dest.name, safe_serialization=True)
    move_into_place(partial, parent, lambda: all((path / "adapter_model.safetensors").exists()
                                                 for path in LORA_SOURCES))
    return LORA_SOURCES


if __name__ == "__main__":
    print(tiny_model_dir())
