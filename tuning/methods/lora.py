"""LoRA: low-rank adapters on the frozen base (Hu et al., 2021, arXiv:2106.09685),
with its published variants as options: rsLoRA scaling, DoRA, LoRA+
learning rates and the PiSSA, OLoRA, CorDA and EVA initialisations, all
through peft's own implementation.

PiSSA, OLoRA and CorDA start the adapter from a decomposition of the
weights and subtract it from the base, so the trained adapter belongs to a
modified base. ``export`` converts it with peft into a plain LoRA adapter of
twice the rank that loads on the unmodified base; checkpoints stay
unconverted, because a resumed run rebuilds the same modified base.
"""

from __future__ import annotations

from dataclasses import dataclass

from tuning.fields import setting
from tuning.errors import ConfigError
from tuning.methods.common import (dropout_setting, on_meta, peft_task_type, presets, rank_problems,
                                   target_modules_setting, targets)

# Initialisations that rewrite the base weights (see the module docstring).
RESIDUAL_INITS = ("pissa", "olora", "corda")
PEFT_INIT = {"default": True, "gaussian": "gaussian", "pissa": "pissa", "olora": "olora", "corda": "corda",
             "eva": "eva"}


@dataclass(frozen=True, kw_only=True)
class LoraParams:
    rank: int = setting(16, help="Rank r of the update matrices; higher trains more parameters.", min=1,
                        max=1024, basic=True, label="LoRA rank")
    alpha: float = setting(32.0, help="Scaling numerator: the update is scaled by alpha / rank (alpha / √rank "
                                      "with rsLoRA).", min=0.0, max=4096.0, basic=True, label="LoRA alpha")
    dropout: float = dropout_setting(0.05)
    target_modules: str = target_modules_setting()
    init: str = setting("default", help="How the adapter starts. default: A random, B zero (Hu et al.); gaussian: "
                                        "A Gaussian; pissa: from the weights' principal singular vectors (PiSSA, "
                                        "arXiv:2404.02948); olora: from a QR decomposition of the weights (OLoRA, "
                                        "arXiv:2406.01775); corda: from the weights and the training data's "
                                        "activation covariance, instruction-previewed mode (CorDA, arXiv:2406.05223); "
                                        "eva: from the SVD of the training data's activations, ranks redistributed "
                                        "between layers (EVA, arXiv:2410.07170).",
                        choices=tuple(PEFT_INIT), label="Initialisation")
    use_rslora: bool = setting(False, help="Rank-stabilised LoRA (arXiv:2312.03732): scale by alpha / √rank so "
                                           "that higher ranks keep learning.", label="rsLoRA")
    use_dora: bool = setting(False, help="DoRA (arXiv:2402.09353): split each weight into magnitude and direction "
                                         "and adapt the direction; closer to full fine-tuning, somewhat slower.",
                             label="DoRA")
    loraplus_lr_ratio: float = setting(1.0, help="LoRA+ (arXiv:2402.12354): the B matrices learn this many times "
                                                 "faster than A; 1 turns it off, the paper suggests 16.",
                                       min=1.0, max=256.0, label="LoRA+ learning-rate ratio")
    eva_rho: float = setting(2.0, help="EVA only: how far ranks may move between layers; a layer gets at most "
                                       "rho × rank (1: every layer keeps the rank).", min=1.0, max=10.0,
                             label="EVA rho")


PRESETS = presets(quick=(0.001, {"rank": 8, "alpha": 16}),
                  balanced=(0.0005, {"rank": 16, "alpha": 32}),
                  thorough=(0.0002, {"rank": 32, "alpha": 64, "use_rslora": True}))


def prepare(model, params: LoraParams, context=None):
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora.config import CordaConfig, EvaConfig

    # On a meta model (checks, estimates) nothing can be decomposed; the
    # default init gives the same shapes (EVA may later move some rank).
    init = "default" if on_meta(model) else params.init
    config = LoraConfig(
        r=params.rank, lora_alpha=params.alpha, lora_dropout=params.dropout,
        target_modules=targets(params.target_modules), task_type=peft_task_type(context),
        use_rslora=params.use_rslora, use_dora=params.use_dora, init_lora_weights=PEFT_INIT[init],
        eva_config=EvaConfig(rho=params.eva_rho) if init == "eva" else None,
        corda_config=CordaConfig(corda_method="ipm") if init == "corda" else None,
    )
    if init == "corda":
        _preprocess_corda(model, config, _calibration(context, init))
    peft_model = get_peft_model(model, config)
    if init == "eva":
        from peft.tuners.lora.eva import initialize_lora_eva_weights

        initialize_lora_eva_weights(peft_model, dataloader=_calibration(context, init), show_progress_bar=False)
    if init in RESIDUAL_INITS:
        from peft.utils import get_peft_model_state_dict

        # Kept in memory for ``export``: the adapter as initialised.
        peft_model.tuning_initial_adapter = {k: v.detach().clone()
                                             for k, v in get_peft_model_state_dict(peft_model).items()}
    return peft_model


def _calibration(context, init: str) -> list[dict]:
    batches = list(context.calibration_batches()) if context else []
    if not batches:
        raise ConfigError({"method_params.init": f"the {init} initialisation needs training data to calibrate on"})
    return batches


def _preprocess_corda(model, config, batches: list[dict]) -> None:
    """CorDA collects each layer's input covariance from forward passes. Its
    hook takes one sequence at a time, so rows go through one by one,
    without their padding."""
    from peft.tuners.lora.corda import preprocess_corda
    from peft.tuners.tuners_utils import _maybe_include_all_linear_layers

    def run_model():
        for batch in batches:
            for row in range(batch["input_ids"].shape[0]):
                length = int(batch["attention_mask"][row].sum())
                model(input_ids=batch["input_ids"][row:row + 1, :length])

    # preprocess_corda matches target names literally: expand "all-linear" first.
    preprocess_corda(model, _maybe_include_all_linear_layers(config, model), run_model=run_model)


def export(model, directory) -> None:
    initial = getattr(model, "tuning_initial_adapter", None)
    if initial is None:
        model.save_pretrained(directory, safe_serialization=True)
        return
    import tempfile
    from pathlib import Path

    from safetensors.torch import load_file, save_file

    with tempfile.TemporaryDirectory() as scratch:
        initial_dir = Path(scratch) / "initial"
        initial_dir.mkdir()
        save_file(initial, initial_dir / "adapter_model.safetensors")
        model.peft_config["default"].save_pretrained(initial_dir)
        model.save_pretrained(directory, safe_serialization=True,
                              path_initial_model_for_weight_conversion=str(initial_dir))
    # peft's conversion keeps only lora_A/lora_B; put back the other trained
    # tensors (a classifier head) so the adapter is whole.
    from peft.utils import get_peft_model_state_dict

    weights = Path(directory) / "adapter_model.safetensors"
    converted = load_file(weights)
    rest = {k: v.detach().contiguous() for k, v in get_peft_model_state_dict(model).items()
            if "lora_A" not in k and "lora_B" not in k}
    if rest:
        save_file({**converted, **rest}, weights, metadata={"format": "pt"})


def param_groups(model, params: LoraParams, base_lr: float) -> list[dict]:
    """LoRA+ through peft's own grouping: B matrices (and vectors) at
    ratio × lr, A matrices at lr."""
    if params.loraplus_lr_ratio == 1.0:
        return [{"params": [p for p in model.parameters() if p.requires_grad]}]
    from peft.optimizers import create_loraplus_optimizer

    def collect(groups, **_):  # stands in for the optimizer class: we want its groups
        return groups

    # peft pins a weight decay on each group; None marks "the run's setting",
    # which AdamW applies where the key is absent (peft's no-decay group keeps 0).
    groups = create_loraplus_optimizer(model, collect, lr=base_lr, loraplus_lr_ratio=params.loraplus_lr_ratio,
                                       loraplus_weight_decay=None)
    return [{k: v for k, v in group.items() if v is not None} for group in groups if group["params"]]


def check(params: LoraParams, model_config, task: str) -> dict[str, str]:
    if params.use_dora and params.init in RESIDUAL_INITS:
        return {"use_dora": f"DoRA cannot be combined with the {params.init} initialisation: its adapter is saved "
                            f"as plain LoRA for the unmodified base, which has no place for DoRA's magnitudes"}
    if task == "preference" and params.init in RESIDUAL_INITS:
        return {"init": f"the {params.init} initialisation subtracts the adapter from the base weights, so switching "
                        f"the adapter off no longer gives the base model the preference loss compares with; use the "
                        f"default initialisation"}
    return rank_problems(prepare, params, model_config, task, rank=params.rank, field="rank")
