"""Loading any artifact the studio makes, the way a user would with the
stock libraries: an adapter on its base (peft), a full model directory
(transformers; a torchao-quantized one carries its quantization config), or
a GGUF file (transformers dequantizes it on load). Bottleneck adapters,
Ladder Side-Tuning's side networks and MoLA's routed LoRA experts, which no
stock library loads, are put back on their base by their method
(``attach_saved`` in ``tuning.methods.bottleneck``, ``.ladder``, ``.mola``)."""

from __future__ import annotations

from pathlib import Path

from tuning.errors import ModelError
from tuning.methods.bottleneck import CONFIG_FILE as BOTTLENECK_CONFIG
from tuning.methods.ladder import CONFIG_FILE as LADDER_CONFIG
from tuning.methods.mola import CONFIG_FILE as MOLA_CONFIG
from tuning.models import load_causal_lm, load_model_for_task, load_tokenizer


def artifact_layout(path: str | Path) -> str:
    """"adapter", "bottleneck", "ladder", "mola", "gguf" or "model": what kind of directory ``path`` is."""
    path = Path(path)
    if not path.is_dir():
        raise ModelError(f"artifact directory not found: {path}")
    if (path / BOTTLENECK_CONFIG).exists():
        return "bottleneck"
    if (path / LADDER_CONFIG).exists():
        return "ladder"
    if (path / MOLA_CONFIG).exists():
        return "mola"
    if (path / "adapter_config.json").exists():
        return "adapter"
    if next(path.glob("*.gguf"), None) is not None:
        return "gguf"
    if (path / "config.json").exists():
        return "model"
    raise ModelError(f"{path} holds no adapter_config.json, config.json or .gguf file; it is not a model")


def load_artifact(path: str | Path, *, base_model: str = "", task: str = "sft", label2id=None,
                  trust_remote_code: bool = False):
    """(model, tokenizer) for the artifact at ``path``, in eval mode.

    ``base_model`` is needed for adapters. The tokenizer comes from the
    artifact when it ships one (merged and quantized models do), else from the base."""
    path = Path(path)
    layout = artifact_layout(path)
    if layout == "gguf":
        from transformers import AutoModelForCausalLM, AutoTokenizer

        gguf = next(path.glob("*.gguf"))
        if (path / "tokenizer.json").exists():
            # The studio's GGUF outputs ship the source's tokenizer files beside the .gguf. Read those:
            # given both, AutoTokenizer(gguf_file=) builds the vocabulary but drops the special tokens
            # and the chat template, so a chat model got its prompt as plain text and answered nothing.
            tokenizer = load_tokenizer(str(path))
        else:
            tokenizer = AutoTokenizer.from_pretrained(path, gguf_file=gguf.name)
            if tokenizer.pad_token_id is None:
                tokenizer.pad_token = tokenizer.eos_token
        model = AutoModelForCausalLM.from_pretrained(path, gguf_file=gguf.name)
        return model.eval(), tokenizer
    has_tokenizer = (path / "tokenizer_config.json").exists()
    if layout == "model":
        tokenizer = load_tokenizer(str(path), trust_remote_code=trust_remote_code)
        model = load_model_for_task(task, str(path), tokenizer=tokenizer, label2id=label2id,
                                    trust_remote_code=trust_remote_code)
        return model.eval(), tokenizer
    if not base_model:
        raise ModelError(f"{path.name} is an adapter: name the base model it was trained on")
    from peft import PeftModel

    tokenizer = load_tokenizer(str(path) if has_tokenizer else base_model, trust_remote_code=trust_remote_code)
    base = load_model_for_task(task, base_model, tokenizer=tokenizer, label2id=label2id,
                               trust_remote_code=trust_remote_code)
    if layout == "bottleneck":  # adapters peft cannot load: their method puts them back on the base
        from tuning.methods.bottleneck import attach_saved

        return attach_saved(base, path).eval(), tokenizer
    if layout == "ladder":  # a side network beside the base: its method puts it back
        from tuning.methods import ladder

        return ladder.attach_saved(base, path).eval(), tokenizer
    if layout == "mola":  # LoRA experts routed per token: its method puts them back
        from tuning.methods import mola

        return mola.attach_saved(base, path).eval(), tokenizer
    return PeftModel.from_pretrained(base, str(path)).eval(), tokenizer


def load_language_model(path: str, base: str, *, trust_remote_code: bool):
    """(model, tokenizer) in eval mode on the best device: the artifact at ``path``, or ``base`` itself."""
    import torch

    if path:
        model, tokenizer = load_artifact(path, base_model=base, trust_remote_code=trust_remote_code)
    else:
        tokenizer = load_tokenizer(base, trust_remote_code=trust_remote_code)
        model = load_causal_lm(base, trust_remote_code=trust_remote_code).eval()
    if torch.cuda.is_available() and not getattr(model, "hf_quantizer", None):
        model.to("cuda")
    return model, tokenizer
