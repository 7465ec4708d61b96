"""Pre-flight estimate of the memory a training run needs, from the model's
config, the method's trainable-parameter count and the batch shape; no
weights are read.

Parts, in bytes:
- weights: every parameter, fp32 (bf16/fp16 autocast keeps fp32 weights and
  casts per op), or about 0.55 bytes each when the base is loaded in 4 bits;
- gradients: one fp32 value per trainable parameter;
- optimizer: AdamW keeps two fp32 moments per trainable parameter, or what
  ``optimizer_bytes`` says (GaLore's low-rank moments, ``tuning.optimizers``);
- activations: per layer, following Korthikanti et al. 2022 ("Reducing
  Activation Recomputation in Large Transformer Models", eq. 1) in 16-bit:
  s·b·h·(34 + 5·a·s/h) bytes, doubled in fp32; with gradient checkpointing
  only each layer's input (2·s·b·h) is kept, plus one layer recomputed; plus
  the logits and their fp32 loss copy, b·s·V·(2 + 4) bytes (large for big
  vocabularies); for a side network beside a backbone that runs without
  gradients (Ladder Side-Tuning, ``side_network`` = its width and heads),
  no backbone layer's activations, only the L + 1 hidden states the ladder
  reads (2·s·b·h each), one backbone layer's working set at a time, and the
  same formula for the side network's layers at their width; or, where the head and the loss are fused
  (``tuning.loss``), one chunk of those and the hidden states' gradient;
- preference pairs: a row is two sequences (chosen and rejected) with
  their full logits, and a full fine-tune scored against a live reference
  keeps a frozen fp32 copy of the weights (``reference_copy``).
Per device, for a run over several (``devices``): each trains on its share
of every batch, so activations are for that share (ceil(batch / devices)
rows) and are never divided further. Under DDP every device holds the whole
weights, gradients and optimizer state; under FSDP2 (``sharded``,
``tuning.sharding``) each holds 1/devices of each, plus what it gathers to
compute: the root's weights (embeddings, head) for the whole step and two
decoder blocks at a time (the one computing, the next prefetched).
The sum is a planning figure (±30 %), not a promise: allocator slack and
sequence lengths below max_length move it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from tuning.loss import GPU_CHUNK_TOKENS
from tuning.methods.base import CLASSIFIER_TASKS

RUNTIME_OVERHEAD_BYTES = 2**30  # the process itself (torch, CUDA context, kernels) and the data in flight
FOUR_BIT_BYTES_PER_PARAMETER = 0.55  # 4-bit weights plus quantization constants


@dataclass(frozen=True)
class MemoryEstimate:
    weights: int
    gradients: int
    optimizer: int
    activations: int
    overhead: int

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.activations + self.overhead

    def to_dict(self) -> dict:
        return {**asdict(self), "total": self.total}


def model_dims(model_config) -> tuple[int, int, int, int]:
    text = getattr(model_config, "text_config", None) or model_config
    hidden = getattr(text, "hidden_size", None) or getattr(text, "d_model", 768)
    layers = getattr(text, "num_hidden_layers", None) or getattr(text, "n_layer", 12)
    heads = getattr(text, "num_attention_heads", None) or getattr(text, "n_head", 12)
    vocab = getattr(text, "vocab_size", 32000)
    return hidden, layers, heads, vocab


def estimate_training_memory(model_config, *, trainable: int, total: int, batch_size: int, max_length: int,
                             precision: str = "bf16", gradient_checkpointing: bool = False,
                             four_bit_base: bool = False, task: str = "sft",
                             fused_loss: bool = False, reference_copy: bool = False, devices: int = 1,
                             sharded: bool = False, optimizer_bytes: int | None = None,
                             side_network: tuple[int, int] | None = None) -> MemoryEstimate:
    hidden, layers, heads, vocab = model_dims(model_config)
    rows = -(-batch_size // devices)  # this device's share of the batch
    s, b = max_length, rows * (2 if task in ("preference", "reward") else 1)  # two replies a pair
    fused_loss = fused_loss and task != "preference"  # pairs need every labelled token's log-probability
    bytes_per_activation_unit = 1 if precision in ("bf16", "fp16", "auto") else 2  # the formula is in 16-bit units
    if side_network:
        width, side_heads = side_network
        one_layer = s * b * hidden * (34 + 5 * heads * s / hidden)  # freed as soon as the next layer runs
        side = layers * s * b * width * (34 + 5 * side_heads * s / width)
        activations = ((layers + 1) * 2 * s * b * hidden + one_layer + side) * bytes_per_activation_unit
    elif gradient_checkpointing:
        per_layer = 2 * s * b * hidden
        recomputed = s * b * hidden * (34 + 5 * heads * s / hidden)
        activations = (layers * per_layer + recomputed) * bytes_per_activation_unit
    else:
        activations = layers * s * b * hidden * (34 + 5 * heads * s / hidden) * bytes_per_activation_unit
    if task not in CLASSIFIER_TASKS and fused_loss:
        # One chunk of logits (the larger, GPU chunk) and the hidden states' gradient.
        activations += min(b * s, GPU_CHUNK_TOKENS) * vocab * (2 + 4) + b * s * hidden * 4
    elif task not in CLASSIFIER_TASKS:
        activations += b * s * vocab * (2 + 4)
    frozen = total - trainable
    weights = trainable * 4 + (frozen * FOUR_BIT_BYTES_PER_PARAMETER if four_bit_base else frozen * 4)
    weights += total * 4 if reference_copy else 0
    gradients = trainable * 4
    optimizer = trainable * 8 if optimizer_bytes is None else optimizer_bytes
    if sharded and devices > 1:
        root = vocab * hidden  # the embeddings (and a tied head): gathered for the whole step
        gathered = (root + 2 * max(total - root, 0) / max(layers, 1)) * 4
        weights, gradients, optimizer = weights / devices + gathered, gradients / devices, optimizer / devices
    return MemoryEstimate(weights=int(weights), gradients=int(gradients), optimizer=int(optimizer),
                          activations=int(activations), overhead=RUNTIME_OVERHEAD_BYTES)


def changes_that_fit(model_config, *, available: int, trainable: int, total: int, batch_size: int,
                     max_length: int, precision: str, gradient_checkpointing: bool, gpu: bool,
                     task: str = "sft", fused_loss: bool = False, reference_copy: bool = False, devices: int = 1,
                     sharded: bool = False, optimizer_bytes: int | None = None,
                     side_network: tuple[int, int] | None = None) -> list[str]:
    """Changes (each alone, then together) that bring the estimate under ``available`` bytes."""
    def fits(**change) -> bool:
        settings = {"batch_size": batch_size, "max_length": max_length, "precision": precision,
                    "gradient_checkpointing": gradient_checkpointing, "four_bit_base": False, **change}
        return estimate_training_memory(model_config, trainable=trainable, total=total, task=task,
                                        fused_loss=fused_loss, reference_copy=reference_copy, devices=devices,
                                        sharded=sharded, optimizer_bytes=optimizer_bytes,
                                        side_network=side_network, **settings).total <= available

    options = []
    smaller = batch_size // 2
    while smaller >= 1:
        if fits(batch_size=smaller):
            options.append(f"batch size {smaller} (raise gradient accumulation to keep {batch_size} rows a step)")
            break
        smaller //= 2
    if not gradient_checkpointing and fits(gradient_checkpointing=True):
        options.append("turn on gradient checkpointing (about 30 % slower)")
    if gpu and fits(four_bit_base=True):
        options.append("QLoRA: the base model in 4 bits")
    if not options and fits(batch_size=1, gradient_checkpointing=True, four_bit_base=gpu):
        options.append("batch size 1 with gradient checkpointing" + (" and a 4-bit base (QLoRA)" if gpu else ""))
    if not options:
        options.append(f"a shorter max length than {max_length} or a smaller base model")
    return options
