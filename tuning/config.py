"""Run configurations: frozen, keyword-only dataclasses.

The field machinery (``setting``, ``field_specs``, ``config_from_dict``)
lives in ``tuning.fields``, which the methods' parameter classes use too;
this module reads the method table to validate ``method_params``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from tuning.data.chat_templates import AUTO, CHAT_TEMPLATE_CHOICES
from tuning.data.system_prompts import CUSTOM, MAX_SYSTEM_PROMPT, SYSTEM_PROMPT_CHOICES, TEMPLATE
from tuning.errors import ConfigError
from tuning.fields import FieldSpec, coerce, config_from_dict, config_to_dict, field_specs, setting
from tuning.methods import METHODS
from tuning.model_info import multimodal_refusal
from tuning.models import MODEL_CODE_LOCK, load_model_config
from tuning.grpo_rewards import LAST_NUMBER, pattern_problem
from tuning.optimizers import GALORE_FIELDS, OPTIMIZERS
from tuning.preference import PREFERENCE_LOSSES
from tuning.sharding import check_sharding, shards_states

# Re-exported: the studio's services build and dump configs through this module.
__all__ = ["MAX_GOLDEN_PROMPTS", "FieldSpec", "TrainConfig", "check_against_model", "config_from_dict",
           "config_to_dict", "field_specs", "setting"]


MAX_GOLDEN_PROMPTS = 8  # each is generated at every checkpoint: keep the cost bounded


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """A supervised fine-tuning run. Method-specific settings live in
    ``method_params`` and are validated by the method's own dataclass."""

    base_model: str = setting(help="Local model directory or hub id of the base model.")
    base_model_name: str = setting("", help="Name recorded in the model card and adapter config "
                                            "(defaults to base_model).")
    dataset_path: str = setting(help="JSONL or CSV file of instruction/response rows.")
    dataset_name: str = setting("", help="Name recorded in the model card.")
    dataset_sha256: str = setting("", help="Content hash recorded in the model card.")
    output_dir: str = setting(help="Directory for checkpoints and the final adapter.")
    task: str = setting("sft", help="What to train: sft (instruction/chat data, loss on responses), pretrain "
                                    "(continued pre-training on plain text), classify (text + label) or "
                                    "preference (prompt, chosen and rejected replies: DPO and the like; or "
                                    "unpaired completions for KTO) or reward (a reward model trained on the "
                                    "same pairs) or grpo (prompts with reference answers: the model samples "
                                    "answers and learns from rewards defined below).",
                        choices=("sft", "pretrain", "classify", "preference", "reward", "grpo"), basic=True)
    chat_template: str = setting(AUTO, help="How rows are rendered for SFT and preference: auto (the model's own "
                                            "chat template, or Instruction/Response when it has none) or a named "
                                            "template (tuning.data.chat_templates), which replaces the model's own.",
                                 choices=CHAT_TEMPLATE_CHOICES, label="Chat template")
    system_prompt: str = setting(TEMPLATE, help="SFT and preference: the system prompt of rows that have none. "
                                                "template: whatever the chat template writes (SmolLM2's and Qwen's "
                                                "write a default one); custom: the text below; none: no system "
                                                "prompt (clears a template's default). Rows with their own keep it; "
                                                "the saved model uses the same in the playground.",
                                 choices=SYSTEM_PROMPT_CHOICES, label="System prompt")
    system_prompt_text: str = setting("", help="The system prompt, when System prompt is custom.",
                                      label="System prompt text", multiline=True)
    method: str = setting("lora", help="Fine-tuning method (see `python -m tuning methods`).", basic=True)
    method_params: dict = field(default_factory=dict)
    # Preference task only (tuning.preference); refused with another task where changed from the default.
    preference_loss: str = setting("dpo", help="Preference task: the loss. dpo (sigmoid), ln_dpo (DPO on per-token "
                                               "log-ratios), ipo, cdpo (conservative "
                                               "DPO, with label smoothing), the reference-free orpo, simpo, cpo, "
                                               "and kto (single completions labelled desirable or not).",
                                   choices=tuple(PREFERENCE_LOSSES), basic=True, label="Preference loss")
    beta: float = setting(0.1, help="Preference task: how strongly the loss acts. DPO/cDPO/LN-DPO: the KL "
                                    "penalty's weight (0.1 usual; lower strays further from the reference); IPO: "
                                    "τ; ORPO: λ, the odds-ratio term's weight; SimPO: the reward scale (2 to 2.5 in "
                                    "the paper); CPO: the temperature; KTO: as DPO.", min=0.001, max=100.0, basic=True,
                          label="Beta")
    label_smoothing: float = setting(0.0, help="Preference task, cdpo/simpo/cpo: the assumed share of pairs whose "
                                               "labels are flipped (0.1 is usual for cdpo).", min=0.0, max=0.49)
    simpo_gamma: float = setting(0.5, help="Preference task, simpo: the target reward margin γ (TRL's default 0.5).",
                                 min=0.0, max=100.0, label="SimPO gamma")
    cpo_alpha: float = setting(1.0, help="Preference task, cpo: the weight of the supervised loss on the chosen "
                                         "reply (0: the preference loss alone).", min=0.0, max=100.0,
                               label="CPO alpha")
    desirable_weight: float = setting(1.0, help="Preference task, kto: the weight of the desirable completions' "
                                                "loss; raise it when they are the rarer side (the paper keeps "
                                                "desirable × weight to undesirable × weight between 1 and 4/3).",
                                      min=0.01, max=100.0, label="Desirable weight")
    undesirable_weight: float = setting(1.0, help="Preference task, kto: the weight of the undesirable "
                                                  "completions' loss.", min=0.01, max=100.0,
                                        label="Undesirable weight")
    # Reward task only (tuning.reward).
    reward_centering: float = setting(0.0, help="Reward task: weight of a term that keeps the scores near zero, "
                                                "mean((chosen + rejected)²) (TRL's center_rewards_coefficient; "
                                                "0.01 is usual; 0: off).", min=0.0, max=10.0,
                                      label="Reward centering")
    # GRPO task only (tuning.grpo, tuning.grpo_rewards).
    policy_loss: str = setting("grpo", help="GRPO task: grpo (each completion's reward against its group's mean "
                                            "and spread; TRL's loss) or remax (arXiv:2310.10505: REINFORCE whose "
                                            "baseline is the reward of the model's greedy answer to the prompt; "
                                            "works with one completion a prompt).", choices=("grpo", "remax"),
                               label="Policy loss")
    group_size: int = setting(4, help="GRPO: completions sampled per prompt; each is judged against its group "
                                      "(at least 2; remax: 1 or more).", min=1, max=64, label="Group size")
    max_completion_length: int = setting(64, help="GRPO: the longest completion sampled, in tokens.", min=1,
                                         max=8192, label="Max completion length")
    temperature: float = setting(1.0, help="GRPO: sampling temperature.", min=0.05, max=5.0)
    kl_beta: float = setting(0.0, help="GRPO: weight of the KL penalty against the base model (TRL's beta; 0 "
                                       "computes no reference; DeepSeek-R1 used 0.001).", min=0.0, max=10.0,
                             label="KL beta")
    reward_exact_match: float = setting(1.0, help="GRPO: weight of the exact-match reward (1 when the answer "
                                                  "the answer pattern finds in a completion equals the one it "
                                                  "finds in the row's reference answer; 0: off).", min=0.0,
                                        max=100.0, label="Exact-match reward weight")
    answer_pattern: str = setting(LAST_NUMBER, help="GRPO: regular expression that extracts the final answer "
                                                    "(its first group, else the whole match); default: the "
                                                    "last number.", label="Answer pattern")
    reward_format: float = setting(0.0, help="GRPO: weight of the format reward (1 when the format pattern is "
                                             "found in the completion).", min=0.0, max=100.0,
                                   label="Format reward weight")
    format_pattern: str = setting("", help="GRPO: regular expression a well-formatted completion contains.",
                                  label="Format pattern")
    reward_length: float = setting(0.0, help="GRPO: weight of the length reward (1 when the completion's "
                                             "tokens are within length min and length max).", min=0.0,
                                   max=100.0, label="Length reward weight")
    length_min: int = setting(0, help="GRPO: fewest completion tokens the length reward accepts.", min=0,
                              max=8192, label="Length min")
    length_max: int = setting(0, help="GRPO: most completion tokens the length reward accepts (0: no limit).",
                              min=0, max=8192, label="Length max")
    reward_model_weight: float = setting(0.0, help="GRPO: weight of the score a reward model gives each "
                                                   "completion.", min=0.0, max=100.0,
                                         label="Reward-model weight")
    reward_model: str = setting("", help="GRPO: directory of a reward-model artifact (task reward).",
                                label="Reward model")
    reward_model_base: str = setting("", help="GRPO: the base model of that reward model, where it is an "
                                              "adapter.", label="Reward model's base")
    reference: str = setting("base", help="Preference task, dpo/ln_dpo/ipo/cdpo/kto: where the reference "
                                          "model's scores come from. base: the base model scores every batch "
                                          "(adapters switched off, no second copy; a frozen copy for full "
                                          "fine-tuning); precomputed: it scores every pair once before training "
                                          "(no copy and no extra forward per step).",
                             choices=("base", "precomputed"), label="Reference model")
    # Prompts answered at the start and at every checkpoint, so a user sees
    # how the answers change; a list, checked in from_dict (like method_params).
    golden_prompts: list = field(default_factory=list)
    golden_max_new_tokens: int = setting(48, help="Tokens generated per golden prompt at each checkpoint.", min=1,
                                         max=1024)
    forgetting_threshold_pct: float = setting(0.0, help="In the studio: after training, a forgetting check runs "
                                              "on the output (perplexity on a general held-out text, base vs "
                                              "tuned) and warns when it rises by more than this percentage; 0: "
                                              "no check. `python -m tuning train` runs it after training too (exit "
                                              "code 4 when it regressed).", min=0.0, max=10000.0,
                                              label="Forgetting check (%)")
    forgetting_harness_tasks: str = setting("", help="With the forgetting check: lm-evaluation-harness tasks "
                                            "(separated by commas, e.g. arc_easy,hellaswag) scored on the base and "
                                            "the output too, warning when a score drops by more than that "
                                            "percentage; they download their data, so the worker needs a "
                                            "network.", label="Forgetting check: harness tasks")
    learning_rate: float = setting(2e-4, help="Peak learning rate (AdamW); 0 trains nothing, which measures the "
                                              "base model's eval loss.", min=0.0, max=1.0, basic=True,
                                   label="Learning rate")
    epochs: float = setting(1.0, help="Passes over the data (ignored when max steps is set).", min=0.01,
                            max=1000.0, basic=True)
    max_steps: int = setting(0, help="Stop after this many optimizer steps; 0 means use epochs.", min=0,
                             max=10_000_000, basic=True, label="Max steps")
    batch_size: int = setting(4, help="Rows per step.", min=1, max=4096, basic=True)
    max_length: int = setting(512, help="Tokens per row; longer rows are truncated.", min=8, max=131072,
                              basic=True, label="Max length (tokens)")
    gradient_accumulation: int = setting(1, help="Micro-batches per optimizer step.", min=1, max=1024)
    warmup_ratio: float = setting(0.03, help="Fraction of steps spent warming up the learning rate.",
                                  min=0.0, max=0.5)
    scheduler: str = setting("cosine", help="Learning-rate schedule after warm-up.",
                             choices=("cosine", "linear", "constant"))
    weight_decay: float = setting(0.0, help="AdamW weight decay.", min=0.0, max=1.0)
    optimizer: str = setting("adamw", help="adamw, or GaLore (arXiv:2403.03507) for the methods that train the "
                                           "model's own weights (full, top-k, half, layer-wise LR decay, BitFit): "
                                           "AdamW's moments kept in a low-rank projection of each linear layer's "
                                           "gradient, a fraction of AdamW's optimizer memory with every weight "
                                           "still trained; galore_8bit also keeps them in 8 bits (CUDA GPU).",
                             choices=tuple(OPTIMIZERS))
    galore_rank: int = setting(128, help="GaLore: rank of the gradient projection (the paper: 128 for 60M, 256 "
                                         "for 130M-350M, 512 for 1B models).", min=1, max=16384,
                               label="GaLore rank")
    galore_update_every: int = setting(200, help="GaLore: steps between recomputing each projection from the "
                                                 "gradient's singular vectors (T in the paper).", min=1,
                                       max=10_000_000, label="GaLore update every")
    galore_scale: float = setting(0.25, help="GaLore: scale of the projected-back update (α in the paper).",
                                  min=0.0, max=100.0, label="GaLore scale")
    max_grad_norm: float = setting(1.0, help="Clip gradients to this norm; 0 turns clipping off.", min=0.0,
                                   max=1000.0)
    precision: str = setting("auto", help="Compute precision: auto picks bf16 where the device computes it "
                                          "natively (else fp32 on a CPU).",
                             choices=("auto", "fp32", "bf16", "fp16"))
    gradient_checkpointing: bool = setting(False, help="Recompute activations in the backward pass: less "
                                                       "memory, about a third slower.")
    devices: int = setting(1, help="Devices (processes) that train the job together, each on its share of "
                                   "every batch (tuning.distributed); the worker's machine must have them.",
                           min=1, max=64)
    sharding: str = setting("auto", help="How several devices share the model: ddp keeps a whole copy on each "
                                         "(adapters); fsdp (FSDP2) splits weights, gradients and optimizer state "
                                         "across them, for full fine-tuning of a model too large for one device; "
                                         "auto picks fsdp for methods that train the model itself.",
                            choices=("auto", "ddp", "fsdp"))
    validation_ratio: float = setting(0.0, help="Fraction of rows held out for evaluation (0: no evaluation).",
                                      min=0.0, max=0.5)
    eval_every: int = setting(0, help="Evaluate every N steps (0: only at the end); needs a validation split.",
                              min=0, max=10_000_000)
    early_stopping_patience: int = setting(0, help="Stop after this many evaluations without a lower eval loss "
                                                   "(0: never stop early).", min=0, max=1000)
    load_best_at_end: bool = setting(False, help="Save the checkpoint with the lowest eval loss as the output, "
                                                 "instead of the last step.")
    resume_from: str = setting("", help="Checkpoint directory to continue from (model, optimizer, scheduler and "
                                        "data position); 'latest' picks the newest one in output_dir.")
    packing: bool = setting(True, help="Pack each batch's rows end to end without padding (each row still "
                                       "attends only to itself); faster on data of mixed lengths. Turned off "
                                       "automatically where the method or model cannot use it.")
    group_by_length: bool = setting(False, help="Batch rows of similar length together, so padded batches waste "
                                                "less; only matters when packing is off or unavailable.")
    cache_dir: str = setting("", help="Directory for cached tokenized datasets (empty: .token-cache beside the "
                                      "output directory).")
    loss_on_prompt: bool = setting(False, help="Also train on the prompt tokens (default: responses only).")
    seed: int = setting(42, help="Random seed for shuffling and initialisation.", min=0, max=2**31 - 1)
    save_every: int = setting(100, help="Write a checkpoint every N steps.", min=1, max=10_000_000)
    keep_checkpoints: int = setting(2, help="How many recent checkpoints to keep.", min=1, max=100)
    trust_remote_code: bool = setting(False, help="Run model code shipped with the model (off unless an "
                                                  "admin allows it).")

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        data = dict(data)
        method_params = data.pop("method_params", None) or {}
        golden_prompts = data.pop("golden_prompts", None) or []
        errors = {}
        config = None
        try:
            config = config_from_dict(cls, data)
        except ConfigError as exc:
            errors.update(exc.errors)
        if (not isinstance(golden_prompts, (list, tuple)) or len(golden_prompts) > MAX_GOLDEN_PROMPTS
                or not all(isinstance(p, str) and p.strip() and len(p) <= 4000 for p in golden_prompts)):
            errors["golden_prompts"] = (f"give at most {MAX_GOLDEN_PROMPTS} prompts, each a non-empty text of at "
                                        f"most 4000 characters")
        method = METHODS.get(data.get("method", "lora"))
        if method is None:
            errors["method"] = f"unknown method '{data.get('method')}'; known: {', '.join(sorted(METHODS))}"
        elif _truthy(data.get("gradient_checkpointing")) and not method.gradient_checkpointing:
            errors["gradient_checkpointing"] = f"{method.label} does not work with gradient checkpointing; turn it off"
        elif data.get("task", "sft") not in method.tasks:
            errors["task"] = (f"{method.label} does not support the task '{data.get('task')}'; it supports: "
                              f"{', '.join(method.tasks)}")
        errors.update(_preference_problems(data))
        errors.update(_system_prompt_problems(data))
        errors.update(_grpo_problems(data))
        if config is not None and config.forgetting_harness_tasks.strip() and config.forgetting_threshold_pct <= 0:
            errors["forgetting_harness_tasks"] = ("these tasks run with the forgetting check: set its threshold "
                                                  "(forgetting_threshold_pct) too")
        errors.update(_optimizer_problems(data, method))
        if method is not None:
            try:
                params = config_from_dict(method.params, method_params, prefix="method_params.")
                method_params = config_to_dict(params)
            except ConfigError as exc:
                errors.update(exc.errors)
        if errors:
            raise ConfigError(errors)
        return dataclasses.replace(config, method_params=method_params,
                                   golden_prompts=[p.strip() for p in golden_prompts])


def _system_prompt_problems(data: dict) -> dict[str, str]:
    choice, text = data.get("system_prompt") or TEMPLATE, str(data.get("system_prompt_text") or "")
    task = data.get("task") or "sft"
    if choice != TEMPLATE and task not in ("sft", "preference"):
        return {"system_prompt": f"applies to the sft and preference tasks only (this job's task is {task})"}
    if choice == CUSTOM and not text.strip():
        return {"system_prompt_text": "write the system prompt, or choose template or none"}
    if choice != CUSTOM and text.strip():
        return {"system_prompt_text": f"is used only when System prompt is custom (it is {choice}); choose custom "
                                      f"or clear the text"}
    if len(text) > MAX_SYSTEM_PROMPT:
        return {"system_prompt_text": f"is {len(text)} characters; keep it under {MAX_SYSTEM_PROMPT}"}
    return {}


PREFERENCE_FIELDS = ("preference_loss", "beta", "label_smoothing", "simpo_gamma", "cpo_alpha", "desirable_weight",
                     "undesirable_weight", "reference")


REWARD_FIELDS = ("reward_centering",)
GRPO_FIELDS = ("policy_loss", "group_size", "max_completion_length", "temperature", "kl_beta", "reward_exact_match",
               "answer_pattern", "reward_format", "format_pattern", "reward_length", "length_min", "length_max",
               "reward_model_weight", "reward_model", "reward_model_base")


def _grpo_problems(data: dict) -> dict[str, str]:
    """GRPO settings set for another task; for GRPO, a run without any reward, a reward missing what it
    reads, a pattern that is no regular expression, a validation split (GRPO reports rewards, not a loss)."""
    defaults = {spec.name: spec.default for spec in field_specs(TrainConfig)}
    task = data.get("task") or "sft"
    value = {name: data.get(name, defaults[name]) for name in GRPO_FIELDS}
    if task != "grpo":
        return {name: f"applies to the grpo task only (this job's task is {task})" for name in GRPO_FIELDS
                if data.get(name) not in (None, "") and _same(data[name], defaults[name]) is False}
    problems = {}
    weights = {}
    for name in ("reward_exact_match", "reward_format", "reward_length", "reward_model_weight"):
        try:
            weights[name] = coerce(value[name], float)
        except ValueError:
            return {}  # reported by config_from_dict
    if not any(weights.values()):
        problems["reward_exact_match"] = ("GRPO needs at least one reward: give exact match, format, length or a "
                                          "reward model a weight above 0")
    for pattern in ("answer_pattern", "format_pattern"):
        if isinstance(value[pattern], str) and (why := pattern_problem(value[pattern])):
            problems[pattern] = why
    if value["policy_loss"] != "remax" and _truthy_number(value["group_size"]) and coerce(value["group_size"], int) < 2:
        problems["group_size"] = ("GRPO judges each completion against the others of its group: sample at least 2 "
                                  "a prompt, or choose the remax policy loss (its baseline is the greedy answer)")
    if weights["reward_format"] and not str(value["format_pattern"]).strip():
        problems["format_pattern"] = "the format reward needs a pattern to look for"
    if weights["reward_model_weight"] and not str(value["reward_model"]).strip():
        problems["reward_model"] = "the reward-model reward needs a reward model (an artifact of a reward job)"
    if weights["reward_length"] and not (_truthy_number(value["length_min"]) or _truthy_number(value["length_max"])):
        problems["length_max"] = "the length reward needs a length min or a length max"
    if data.get("validation_ratio") not in (None, "") and _same(data["validation_ratio"], 0.0) is False:
        problems["validation_ratio"] = "GRPO reports rewards as it trains and has no validation loss; set it to 0"
    return problems


def _optimizer_problems(data: dict, method) -> dict[str, str]:
    """GaLore settings without GaLore; GaLore with a method that trains no weight matrix of the model (an
    adapter, already low rank; biases; reflections): GaLore projects the gradients of those matrices."""
    defaults = {spec.name: spec.default for spec in field_specs(TrainConfig)}
    choice = OPTIMIZERS.get(data.get("optimizer") or "adamw")
    if choice is None:
        return {}  # reported by config_from_dict
    if not choice.low_rank:
        return {name: f"applies to the GaLore optimizers only (the optimizer is {choice.name})"
                for name in GALORE_FIELDS
                if data.get(name) not in (None, "") and _same(data[name], defaults[name]) is False}
    if method is not None and not method.trains_weight_matrices:
        full = ", ".join(m.name for m in METHODS.values() if m.trains_weight_matrices)
        what = "an adapter (already low rank)" if method.produces == "adapter" else "no weight matrix in place"
        return {"optimizer": f"{choice.label} projects the gradients of the model's own weight matrices; "
                             f"{method.label} trains {what}. Use it with a method that "
                             f"trains the model's weight matrices ({full}), or choose adamw"}
    try:
        devices = coerce(data.get("devices") or 1, int)
    except ValueError:
        return {}  # reported by config_from_dict
    if method is not None and shards_states(data.get("sharding") or "auto", devices=devices, method=method):
        return {"optimizer": f"{choice.label} projects whole weight matrices, which fully sharded training (fsdp) "
                             f"splits across the devices: set sharding to ddp, or train on one device"}
    return {}


def _truthy_number(value) -> bool:
    try:
        return coerce(value, int) > 0
    except ValueError:
        return False


def _preference_problems(data: dict) -> dict[str, str]:
    """Preference (and reward) settings that cannot apply: set for another task, or for a loss that does not
    read them."""
    defaults = {spec.name: spec.default for spec in field_specs(TrainConfig)}
    changed = {name for name in PREFERENCE_FIELDS
               if data.get(name) not in (None, "") and _same(data[name], defaults[name]) is False}
    task = data.get("task") or "sft"
    centering = data.get("reward_centering")
    if task != "reward" and centering not in (None, "") and _same(centering, 0.0) is False:
        changed.add("reward_centering")
    if task != "preference":
        return {name: f"applies to the {'reward' if name == 'reward_centering' else 'preference'} task only "
                      f"(this job's task is {task})" for name in changed}
    loss = PREFERENCE_LOSSES.get(data.get("preference_loss") or "dpo")
    if loss is None:
        return {}  # reported by config_from_dict
    problems = ({"reward_centering": "applies to the reward task only (this job's task is preference)"}
                if "reward_centering" in changed else {})
    if "label_smoothing" in changed and not loss.label_smoothing:
        problems["label_smoothing"] = (f"{loss.label} has no label smoothing; choose cdpo (conservative DPO), simpo "
                                       f"or cpo, or set it to 0")
    elif loss.name == "cdpo" and "label_smoothing" not in changed:
        problems["label_smoothing"] = "conservative DPO needs a label smoothing above 0 (0.1 is usual)"
    if "reference" in changed and not loss.needs_reference:
        problems["reference"] = f"{loss.label} uses no reference model; leave it at base"
    for name, owner in (("simpo_gamma", "simpo"), ("cpo_alpha", "cpo"), ("desirable_weight", "kto"),
                        ("undesirable_weight", "kto")):
        if name in changed and loss.name != owner:
            problems[name] = f"applies to the {owner} loss only (the loss is {loss.name})"
    return problems


def _same(value, default) -> bool | None:
    """Whether a sent value equals the default (None where it is not even valid: config_from_dict says why)."""
    try:
        return coerce(value, type(default)) == default
    except ValueError:
        return None


def _truthy(value) -> bool:
    try:
        return coerce(value, bool)
    except ValueError:
        return False  # reported by config_from_dict


def check_against_model(config: TrainConfig, *, on_worker: bool = True) -> None:
    """Refuse settings the chosen base model makes impossible (a rank larger
    than a layer, a method the architecture lacks parts for …), reading only
    the model's config file. Raises ConfigError naming the field.

    The web process (``on_worker=False``) has no GPU of its own: a GPU-only
    method's own check, which looks at this machine's devices, runs on the
    worker instead."""
    with MODEL_CODE_LOCK:
        _check_against_model(config, on_worker=on_worker)


def _check_against_model(config: TrainConfig, *, on_worker: bool) -> None:
    method = METHODS[config.method]
    check_sharding(config, method)  # not the model's doing, but refused as early, when the job is created
    model_config = load_model_config(config.base_model, trust_remote_code=config.trust_remote_code)
    architectures = getattr(model_config, "architectures", None) or []
    if getattr(model_config, "vision_config", None) is not None:
        raise ConfigError({"base_model": multimodal_refusal(architectures)})
    if config.task in ("sft", "pretrain", "preference", "grpo") and architectures and not any(
            name.endswith(("ForCausalLM", "LMHeadModel")) for name in architectures):
        raise ConfigError({"base_model": f"{architectures[0]} is not a generative (causal) language model; use it "
                                         f"for the classify task, or pick a causal LM for {config.task}"})
    if on_worker and OPTIMIZERS[config.optimizer].needs_cuda:
        import torch

        if not torch.cuda.is_available():
            raise ConfigError({"optimizer": f"{config.optimizer} keeps its moments in 8 bits with bitsandbytes, "
                                            f"which needs a CUDA GPU; this worker has none: choose galore"})
    if method.check is None or (method.needs_cuda and not on_worker):
        return
    params = method.params(**config.method_params)
    problems = method.check(params, model_config, config.task)
    if problems:
        raise ConfigError({f"method_params.{name}" if name in config.method_params else name: message
                           for name, message in problems.items()})
