"""Before/after comparison of a quantized model with its source.

The parts are settings of the job (QuantizeConfig): perplexity on rows of a
dataset (when one is given), the prompts answered before and after, the
agreement of the two models' next-token choices, and generation speed; the
sizes on disk are always there. A part switched off is absent from the
report.

The "after" model is what was written: GGUF files are read back into the
source model in memory (``gguf_readback``: transformers' ``gguf_file=``
loader took minutes on a CPU for the bundled model), every other output is
reloaded with the scheme's stock loader, as a user would load it. The two
models are measured one after the other, never held together.

Cost, in decoding steps: the prompts are answered in one batched
``generate`` call (one step per new token for all prompts together), and
agreement is one forward pass over the prompts and the source's answers.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Callable
from pathlib import Path

from tuning.quantize.common import Cancelled, dir_size, weights_size

EVAL_BATCH_SIZE = 4
PARTS = ("perplexity", "answers", "agreement", "speed")


def report_parts(config) -> tuple[str, ...]:
    """The parts of the report this job measures, in order."""
    wanted = {"perplexity": bool(config.eval_dataset_path), "answers": config.report_answers,
              "agreement": config.report_agreement, "speed": config.report_speed}
    return tuple(part for part in PARTS if wanted[part]) if config.report else ()


def _eval_items(config, tokenizer) -> list:
    from tuning.data.tasks import load_task_data

    data = load_task_data("sft", config.eval_dataset_path, tokenizer=tokenizer, max_length=config.eval_max_length)
    return data.items[:config.eval_rows]


class _Phases:
    """Progress of the report's phases, each named for the user, and the stop check."""

    def __init__(self, progress_for: Callable[[str, str], Callable[[int, int], None]],
                 should_stop: Callable[[], bool]):
        self.progress_for, self.should_stop = progress_for, should_stop

    def start(self, phase: str, unit: str) -> Callable[[int, int], None]:
        progress = self.progress_for(f"Report: {phase}", unit)

        def step(done: int, total: int) -> None:
            progress(done, total)
            if self.should_stop():
                raise Cancelled
        return step


def _perplexity(model, tokenizer, items: list, step) -> dict:
    from tuning.data.tasks import collate_for_task
    from tuning.evaluate import evaluate

    collate = collate_for_task("sft", pad_token_id=tokenizer.pad_token_id)
    chunks = [items[i:i + EVAL_BATCH_SIZE] for i in range(0, len(items), EVAL_BATCH_SIZE)]

    def batches():
        for index, chunk in enumerate(chunks):
            yield collate(chunk)
            step(min((index + 1) * EVAL_BATCH_SIZE, len(items)), len(items))  # after the batch was scored

    scores = evaluate(model, batches(), device=str(next(model.parameters()).device),
                      autocast=contextlib.nullcontext, task="sft")
    return {"perplexity": scores["perplexity"], "eval_loss": scores["eval_loss"]}


def _agreement_inputs(tokenizer, prompts: list[str], replies: list[list[int]] | None) -> list[list[int]]:
    """Token ids of each prompt (through the chat template) followed by the source's reply, when there is one."""
    from tuning.generate import _encode

    ids = [_encode(tokenizer, prompt, None)["input_ids"][0].tolist() for prompt in prompts]
    return [i + r for i, r in zip(ids, replies)] if replies else ids


def _log_probs(model, sequences: list[list[int]]):
    """Next-token log-probabilities at every position of every sequence, in one batched forward pass:
    a [positions, vocab] tensor."""
    import torch

    longest = max(len(s) for s in sequences)
    ids = torch.zeros(len(sequences), longest, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, sequence in enumerate(sequences):  # right padding: positions stay those of the real tokens
        ids[row, :len(sequence)] = torch.tensor(sequence)
        mask[row, :len(sequence)] = 1
    device = next(model.parameters()).device
    with torch.no_grad():
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
    return torch.log_softmax(logits[mask.bool().to(device)], dim=-1).cpu()


def _agreement(source_log_probs, log_probs) -> dict:
    """How often the output picks the source's next token, and the mean KL divergence KL(source || output) in
    nats per token (llama.cpp's perplexity tool reports the same pair for its quantizations)."""
    import torch

    same = (source_log_probs.argmax(-1) == log_probs.argmax(-1)).float().mean().item()
    kl = torch.sum(source_log_probs.exp() * (source_log_probs - log_probs), dim=-1).mean().item()
    return {"agreement_top1": round(same, 4), "agreement_kl": round(max(kl, 0.0), 6),
            "agreement_tokens": int(source_log_probs.shape[0])}


def _measure(model, tokenizer, items: list, config, parts: tuple[str, ...], phases: _Phases, which: str,
             source: dict | None = None) -> dict:
    """One model's figures. ``source`` is the source model's result when measuring the output."""
    from tuning.generate import generate_replies, generation_speed

    model.eval()
    result: dict = {}
    if "perplexity" in parts:
        result.update(_perplexity(model, tokenizer, items, phases.start(f"perplexity on {len(items)} rows ({which})",
                                                                         "rows")))
    if "answers" in parts:
        step = phases.start(f"answering {len(config.prompts)} prompts ({which})", "tokens")
        replies = generate_replies(model, tokenizer, list(config.prompts), max_new_tokens=config.max_new_tokens,
                                   on_step=step)
        result["reply_ids"] = replies
        result["answers"] = [tokenizer.decode(r, skip_special_tokens=True).strip() for r in replies]
    if "agreement" in parts:
        step = phases.start(f"agreement on {len(config.prompts)} prompts ({which})", "passes")
        sequences = _agreement_inputs(tokenizer, list(config.prompts), (source or result).get("reply_ids"))
        result["log_probs"] = _log_probs(model, sequences)
        step(1, 1)
        if source is not None:
            result.update(_agreement(source["log_probs"], result["log_probs"]))
    if "speed" in parts:
        step = phases.start(f"generation speed ({which})", "runs")
        result["tokens_per_s"] = round(generation_speed(model, tokenizer, config.prompts[0], config.max_new_tokens), 2)
        step(1, 1)
    return result


def _load_source(source_dir: Path, config, device: str):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(source_dir, dtype="auto", use_safetensors=True,
                                                trust_remote_code=config.trust_remote_code).to(device)


def build_report(*, config, scheme, source_dir: Path, out_dir: Path,
                 progress_for: Callable[[str, str], Callable[[int, int], None]],
                 should_stop: Callable[[], bool]) -> dict:
    """Size, and the parts ``report_parts(config)`` names, before and after, as JSON-able data.

    ``progress_for(phase, unit)`` returns the ``progress(done, total)`` of one phase."""
    import torch

    from tuning.models import load_tokenizer

    size_before, size_after = weights_size(source_dir), weights_size(out_dir)
    compression = {}
    if scheme.delta:  # what shrinks is the change from the base: its bytes as stored before, packed after
        import json

        from tuning.quantize.delta import STATS_FILE

        compression = json.loads((out_dir / STATS_FILE).read_text())
        size_before, size_after = compression["delta_bytes_before"], compression["delta_bytes_after"]
    parts = report_parts(config)
    report = {
        "scheme": scheme.name, "format": scheme.format, "parts": list(parts),
        "size_bytes_before": size_before, "size_bytes_after": size_after,
        "dir_bytes_before": dir_size(source_dir), "dir_bytes_after": dir_size(out_dir),
        "size_ratio": round(size_after / size_before, 4) if size_before else None,
    }
    if compression:
        report["compression"] = compression
    if not parts:
        return report
    phases = _Phases(progress_for, should_stop)
    device = "cuda" if scheme.needs_gpu else "cpu"  # bitsandbytes outputs only load on a GPU
    tokenizer = load_tokenizer(str(source_dir), trust_remote_code=config.trust_remote_code)
    items = _eval_items(config, tokenizer) if "perplexity" in parts else []
    step = phases.start("loading the source model", "models")
    model = _load_source(source_dir, config, device)
    before_dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    step(1, 1)
    before = _measure(model, tokenizer, items, config, parts, phases, "source")

    after_tokenizer = load_tokenizer(str(out_dir), trust_remote_code=config.trust_remote_code)
    if scheme.gguf_file:
        from tuning.quantize.gguf_readback import load_gguf_into

        model = model.float()  # transformers' GGUF loader gives float32 too
        load_gguf_into(model, out_dir / scheme.gguf_file, source_dir,
                       progress=phases.start("reading the GGUF file back", "tensors"), should_stop=should_stop)
        measured_by = "the GGUF file's tensors, dequantized, in the source model's architecture"
    else:
        del model
        gc.collect()
        step = phases.start("reloading the output", "models")
        model = scheme.load(out_dir, trust_remote_code=config.trust_remote_code)
        step(1, 1)
        measured_by = "the output reloaded with its stock loader"
    after = _measure(model, after_tokenizer, items, config, parts, phases, "output", source=before)
    del model
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()

    report.update(dtype_before=before_dtype, measured_by=measured_by)
    if "perplexity" in parts:
        report.update(eval_rows=len(items), perplexity_before=before["perplexity"],
                      perplexity_after=after["perplexity"], eval_loss_before=before["eval_loss"],
                      eval_loss_after=after["eval_loss"])
    if "answers" in parts:
        report.update(max_new_tokens=config.max_new_tokens,
                      answers=[{"prompt": prompt, "before": b, "after": a}
                               for prompt, b, a in zip(config.prompts, before["answers"], after["answers"])])
    if "agreement" in parts:
        report.update({key: after[key] for key in ("agreement_top1", "agreement_kl", "agreement_tokens")})
    if "speed" in parts:
        report.update(tokens_per_s_before=before["tokens_per_s"], tokens_per_s_after=after["tokens_per_s"])
    return report
