"""The README a published repo carries: the card the studio wrote next to the
artifact (its body kept: base model, data, method, hyperparameters), with the
Hub's YAML metadata header filled in from what the studio knows (the base
model's hub id and licence, how this repo relates to it, the library that
loads it), and the sections a reader of the Hub expects (evaluation scores,
lineage, licence; for GGUF, how llama.cpp and Ollama pull it).

Also which base-model licences forbid sharing what was made from them."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from tuning.methods import STUDIO_LOADED_FILES

LOCAL_PATH = "path/to/this/folder"  # what the studio's cards say before the files have a home
# Licences whose terms allow no derivative works to be shared (Creative Commons "NoDerivatives").
NO_DERIVATIVES = re.compile(r"^cc-by(-nc)?-nd(-\d(\.\d)?)?$")


@dataclass(frozen=True, kw_only=True)
class CardFacts:
    """What the studio knows about an artifact, for its card on the Hub."""

    title: str
    kind: str  # "adapter" or "model"
    format: str = "safetensors"  # safetensors, gguf, torchao …
    base_model: str = ""  # the base model's hub id ("" when it has none: a folder model)
    relation: str = ""  # the Hub's base_model_relation: adapter, finetune, merge, quantized
    license: str = ""
    gated: bool = False
    pipeline_tag: str = "text-generation"
    datasets: list[dict] = field(default_factory=list)  # [{"name", "sha256"}]
    evaluations: list[dict] = field(default_factory=list)  # [{"dataset", "job", scores…}]
    lineage: list[str] = field(default_factory=list)  # one line per ancestor, the artifact first

    @classmethod
    def from_dict(cls, data: dict) -> CardFacts:
        known = set(cls.__dataclass_fields__)
        return cls(**{key: value for key, value in data.items() if key in known})


HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


def facts_from_folder(folder: Path, *, base_model: str = "", license: str = "") -> CardFacts:
    """What a folder says of itself, for publishing it outside the studio
    (``python -m tuning publish``): an adapter or a model, GGUF or not, the
    base model its adapter config or card names (when that is a hub id),
    the licence its card states."""
    meta, _ = split_front_matter((folder / "README.md").read_text()) if (folder / "README.md").is_file() else ({}, "")
    config = next((folder / name for name in ("adapter_config.json", *STUDIO_LOADED_FILES)
                   if (folder / name).is_file()), None)
    adapter = config is not None
    named = json.loads(config.read_text()).get("base_model_name_or_path", "") if adapter else ""
    base = base_model or next((ref for ref in (named, str(meta.get("base_model") or "")) if HUB_ID.match(ref)), "")
    return CardFacts(title=folder.name, kind="adapter" if adapter else "model",
                     format="gguf" if any(folder.glob("*.gguf")) else "safetensors", base_model=base,
                     relation="adapter" if adapter else "", license=license or str(meta.get("license") or ""))


def redistribution_refusal(facts: CardFacts, *, private: bool) -> str:
    """Why the base model's terms forbid publishing this artifact ("" when they allow it)."""
    if NO_DERIVATIVES.match(facts.license.lower()):
        return (f"the base model's licence ({facts.license}) allows no derivative works to be shared, and this "
                f"{facts.kind} is one; it can be downloaded but not published")
    if facts.gated and facts.kind == "model" and not private:
        return ("the base model is gated: its weights may only reach people who accepted its conditions, and this "
                "model contains them. Publish it to a private repo, or publish the adapter instead")
    return ""


def split_front_matter(text: str) -> tuple[dict, str]:
    """(metadata, body) of a README with or without a ``---`` YAML header."""
    match = re.match(r"^---\n(.*?)\n---\n?", text, re.S)
    if not match:
        return {}, text
    try:
        meta = yaml.safe_load(match.group(1)) or {}
    except yaml.YAMLError:
        meta = {}
    return (meta if isinstance(meta, dict) else {}), text[match.end():]


def _metadata(meta: dict, facts: CardFacts, gguf: bool, bottleneck: bool) -> dict:
    meta = dict(meta)
    meta.pop("base_model", None)  # the studio's own cards may name a local path, which the Hub refuses
    if facts.base_model:
        meta["base_model"] = facts.base_model
        meta["base_model_relation"] = facts.relation or ("adapter" if facts.kind == "adapter" else "finetune")
    if facts.license:
        meta["license"] = facts.license
    # A bottleneck adapter or a side network loads with the studio's loader, not peft.
    meta["library_name"] = ("gguf" if gguf else "tuning-studio" if bottleneck else "peft" if facts.kind == "adapter"
                            else "transformers")
    meta["pipeline_tag"] = facts.pipeline_tag
    tags = [str(tag) for tag in meta.get("tags") or []]
    lora = facts.kind == "adapter" and not bottleneck
    extra = ["tuning-studio", *(["gguf", "llama.cpp"] if gguf else []), *(["lora"] if lora else [])]
    meta["tags"] = tags + [tag for tag in extra if tag not in tags]
    return meta


def _evaluation_section(evaluations: list[dict]) -> str:
    if not evaluations:
        return ""
    names = [key for key in ("eval_loss", "perplexity", "exact_match", "rouge_l", "accuracy", "f1")
             if any(e.get(key) is not None for e in evaluations)]
    header = "| dataset | " + " | ".join(names) + " |\n|---|" + "---|" * len(names)
    rows = "\n".join(f"| {e.get('dataset') or '—'} | " + " | ".join(str(e.get(k, "—")) for k in names) + " |"
                     for e in evaluations)
    return f"\n## Evaluation\n\nScored by Tuning Studio on the team's own datasets.\n\n{header}\n{rows}\n"


def _gguf_section(repo_id: str, files: list[str]) -> str:
    ggufs = [name for name in files if name.endswith(".gguf")]
    if not ggufs:
        return ""
    quant = re.search(r"-([A-Za-z0-9_]+)\.gguf$", ggufs[0])
    tag = f":{quant.group(1).upper()}" if quant else ""
    return f"""
## Use with llama.cpp and Ollama

```sh
llama-cli -hf {repo_id} -p "Hello"
ollama run hf.co/{repo_id}{tag}
```

Files: {", ".join(f"`{name}`" for name in ggufs)}. The chat template travels inside the GGUF file.
"""


def hub_card(readme: str, *, facts: CardFacts, repo_id: str, files: list[str]) -> str:
    """The README.md for ``repo_id``: the studio's card (``readme``, "" when the
    artifact has none) with the Hub's metadata header and the load snippet
    pointing at the repo."""
    meta, body = split_front_matter(readme)
    gguf = facts.format == "gguf" or any(name.endswith(".gguf") for name in files)
    body = body.replace(LOCAL_PATH, repo_id).strip() or f"# {facts.title}\n\nMade with Tuning Studio."
    data = "".join(f"\n- {d.get('name') or 'dataset'} (sha256 `{d.get('sha256') or 'n/a'}`)" for d in facts.datasets)
    lineage = "".join(f"\n- {line}" for line in facts.lineage)
    licence = facts.license or "not stated by the base model"
    sections = [
        _evaluation_section(facts.evaluations),
        f"\n## Data\n{data}\n" if data and "sha256" not in body else "",
        f"\n## Lineage\n\nHow this {facts.kind} was made, newest first:\n{lineage}\n" if lineage else "",
        f"\n## Licence\n\n{licence}, the base model's"
        f"{' (a gated model: its conditions apply to whoever uses this)' if facts.gated else ''}.\n",
        _gguf_section(repo_id, files),
    ]
    studio_loaded = bool(set(STUDIO_LOADED_FILES) & set(files))
    header = yaml.safe_dump(_metadata(meta, facts, gguf, studio_loaded), sort_keys=False,
                            allow_unicode=True)
    return f"---\n{header}---\n\n{body}\n" + "".join(sections)
