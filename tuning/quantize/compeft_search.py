"""ComPEFT's α search: the paper picks the scale α of the ternarised task
vector on validation data. Each α of a small grid is scored by the mean
loss of the compressed model on the first rows of a validation split the
user picks, and the one with the lowest loss is written.

The compressed change is α · std(τ) · sign(τ) · mask, linear in α: it is
computed once at α = 1 and scaled per candidate, so a candidate costs one
pass over the validation rows, not a compression. The model is scored in
fp32 the way it loads: a full fine-tune as base + α · change (one model, its
base tensors and the unit change in memory: about three copies of the
model), an adapter as the base with the compressed adapter put on by peft.
"""

from __future__ import annotations

from pathlib import Path

from tuning.errors import ModelError
from tuning.quantize.common import Cancelled

BATCH_ROWS = 4  # validation rows scored per forward pass


def _validation_batches(ctx, tokenizer_dir: str) -> list[dict]:
    from tuning.data.tasks import collate_for_task, load_task_data
    from tuning.models import load_tokenizer

    tokenizer = load_tokenizer(tokenizer_dir, trust_remote_code=ctx.trust_remote_code)
    items = load_task_data("sft", ctx.validation_path, tokenizer=tokenizer,
                           max_length=ctx.validation_max_length).items[:ctx.validation_rows]
    collate = collate_for_task("sft", pad_token_id=tokenizer.pad_token_id)
    return [collate(items[start:start + BATCH_ROWS]) for start in range(0, len(items), BATCH_ROWS)]


def mean_loss(model, batches: list[dict]) -> float:
    """The mean over rows of each batch's loss (batches of equal size weigh the same)."""
    import torch

    total = rows = 0.0
    with torch.no_grad():
        for batch in batches:
            size = batch["input_ids"].shape[0]
            total += float(model(**batch).loss) * size
            rows += size
    return total / rows


def _adapter_scorer(source: Path, base: Path, unit: dict, ctx):
    from peft import PeftModel
    from peft.utils import set_peft_model_state_dict

    from tuning.models import load_causal_lm

    model = PeftModel.from_pretrained(load_causal_lm(str(base), trust_remote_code=ctx.trust_remote_code),
                                      str(source)).eval()

    def set_alpha(alpha: float) -> None:
        set_peft_model_state_dict(model, {name: alpha * change for name, change in unit.items()})
    return model, set_alpha


def _model_scorer(source: Path, unit: dict, base_tensors: dict, ctx):
    import torch

    from tuning.models import load_causal_lm

    model = load_causal_lm(str(source), trust_remote_code=ctx.trust_remote_code).eval()
    state = model.state_dict()
    if missing := sorted(set(unit) - set(state)):
        raise ModelError(f"{source} stores {missing[0]}, which the model loaded from it does not have under that "
                         f"name, so the α search cannot set it")

    def set_alpha(alpha: float) -> None:
        with torch.no_grad():
            for name, change in unit.items():
                state[name].copy_(base_tensors[name] + alpha * change)
    return model, set_alpha


def search_alpha(source: Path, ctx, *, unit_change, grid: list[float]) -> dict:
    """{"grid", "losses", "chosen", "rows"}: the loss of the compressed model at each α of ``grid``;
    ``unit_change(tau)`` is the compressed change of one tensor at α = 1."""
    from tuning.quantize.delta import adapter_deltas, is_adapter, model_deltas

    base = Path(ctx.base_model).expanduser()
    adapter = is_adapter(source)
    batches = _validation_batches(ctx, str(source if (source / "tokenizer_config.json").exists() else base))
    if adapter:
        unit = {name: unit_change(change) for name, _, change in adapter_deltas(source) if change.is_floating_point()}
        model, set_alpha = _adapter_scorer(source, base, unit, ctx)
    else:
        unit, base_tensors = {}, {}
        for name, _, change, base_tensor in model_deltas(source, base):
            if base_tensor is not None and change.is_floating_point():
                unit[name], base_tensors[name] = unit_change(change), base_tensor
        model, set_alpha = _model_scorer(source, unit, base_tensors, ctx)
    losses = []
    for done, alpha in enumerate(grid, start=1):
        if ctx.should_stop():
            raise Cancelled
        set_alpha(alpha)
        losses.append(mean_loss(model, batches))
        ctx.log(f"ComPEFT α search: α = {alpha:g} gives loss {losses[-1]:.4f} on the validation rows")
        ctx.progress(done, len(grid), "candidates")
    chosen = grid[min(range(len(grid)), key=losses.__getitem__)]
    ctx.log(f"ComPEFT α search: α = {chosen:g} has the lowest loss; writing it")
    return {"grid": list(grid), "losses": [round(loss, 6) for loss in losses], "chosen": chosen,
            "rows": sum(batch["input_ids"].shape[0] for batch in batches),
            "validation": Path(ctx.validation_path).name}
