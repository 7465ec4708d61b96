"""Helpers shared by the scheme modules: what a scheme's ``run`` receives,
the files every output carries besides its weights, and sizes on disk."""

from __future__ import annotations

import importlib.util
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

LOAD_PATH = "path/to/this/folder"  # placeholder in the load snippets shown to users


class Cancelled(Exception):
    """The sink asked to stop; the caller removes the partial output."""


@dataclass(frozen=True)
class SchemeContext:
    """What a scheme's ``run`` may use besides its source and output directories."""

    progress: Callable[..., None]  # (done, total[, unit]): tensors written, or "steps" for whole-model writers
    should_stop: Callable[[], bool]
    log: Callable[[str], None]
    trust_remote_code: bool = False
    name: str = ""  # recorded in the output where the format has a place for it (GGUF general.name)
    base_model: str = ""  # the base a delta scheme measures the source's change against
    params: dict = field(default_factory=dict)  # the scheme's own settings (QuantizeConfig.scheme_params)
    # ComPEFT's α search: the validation split each candidate is scored on, its rows and tokens a row
    validation_path: str = ""
    validation_rows: int = 16
    validation_max_length: int = 256


def missing_package(module: str, pip_name: str) -> str | None:
    """The reason a scheme cannot run when ``module`` is not importable."""
    if importlib.util.find_spec(module) is None:
        return f"{pip_name} is not installed on this worker: pip install {pip_name}"
    return None


def cuda_reason() -> str | None:
    import torch

    if not torch.cuda.is_available():
        return "needs a CUDA GPU; run it on a GPU worker, or pick a CPU scheme (torchao int8/int4, GGUF)"
    return None


def copy_tokenizer_files(source_dir: Path, out_dir: Path, *, trust_remote_code: bool = False) -> None:
    """Tokenizer (with its chat template) and generation settings, so stock
    libraries load and prompt the output exactly like the source."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source_dir, trust_remote_code=trust_remote_code)
    tokenizer.save_pretrained(out_dir)
    for name in ("generation_config.json",):
        if (source_dir / name).exists() and not (out_dir / name).exists():
            shutil.copy2(source_dir / name, out_dir / name)


def dir_size(path: Path) -> int:
    """Bytes of every file under ``path``."""
    return sum(file.stat().st_size for file in Path(path).rglob("*") if file.is_file())


def weights_size(path: Path) -> int:
    """Bytes of the weight files alone (safetensors, GGUF)."""
    return sum(file.stat().st_size for file in Path(path).rglob("*")
               if file.is_file() and file.suffix in (".safetensors", ".gguf"))
