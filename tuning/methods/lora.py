"""LoRA: low-rank adapters on the frozen base (Hu et al., 2021, arXiv:2106.09685)."""

from __future__ import annotations

from dataclasses import dataclass

from tuning.config import setting


@dataclass(frozen=True, kw_only=True)
class LoraParams:
    rank: int = setting(16, help="Rank r of the update matrices; higher trains more parameters.", min=1,
                        max=1024, basic=True, label="LoRA rank")
    alpha: float = setting(32.0, help="Scaling numerator: the update is scaled by alpha / rank.", min=0.0,
                           max=4096.0, basic=True, label="LoRA alpha")
    dropout: float = setting(0.05, help="Dropout on the adapter input during training.", min=0.0, max=0.9)
    target_modules: str = setting("all-linear", help="Comma-separated module names to adapt, or "
                                                      "'all-linear' for every linear layer but the output head.")


def prepare(model, params: LoraParams, context=None):
    from peft import LoraConfig, get_peft_model

    targets = params.target_modules.strip()
    config = LoraConfig(
        r=params.rank,
        lora_alpha=params.alpha,
        lora_dropout=params.dropout,
        target_modules=targets if targets == "all-linear" else [t.strip() for t in targets.split(",") if t.strip()],
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)
