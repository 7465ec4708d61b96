"""FourierFT: each layer learns n spectral coefficients at fixed random
frequencies; the weight update is their inverse 2-D Fourier transform
(Gao et al., 2024, arXiv:2405.03003), through peft."""

from __future__ import annotations

from dataclasses import dataclass

from tuning.fields import setting
from tuning.methods.common import TARGETS_HELP, peft_task_type, presets, refusals, targets


@dataclass(frozen=True, kw_only=True)
class FourierftParams:
    n_frequency: int = setting(1000, help="Trained spectral coefficients per layer; at most in × out of the "
                                          "smallest targeted layer.", min=1, max=10_000_000, basic=True,
                               label="Frequencies per layer")
    scaling: float = setting(150.0, help="Scale of the update (the paper uses 100-300 for language models).",
                             min=0.0, max=10000.0)
    init: str = setting("zero", help="How the coefficients start: zero makes the adapter start as the identity "
                                     "(the loss starts at the base model's); gaussian is peft's default, a random "
                                     "first update.", choices=("zero", "gaussian"), label="Initialisation")
    frequency_seed: int = setting(777, help="Seed choosing which frequencies are learned.", min=0, max=2**31 - 1)
    target_modules: str = setting("default", help=TARGETS_HELP + " 'default': the query and value projections, "
                                                                 "as in the paper.")


PRESETS = presets(quick=(0.05, {"n_frequency": 1000}),
                  balanced=(0.03, {"n_frequency": 1000}),
                  thorough=(0.02, {"n_frequency": 4000}))


def prepare(model, params: FourierftParams, context=None):
    from peft import FourierFTConfig, get_peft_model

    config = FourierFTConfig(n_frequency=params.n_frequency, scaling=params.scaling,
                             random_loc_seed=params.frequency_seed, init_weights=params.init == "zero",
                             target_modules=targets(params.target_modules), task_type=peft_task_type(context))
    return get_peft_model(model, config)


def check(params: FourierftParams, model_config, task: str) -> dict[str, str]:
    return refusals(prepare, params, model_config, task, blame="n_frequency")
