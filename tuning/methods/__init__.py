"""The fine-tuning methods the studio offers: one file per method, one row here.

A method declares a parameters dataclass (its fields drive the form, the
CLI and validation) and ``prepare(model, params, context)``, which returns
the model with only the method's parameters trainable (wrapped by peft, or
the plain model with some parameters frozen). Optional hooks:

- ``param_groups(model, params, base_lr)``: optimizer parameter groups,
  for methods that give parts of the model their own learning rate
  (LoRA+, layer-wise learning-rate decay). Default: one group.
- ``check(params, model_config, task)``: impossible combinations, as
  ``{field: message}``, refused before a job is queued. Most checks
  prepare the method on a weightless ("meta") copy of the model, so what
  peft would refuse at the start of a job is refused on the form instead.
- ``load_kwargs(params)``: extra ``from_pretrained`` arguments for the base
  model (QLoRA loads it in 4 bits).
- ``on_step(model, step)``: called after every optimizer step, before the
  gradients are zeroed, with the 1-based step (AdaLoRA reallocates ranks).
- ``grow(model, step, optimizer)``: called after ``on_step``, for methods
  whose trainable tensors grow while training (IncreLoRA, TriAdaptLoRA):
  it grows them in place, the optimizer's state with them, and returns
  lines for the job's log saying when and where.
- ``export(model, directory)``: writes the final output. Default:
  ``model.save_pretrained(directory)``. LoRA uses it to turn PiSSA, OLoRA
  and CorDA adapters (trained against a modified base) into plain LoRA
  adapters that load on the unmodified base model.
- ``penalty(model)``: a term the method adds to the loss it trains on
  (AdaLoRA's orthogonality penalty), as a tensor with a gradient. The loop
  adds it once per optimizer step and reports it as its own metric
  (named by the row's ``penalty_label``); the reported train loss and the
  eval loss stay the task's own loss, comparable across methods.
- ``training_state(model)`` → ``(tensors, info)`` and
  ``restore_training_state(model, tensors, info)``: state a checkpoint
  must hold beyond the saved weights to continue exactly (AdaLoRA's rank
  allocator). ``tensors`` go to a safetensors file, ``info`` (plain data)
  to its metadata; restoring puts back the trainable weights too, since a
  method with such state may save its weights in a cut-down form.
- ``side_network_shape(params, model_config)`` → ``(width, heads)``: a
  method that trains a side network beside a backbone running without
  gradients (Ladder Side-Tuning) tells the memory estimate its shape; the
  estimate then counts no backbone activations.

``produces`` says what the run saves: "adapter" (peft ``save_pretrained``,
reloaded with ``PeftModel.from_pretrained``) or "model" (a full
transformers model directory).

Capability flags on each row (``needs_cuda``, ``packs_rows``,
``predicts_each_token``, ``folds_into_base`` … see ``Method``) say what
the training loop, the form and the estimate must do differently; they
read the flags, never a method's name or group. Adding a method is one
file and one ``register_method`` line.

Nothing here imports torch or peft at import time: the web process reads
this table to draw the form.
"""

from __future__ import annotations

from tuning.fields import describe_fields
from tuning.methods import (adalora, bitfit, boft, fourierft, full, hft, hra, ia3, llrd, ln_tuning, loha, lokr, lora,
                            oft, p_tuning, prefix_tuning, prompt_tuning, qlora, randlora, road, top_k, vblora,
                            vera)
from tuning.methods import bottleneck, ether, s2ft  # second wave (issue 22)
from tuning.methods import eigenlora, ladder
from tuning.methods import increlora, triadaptlora  # ranks that grow (issue 22)
from tuning.methods import mola, mos  # sharing and mixtures (issue 22)
from tuning.methods.base import CAPABILITIES, GROUPS, NOT_PREFERENCE, TASKS, Method, MethodContext, method_row

__all__ = ["CAPABILITIES", "GROUPS", "METHODS", "TASKS", "Method", "MethodContext", "describe", "register_method"]

METHODS: dict[str, Method] = {}
# What marks an output that no stock library loads, only ``tuning.loading.load_artifact``.
STUDIO_LOADED_FILES = (bottleneck.CONFIG_FILE, ladder.CONFIG_FILE, mola.CONFIG_FILE)


def register_method(module, **row) -> Method:
    """Add ``module``'s method to the table (see ``method_row``); the one
    line a new method needs."""
    method = method_row(module, **row)
    if method.name in METHODS:
        raise ValueError(f"a method named {method.name!r} is registered already")
    if method.group not in GROUPS:
        raise ValueError(f"{method.name}: group {method.group!r} is not one of {', '.join(GROUPS)}")
    if bool(method.penalty) != bool(method.penalty_label):
        raise ValueError(f"{method.name}: a penalty hook and a penalty_label go together")
    if bool(method.training_state) != bool(method.restore_training_state):
        raise ValueError(f"{method.name}: training_state and restore_training_state go together")
    METHODS[method.name] = method
    return method


register_method(full, name="full", label="Full fine-tuning", group="full", produces="model",
                trains_weight_matrices=True,
                description="Updates every weight of the model; the most capable and the most memory-hungry.",
                paper="https://arxiv.org/abs/1801.06146", params=full.FullParams)
register_method(lora, name="lora", label="LoRA", group="low-rank", folds_into_base=True,
                frozen_base_in_bf16=True,
                description="Trains small low-rank matrices beside the frozen weights; options for rsLoRA, DoRA, "
                            "LoRA+ and PiSSA/OLoRA/CorDA/EVA initialisation.",
                paper="https://arxiv.org/abs/2106.09685", params=lora.LoraParams)
register_method(qlora, name="qlora", label="QLoRA", group="low-rank", needs_cuda=True, four_bit_base=True,
                folds_into_base=True,
                description="LoRA on a base model quantized to 4-bit NF4, for large models on one GPU.",
                paper="https://arxiv.org/abs/2305.14314", params=qlora.QloraParams)
register_method(adalora, name="adalora", label="AdaLoRA", group="low-rank", folds_into_base=True,
                description="LoRA in SVD form that moves rank from unimportant layers to important ones while "
                            "training.",
                paper="https://arxiv.org/abs/2303.10512", params=adalora.AdaloraParams,
                penalty_label="orthogonality penalty")
register_method(increlora, name="increlora", label="IncreLoRA", group="low-rank", folds_into_base=True,
                description="LoRA in SVD form that starts small and adds rank to the most important layers while "
                            "training, up to a budget.",
                paper="https://arxiv.org/abs/2308.12043", params=increlora.IncreloraParams,
                penalty_label="orthogonality penalty")
register_method(triadaptlora, name="triadaptlora", label="TriAdaptLoRA", group="low-rank", folds_into_base=True,
                description="Low-rank adapter with a square core that grows by triangular strips where its norm "
                            "rose most, as a threshold allows.",
                paper="https://arxiv.org/abs/2501.08008", params=triadaptlora.TriadaptloraParams,
                penalty_label="orthogonality penalty")
register_method(loha, name="loha", label="LoHa", group="low-rank", folds_into_base=True,
                description="Low-rank Hadamard product: two low-rank pairs multiplied elementwise, higher "
                            "effective rank.",
                paper="https://arxiv.org/abs/2108.06098", params=loha.LohaParams)
register_method(lokr, name="lokr", label="LoKr", group="low-rank", folds_into_base=True,
                description="Low-rank Kronecker product update; very few parameters for a full-rank update.",
                paper="https://arxiv.org/abs/2309.14859", params=lokr.LokrParams)
register_method(vera, name="vera", label="VeRA", group="low-rank", folds_into_base=True,
                description="One frozen random low-rank pair shared by all layers; trains only two scaling vectors "
                            "per layer.",
                paper="https://arxiv.org/abs/2310.11454", params=vera.VeraParams)
register_method(vblora, name="vblora", label="VB-LoRA", group="low-rank", folds_into_base=True,
                description="Builds every low-rank matrix from a small shared bank of vectors; tiny adapters.",
                paper="https://arxiv.org/abs/2405.15179", params=vblora.VbloraParams)
register_method(randlora, name="randlora", label="RandLoRA", group="low-rank", folds_into_base=True,
                description="Full-rank update from frozen random low-rank bases with trained diagonal scalings.",
                paper="https://arxiv.org/abs/2502.00987", params=randlora.RandloraParams)
register_method(mos, name="mos", label="MoS (Mixture of Shards)", group="low-rank", folds_into_base=True,
                description="LoRA whose low-rank matrices are assembled from shards in global pools shared across "
                            "layers (fixed index routing, private shards); saved as a plain LoRA adapter.",
                paper="https://arxiv.org/abs/2410.00938", params=mos.MosParams)
register_method(mola, name="mola", label="MoLA (mixture of LoRA experts)", group="low-rank",
                description="Several LoRA experts per layer, more in higher layers, mixed per token by a top-k "
                            "router. The routing depends on the input, so it never folds into the base.",
                paper="https://arxiv.org/abs/2402.08562", params=mola.MolaParams)
register_method(eigenlora, name="eigenlora", label="EigenLoRAx", group="low-rank", folds_into_base=True,
                description="Builds the principal subspace of two or more LoRA adapters of the base model and trains "
                            "only a new adapter's coefficients in it; saved as a plain LoRA.",
                paper="https://arxiv.org/abs/2502.04700", params=eigenlora.EigenloraParams)
register_method(oft, name="oft", label="OFT", group="orthogonal", folds_into_base=True,
                description="Multiplies each weight by a learned block-diagonal orthogonal matrix, preserving its "
                            "geometry.",
                paper="https://arxiv.org/abs/2306.07280", params=oft.OftParams)
register_method(boft, name="boft", label="BOFT", group="orthogonal", folds_into_base=True,
                description="Orthogonal fine-tuning with butterfly-factorised rotations: denser with fewer "
                            "parameters.",
                paper="https://arxiv.org/abs/2311.06243", params=boft.BoftParams)
register_method(hra, name="hra", label="HRA", group="orthogonal", folds_into_base=True,
                description="Adapts each weight by a chain of Householder reflections.",
                paper="https://arxiv.org/abs/2405.17484", params=hra.HraParams)
register_method(ether, name="ether", label="ETHER / ETHER+", group="orthogonal", produces="model",
                description="Transforms each weight by learned block-diagonal hyperplane reflections (ETHER+: relaxed, "
                            "on both sides); folded into the weights when saved.",
                paper="https://arxiv.org/abs/2405.20271", params=ether.EtherParams)
register_method(road, name="road", label="RoAd", group="orthogonal", folds_into_base=True,
                description="Rotates pairs of output features by learned 2-D rotations; very few parameters.",
                paper="https://arxiv.org/abs/2409.00119", params=road.RoadParams)
register_method(bottleneck, name="bottleneck", label="Bottleneck adapters", group="bottleneck",
                description="Houlsby, Pfeiffer or Compacter adapters: small down-up networks after the attention "
                            "and/or FFN outputs. Nonlinear, so they never fold into the base.",
                paper="https://arxiv.org/abs/1902.00751", params=bottleneck.BottleneckParams)
register_method(ladder, name="ladder", label="Ladder Side-Tuning", group="side", packs_rows=False,
                gradient_checkpointing=False,
                description="A small side network fed by the frozen model's hidden states through gated ladder "
                            "connections; no gradient flows through the model, so none of its activations is kept.",
                paper="https://arxiv.org/abs/2206.06522", params=ladder.LadderParams)
register_method(ia3, name="ia3", label="IA3", group="scaling", folds_into_base=True,
                description="Learns vectors that rescale keys, values and feed-forward activations.",
                paper="https://arxiv.org/abs/2205.05638", params=ia3.Ia3Params)
register_method(fourierft, name="fourierft", label="FourierFT", group="scaling", folds_into_base=True,
                description="Learns a few spectral coefficients per layer; the update is their inverse Fourier "
                            "transform.",
                paper="https://arxiv.org/abs/2405.03003", params=fourierft.FourierftParams)
register_method(ln_tuning, name="ln_tuning", label="LN tuning", group="scaling", folds_into_base=True,
                description="Trains only the normalisation layers' scales (and biases).",
                paper="https://arxiv.org/abs/2312.11420", params=ln_tuning.LnTuningParams)
register_method(prompt_tuning, name="prompt_tuning", tasks=NOT_PREFERENCE, label="Prompt tuning", group="prompts",
                packs_rows=False, predicts_each_token=False,
                description="Learns soft prompt embeddings prepended to every input; the model stays frozen.",
                paper="https://arxiv.org/abs/2104.08691", params=prompt_tuning.PromptTuningParams)
register_method(prefix_tuning, name="prefix_tuning", tasks=NOT_PREFERENCE, label="Prefix tuning", group="prompts",
                packs_rows=False, predicts_each_token=False, gradient_checkpointing=False,
                description="Learns key/value prefixes for every attention layer.",
                paper="https://arxiv.org/abs/2101.00190", params=prefix_tuning.PrefixTuningParams)
register_method(p_tuning, name="p_tuning", tasks=NOT_PREFERENCE, label="P-tuning", group="prompts",
                packs_rows=False, predicts_each_token=False,
                description="Soft prompts produced by a small trained encoder (MLP or LSTM).",
                paper="https://arxiv.org/abs/2103.10385", params=p_tuning.PTuningParams)
register_method(bitfit, name="bitfit", label="BitFit", group="selective", produces="model",
                description="Trains only the bias terms (for models that have them).",
                paper="https://arxiv.org/abs/2106.10199", params=bitfit.BitfitParams)
register_method(top_k, name="top_k", label="Top-k layers", group="selective", produces="model",
                trains_weight_matrices=True,
                description="Trains only the top k transformer blocks (and the final norm and head); the rest stays "
                            "frozen.",
                paper="https://arxiv.org/abs/1911.03090", params=top_k.TopKParams)
register_method(hft, name="hft", label="Half fine-tuning", group="selective", produces="model",
                trains_weight_matrices=True,
                description="Freezes a seeded half of each block's modules to keep more of what the model knew.",
                paper="https://arxiv.org/abs/2404.18466", params=hft.HftParams)
register_method(s2ft, name="s2ft", label="S²FT", group="selective", produces="model",
                description="Updates a few attention heads' and FFN channels' columns of each block's output "
                            "projections in place; everything else frozen.",
                paper="https://arxiv.org/abs/2412.06289", params=s2ft.S2ftParams)
register_method(llrd, name="llrd", label="Layer-wise LR decay", group="selective", produces="model",
                trains_weight_matrices=True,
                description="Full fine-tuning whose learning rate shrinks layer by layer towards the embeddings.",
                paper="https://arxiv.org/abs/2006.05987", params=llrd.LlrdParams)


def describe(method: Method) -> dict:
    """The catalogue entry of a method as plain data (CLI, API, UI)."""
    return {"name": method.name, "label": method.label, "group": method.group, "description": method.description,
            "paper": method.paper, "produces": method.produces, "tasks": list(method.tasks),
            **{flag: getattr(method, flag) for flag in CAPABILITIES}, "params": describe_fields(method.params),
            "presets": method.presets}
