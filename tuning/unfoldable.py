"""Artifacts whose change cannot be folded into their base model's weights,
and so cannot be merged, folded, quantized or exported: what they are and
what the user can do instead. Read from config files only (cheap enough for
the web process, which refuses them before queueing).

- Bottleneck adapters (Houlsby, Pfeiffer, Compacter; tuning/methods/bottleneck.py)
  add small networks with a nonlinearity between their projections: no
  weight of the base equals base + adapter.
- MoLA (tuning/methods/mola.py) mixes LoRA experts chosen per token by a
  router: the change depends on the input, so no one weight holds it.
- Ladder Side-Tuning's side networks (tuning/methods/ladder.py) run beside
  the model and add to its final hidden state: no weight changes.
- peft's prompt-learning adapters (prompt tuning, prefix tuning, P-tuning)
  add virtual tokens (or per-layer key/value prefixes) in front of the
  input; they change no weight at all.
"""

from __future__ import annotations

import json
from pathlib import Path

from tuning.methods.bottleneck import CONFIG_FILE as BOTTLENECK_CONFIG
from tuning.methods.mola import CONFIG_FILE as MOLA_CONFIG
from tuning.methods.ladder import CONFIG_FILE as LADDER_CONFIG

# peft_type -> the method's name as the studio shows it
PROMPT_LEARNING = {"PROMPT_TUNING": "Prompt tuning", "PREFIX_TUNING": "Prefix tuning", "P_TUNING": "P-tuning",
                   "MULTITASK_PROMPT_TUNING": "Multitask prompt tuning", "CPT": "Context-aware prompt tuning (CPT)"}
BOTTLENECK_VARIANTS = {"houlsby": "Houlsby", "pfeiffer": "Pfeiffer", "compacter": "Compacter"}
INSTEAD = {
    "merged": "use it as it is (the playground, evaluation and serving load it on its base), or train a LoRA-family "
              "adapter or a full fine-tune, which merge",
    "quantized": "quantize or export the base model and load the adapter on it (the playground, evaluation and "
                 "serving do), or train a LoRA-family adapter or a full fine-tune, which fold into the weights first",
}


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def what_it_is(directory: str | Path) -> str | None:
    """"a Pfeiffer bottleneck adapter (…)" for an artifact that cannot be folded, None for any other."""
    directory = Path(directory)
    if (directory / BOTTLENECK_CONFIG).exists():
        variant = (_read(directory / BOTTLENECK_CONFIG).get("settings") or {}).get("variant", "")
        label = BOTTLENECK_VARIANTS.get(variant, "bottleneck")
        return (f"a {label} bottleneck adapter (Bottleneck adapters): it adds small networks with a nonlinearity "
                f"to each block instead of changing the base's weights")
    if (directory / MOLA_CONFIG).exists():
        return ("a MoLA adapter (MoLA (mixture of LoRA experts)): its routers choose LoRA experts for each input "
                "token, so the change it makes depends on the input")
    if (directory / LADDER_CONFIG).exists():
        return ("a Ladder Side-Tuning side network: a small network beside the model that adds to its final hidden "
                "state instead of changing the base's weights")
    peft_type = _read(directory / "adapter_config.json").get("peft_type", "")
    if peft_type in PROMPT_LEARNING:
        return (f"a {PROMPT_LEARNING[peft_type]} adapter: it adds virtual tokens to the input and changes none of "
                f"the base's weights")
    return None


def unfoldable_refusal(directory: str | Path, doing: str) -> str | None:
    """Why the artifact at ``directory`` cannot be ``doing`` ("merged" or "quantized") and what to do instead,
    or None when nothing here stops it."""
    what = what_it_is(directory)
    if what is None:
        return None
    return f"{directory} is {what}, so it cannot be folded into the base or {doing}; {INSTEAD[doing]}"
