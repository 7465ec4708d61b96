"""Several adapters of one base model served from one copy of the base
(S-LoRA's idea, through peft's named adapters): each adapter is loaded once
beside the others and the one a request names is switched on for it, so
answering for eight fine-tunes of a 1B model holds one 1B model and eight
small adapters, and moving between them costs a pointer, not a load.

Only adapters of one peft type share a model (peft refuses to mix types in
one ``PeftModel``); ``sharing_key`` says which set an adapter joins. Each
adapter keeps its own tokenizer: the studio saves the chat template and
system prompt a run trained with beside its adapter.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from itertools import count
from pathlib import Path

from tuning.loading import artifact_layout
from tuning.models import load_model_for_task, load_tokenizer

__all__ = ["AdapterSet", "sharing_key"]


def sharing_key(path: str | Path, base_model: str) -> str | None:
    """The set an artifact can join — its base model and peft type — or None
    when it is not an adapter (a merged, quantized or GGUF model stands alone)."""
    if not base_model or artifact_layout(path) != "adapter":
        return None
    peft_type = json.loads((Path(path) / "adapter_config.json").read_text()).get("peft_type", "")
    return f"{base_model}\n{peft_type}"


class AdapterSet:
    """The adapters of one base model and one peft type on one copy of the
    base; at most ``capacity`` adapters, the least recently used unloaded first."""

    def __init__(self, base_model: str, *, capacity: int = 16):
        self.base_model, self.capacity = base_model, capacity
        self.model = None  # the PeftModel, made with the first adapter
        self.adapters: OrderedDict[str, tuple[str, object]] = OrderedDict()  # path -> (name, tokenizer)
        self._names = count()

    def use(self, path: str | Path):
        """(model, tokenizer) with the adapter at ``path`` switched on (loaded the first time)."""
        key = str(Path(path).resolve())
        if key not in self.adapters:
            while len(self.adapters) >= self.capacity:
                self.remove(next(iter(self.adapters)))
            self.adapters[key] = self._load(key)
        self.adapters.move_to_end(key)
        name, tokenizer = self.adapters[key]
        self.model.set_adapter(name)
        return self.model, tokenizer

    def _load(self, path: str) -> tuple[str, object]:
        from peft import PeftModel

        name = f"adapter_{next(self._names)}"
        has_tokenizer = (Path(path) / "tokenizer_config.json").exists()
        tokenizer = load_tokenizer(path if has_tokenizer else self.base_model)
        if self.model is None:
            base = load_model_for_task("sft", self.base_model, tokenizer=tokenizer)
            self.model = PeftModel.from_pretrained(base, path, adapter_name=name).eval()
        else:
            self.model.load_adapter(path, adapter_name=name)
        return name, tokenizer

    def remove(self, path: str | Path) -> None:
        """Unload one adapter; the base stays for the others."""
        name, _ = self.adapters.pop(str(Path(path).resolve()))
        if self.adapters:  # peft keeps at least one adapter on a PeftModel: the last one goes with the set
            if self.model.active_adapter == name:
                self.model.set_adapter(next(iter(self.adapters.values()))[0])
            self.model.delete_adapter(name)
        else:
            self.model = None
