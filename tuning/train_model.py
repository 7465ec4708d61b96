"""The model stage of the training loop (``tuning.train``): the device and
precision, the base model loaded and wrapped by the method, and how its
batches are laid out (packed or padded) and its loss computed.

What differs between methods is read from the method's capability flags
(``packs_rows``, ``predicts_each_token``, ``frozen_base_in_bf16``) and
hooks (``penalty``), never from its name.
"""

from __future__ import annotations

import contextlib
import math
import resource
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable

from tuning.attention import use_segment_attention
from tuning.config import TrainConfig
from tuning.data.packing import collate_packed, context_tokens_for, packing_works
from tuning.data.tasks import batches
from tuning.errors import ConfigError
from tuning.events import EventSink, LogEvent
from tuning.loss import fused_loss_works, fused_next_token_loss, next_token_loss, selects_logits, task_model
from tuning.methods import Method, MethodContext
from tuning.methods.base import CLASSIFIER_TASKS
from tuning.models import load_model_for_task
from tuning.data.preference_packing import collate_pairs_shared
from tuning.preference import PREFERENCE_LOSSES, PreferenceObjective, PreferenceSettings, shares_prefix
from tuning.preference_scoring import shared_layout_works
from tuning.preference_kto import KTOObjective
from tuning.grpo import GRPOObjective, GRPOSettings, reward_functions
from tuning.reward import RewardObjective
from tuning.sharding import sharded_fused_loss

CALIBRATION_BATCHES = 8  # batches shown to data-driven initialisations (EVA, CorDA)
# Packed rows are padded to a multiple of this many tokens: every new matmul
# shape costs oneDNN (CPU) a cached kernel, about 100 MB over the sample
# data's first dozen steps when each packed width is new; 8 also suits GPU
# tensor cores. At most 7 tokens a row are padding.
PACKED_WIDTH_MULTIPLE = 8


@dataclass
class Device:
    name: str  # "cuda" or "cpu"
    precision: str  # "fp32", "bf16" or "fp16", after "auto" is resolved
    autocast: Callable[[], Any]  # a fresh autocast context (or a null one) per use


@dataclass
class PreparedModel:
    model: Any  # the base model wrapped (or frozen in part) by the method, on the device
    trainable: list  # the parameters the optimizer updates
    trainable_count: int
    total_count: int
    collate: Callable[[list], dict]  # a micro-batch of rows -> tensors, packed where possible
    compute_loss: Callable[[dict], Any]  # tensors -> the mean task loss of the micro-batch
    penalty: Callable[[], Any] | None = None  # the method's term added to that loss once a step (Method.penalty)
    # The step's task metrics beyond the loss (preference: rewards, margin,
    # accuracy), averaged over the micro-batches since the last call.
    step_metrics: Callable[[], dict] | None = None
    objective: Any = None  # the preference or reward objective (tuning.preference, tuning.reward), which evaluates


def cpu_has_native_bf16() -> bool:
    import torch

    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def device_and_autocast(precision: str) -> Device:
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if precision == "auto":
        if device == "cuda":
            precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            # bf16 autocast is faster than fp32 on CPUs with native bf16 (AVX512-BF16, AMX); on others
            # oneDNN emulates it, ~30x slower: a 135M model's step took 90 s against 2.8 s in fp32 on an
            # AVX2-only CPU (2 cores, 4 x 96 tokens).
            precision = "bf16" if cpu_has_native_bf16() else "fp32"
    if precision == "fp16" and device == "cpu":
        raise ConfigError({"precision": "fp16 needs a CUDA GPU; choose bf16 or fp32 on a CPU"})
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    autocast = (lambda: torch.autocast(device_type=device, dtype=dtype)) if dtype else contextlib.nullcontext
    return Device(name=device, precision=precision, autocast=autocast)


def memory_mib(device: str) -> float:
    import torch

    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def prepare_model(config: TrainConfig, sink: EventSink, *, method: Method, params, device: Device, tokenizer,
                  data, train_items: list, collate, total_steps: int, sharded: bool = False) -> PreparedModel:
    """Load the base model, let the method wrap it, and choose the batch
    layout and the loss computation; each choice is reported to ``sink``.
    ``sharded``: the model is to be sharded with FSDP2 (``tuning.sharding``),
    whose weights exist whole only inside the model's own forward."""
    import torch

    sink.emit(LogEvent(message=f"Loading base model {config.base_model_name or config.base_model} on {device.name}"))
    load_kwargs = method.load_kwargs(params) if method.load_kwargs else {}
    quantized = "quantization_config" in load_kwargs  # loaded straight onto the GPU; never moved or cast
    if quantized:
        load_kwargs["device_map"] = {"": torch.cuda.current_device()}
    model = load_model_for_task(config.task, config.base_model, tokenizer=tokenizer, label2id=data.label2id,
                                trust_remote_code=config.trust_remote_code, **load_kwargs)
    if config.base_model_name:
        model.config.name_or_path = config.base_model_name  # recorded in adapter_config.json
    if config.gradient_checkpointing:
        model.config.use_cache = False
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if not quantized:
        model.to(device.name)

    def calibration_batches():
        for i, batch in enumerate(batches(train_items, batch_size=config.batch_size, seed=config.seed, epoch=0,
                                          group_by_length=config.group_by_length)):
            if i >= CALIBRATION_BATCHES:
                return
            yield {key: value.to(device.name) for key, value in collate(batch).items() if key != "labels"}

    model = method.prepare(model, params, MethodContext(task=config.task, device=device.name, total_steps=total_steps,
                                                        base_model=config.base_model,
                                                        calibration_batches=calibration_batches))
    if not quantized:
        model.to(device.name)
        if store_frozen_base_in_bf16(model, method, params, device.precision):
            sink.emit(LogEvent(message="Frozen base weights stored in bf16 (the precision every matmul uses)"))
    trainable = [p for p in model.parameters() if p.requires_grad]
    trainable_count = sum(p.numel() for p in trainable)
    total_count = sum(p.numel() for p in model.parameters())
    sink.emit(LogEvent(message=f"{method.label}: {trainable_count:,} trainable of {total_count:,} parameters "
                               f"({100 * trainable_count / total_count:.2f}%), precision {device.precision}"))
    train_collate, packed = _batch_layout(config, sink, method=method, model=model, device=device,
                                          tokenizer=tokenizer, collate=collate)
    penalty = partial(method.penalty, model) if method.penalty else None
    if config.task in ("preference", "reward", "grpo"):
        if config.task == "grpo":
            objective = grpo_objective(config, sink, model, tokenizer, train_items, device)
        else:
            objective = (preference_objective(config, sink, model) if config.task == "preference"
                         else RewardObjective(model, centering=config.reward_centering))
        return PreparedModel(model=model, trainable=trainable, trainable_count=trainable_count,
                             total_count=total_count, collate=train_collate, compute_loss=objective, penalty=penalty,
                             step_metrics=objective.take_metrics, objective=objective)
    compute_loss, how = _loss_function(config, method, model, packed, device, sharded=sharded)
    if how:
        sink.emit(LogEvent(message=f"Loss computed {how}"))
    return PreparedModel(model=model, trainable=trainable, trainable_count=trainable_count, total_count=total_count,
                         collate=train_collate, compute_loss=compute_loss, penalty=penalty)


def preference_objective(config: TrainConfig, sink: EventSink, model) -> PreferenceObjective | KTOObjective:
    """The preference loss, and its reference: none (ORPO, SimPO, CPO), the
    model with its adapter switched off, numbers precomputed before the
    first step, or else a frozen copy of the base (full fine-tuning)."""
    import copy

    settings = PreferenceSettings.from_config(config)
    loss = PREFERENCE_LOSSES[settings.loss]
    reference = None
    if not loss.needs_reference:
        how = "needs no reference model"
    elif config.reference == "precomputed":
        how = "against reference log-probabilities computed once before the first step"
    elif hasattr(model, "disable_adapter"):
        how = "against the base model: the same weights with the adapter switched off"
    else:
        reference = copy.deepcopy(model).eval().requires_grad_(False)
        how = "against a frozen copy of the base model (full fine-tuning keeps no base weights of its own)"
    sink.emit(LogEvent(message=f"{loss.label} (beta {settings.beta}) {how}"))
    objective = KTOObjective if loss.unpaired else PreferenceObjective
    return objective(model, settings, reference=reference)


def grpo_objective(config: TrainConfig, sink: EventSink, model, tokenizer, prompts: list, device: Device):
    """GRPO's objective: its rewards, and a reference where the KL penalty needs one (the adapter
    switched off, else a frozen copy)."""
    import copy

    rewards = reward_functions(config, device=device.name)
    settings = GRPOSettings.from_config(config)
    reference = None
    if settings.kl_beta and not hasattr(model, "disable_adapter"):
        reference = copy.deepcopy(model).eval().requires_grad_(False)
    sink.emit(LogEvent(message=f"GRPO: {settings.group_size} completions a prompt of at most "
                               f"{settings.max_completion_length} tokens; rewards "
                               + ", ".join(f"{name} × {weight}" for name, (weight, _) in rewards.items())))
    return GRPOObjective(model, tokenizer, settings, {p.key: p for p in prompts}, rewards, reference=reference)


def _batch_layout(config: TrainConfig, sink: EventSink, *, method: Method, model, device: Device, tokenizer,
                  collate) -> tuple[Callable, bool]:
    """(the training collate function, whether it packs rows).

    Packed batches hold the same rows as padded ones (so steps, resume and
    the loss are unchanged) without computing on padding. Segment attention
    runs each packed example's attention on its own slice, so one row end to
    end is always the cheapest layout. On a CPU only: on a GPU its many
    small calls cost more in launches than they save (0.25x the Trainer's
    tokens/s at batch 32 on an H100), and sdpa takes transformers' block
    mask in one fast kernel."""
    if config.task == "preference":
        return _pair_layout(config, sink, method=method, model=model, device=device, tokenizer=tokenizer,
                            collate=collate)
    segmented = (config.packing and predicts_each_token(config, method) and device.name == "cpu"
                 and use_segment_attention(model))
    why_not = why_not_packed(config, method, model, device) if config.packing else None
    if not config.packing or why_not is not None:
        if why_not:
            sink.emit(LogEvent(message=f"Padded batches instead of packed ones: {why_not}"))
        return collate, False
    sink.emit(LogEvent(message="Packing rows end to end without padding (each row attends only to itself"
                               + (", attention computed example by example)" if segmented else ")")))
    return partial(collate_packed, max_length=config.max_length, pad_token_id=tokenizer.pad_token_id,
                   context_tokens=math.inf if segmented else context_tokens_for(model),
                   pad_to_multiple_of=PACKED_WIDTH_MULTIPLE), True


def _pair_layout(config: TrainConfig, sink: EventSink, *, method: Method, model, device: Device, tokenizer,
                 collate) -> tuple[Callable, bool]:
    """Preference pairs as shared-prefix blocks (``tuning.data.preference_packing``: the prompt computed
    once, no padding, the head only where a label is) where the loss, method and model allow it, else
    padded rows, chosen and rejected side by side."""
    why_not = None
    if not config.packing:
        return collate, False
    if not shares_prefix(config.preference_loss):
        why_not = (f"{PREFERENCE_LOSSES[config.preference_loss].label} "
                   + ("scores single completions" if config.preference_loss == "kto"
                      else "also trains on the chosen row's prompt"))
    elif not method.predicts_each_token:
        why_not = f"{method.label} prepends virtual tokens to every row, which pairs cannot share"
    else:
        with device.autocast():  # as training runs it: the frozen base may be stored in bf16
            if not shared_layout_works(model, device.name):
                why_not = "this model scores a shared prompt differently from a padded row"
    if why_not:
        sink.emit(LogEvent(message=f"Preference pairs scored as padded rows: {why_not}"))
        return collate, False
    sink.emit(LogEvent(message="Each pair's prompt computed once, its chosen and rejected replies after it, "
                               "without padding"))
    return partial(collate_pairs_shared, pad_token_id=tokenizer.pad_token_id, context_tokens=context_tokens_for(model),
                   pad_to_multiple_of=PACKED_WIDTH_MULTIPLE), True


def why_not_packed(config: TrainConfig, method: Method, model, device: Device) -> str | None:
    """None where the run can use padding-free (packed) batches, else why not."""
    if config.task == "classify":
        return "classification predicts one label per row"
    if config.task == "reward":
        return "a reward model scores each reply as a padded row, chosen and rejected side by side"
    if config.task == "grpo":
        return "GRPO samples completions from left-padded prompts"
    if config.task == "preference":
        return "preference pairs are scored as padded rows, chosen and rejected side by side"
    if not method.packs_rows:
        if not method.predicts_each_token:
            return f"{method.label} prepends virtual tokens to every row, which packed rows cannot share"
        return f"{method.label} does not train on packed rows"
    with device.autocast():  # as training runs it: the frozen base may be stored in bf16
        works = packing_works(model, device.name)
    if not works:
        attention = getattr(model.config, "_attn_implementation", "unknown")
        return f"this model (attention '{attention}') lets packed rows see each other"
    return None


def store_frozen_base_in_bf16(model, method: Method, params, precision: str) -> int:
    """Under bf16 autocast every matmul casts its fp32 weight to bf16 on every
    call. The frozen linear weights of a plain LoRA run are only ever used
    that way, so they can be stored in bf16 once: the same numbers in every
    matmul, half their memory, no cast per step. Other adapters read the
    base weights outside a matmul (DoRA's norms, OFT's rotations, PiSSA's
    export), so they keep fp32; so do LoRA's DoRA and PiSSA-style options,
    checked here by their parameters. Returns how many weights were converted."""
    import torch

    if (precision != "bf16" or not method.frozen_base_in_bf16 or getattr(params, "use_dora", False)
            or getattr(params, "init", "default") not in ("default", "gaussian")):
        return 0
    shared = {id(model.get_input_embeddings().weight)}  # a tied output head is also the embedding table
    converted = 0
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if (type(module) is torch.nn.Linear and not weight.requires_grad and weight.dtype == torch.float32
                and id(weight) not in shared):
            module.weight.data = weight.data.to(torch.bfloat16)
            converted += 1
    return converted


def predicts_each_token(config: TrainConfig, method: Method) -> bool:
    """A causal LM loss over the rows' own tokens: not a classifier, no virtual prompt tokens."""
    return config.task not in CLASSIFIER_TASKS and method.predicts_each_token


def _loss_function(config: TrainConfig, method: Method, model, packed: bool, device: Device, *,
                   sharded: bool = False):
    """The cheapest way to get the task's loss, which ``model(**inputs).loss``
    gives for every method but AdaLoRA (``tuning.loss``), and how it is
    computed (None: the model's own loss). ``sharded``: the model is to be
    sharded with FSDP2, which runs the fused loss as a forward method of
    its root (``tuning.sharding.shard_model``)."""
    if predicts_each_token(config, method):
        with device.autocast():  # probed as training runs
            if fused_loss_works(model, device.name):
                return (partial(sharded_fused_loss if sharded else fused_next_token_loss, model),
                        "with the output head, a chunk of tokens at a time")
        if selects_logits(model):
            return partial(next_token_loss, model), "from the logits of labelled positions only"
    # Without a cache object transformers sees the packed layout in position_ids.
    forward = task_model(model)
    plain = ((lambda inputs: forward(**inputs, use_cache=False).loss) if packed
             else (lambda inputs: forward(**inputs).loss))
    return plain, None
