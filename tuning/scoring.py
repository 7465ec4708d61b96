"""The evaluate run: score any artifact on any dataset.

Loss and perplexity for language models (every task but classify);
exact match and ROUGE-L of generated answers against the dataset's
responses (sft); accuracy and macro-F1 (classify); a reward model's
pairwise accuracy and mean margin on preference pairs (reward). Results are reported as
one EvalEvent and returned.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path

from tuning.errors import ConfigError
from tuning.fields import config_from_dict, setting
from tuning.events import EvalEvent, EventSink, LogEvent, ProgressEvent
from tuning.harness_tasks import HARNESS_MODES

TASK_CHOICES = ("sft", "pretrain", "classify", "reward")


@dataclass(frozen=True, kw_only=True)
class EvaluateConfig:
    artifact_path: str = setting("", help="Directory of the adapter, merged or quantized model to score; empty: "
                                          "the base model on its own (a harness benchmark only).")
    base_model: str = setting("", help="Base model directory or hub id (needed for adapters; a harness run "
                                       "scores it beside the artifact).")
    dataset_path: str = setting(help="Dataset file to score on.")
    dataset_name: str = setting("", help="Name shown in messages; the file name by default.")
    task: str = setting("sft", help="How to read the data and what to measure.", choices=TASK_CHOICES, basic=True)
    max_length: int = setting(512, help="Tokens per row; longer rows are cut.", min=16, max=32768)
    max_rows: int = setting(200, help="Rows scored for loss (the first ones).", min=1, max=100000, basic=True)
    generate_rows: int = setting(20, help="Rows whose answers are generated for exact match and ROUGE-L "
                                          "(sft only; generation is the slow part).", min=0, max=5000, basic=True)
    max_new_tokens: int = setting(64, help="Longest generated answer, in tokens.", min=1, max=4096)
    batch_size: int = setting(4, help="Rows per forward pass.", min=1, max=512)
    trust_remote_code: bool = setting(False, help="Run model code shipped with the model (admins only).")
    # lm-evaluation-harness (tuning.harness): a task generated from this dataset's columns, or named tasks.
    harness: str = setting("off", choices=HARNESS_MODES, basic=True, label="Benchmark (lm-evaluation-harness)",
                           help="off: the studio's scores above. multiple_choice / generate_until: a harness "
                                "task generated from this dataset's columns. named_tasks: the harness's own "
                                "tasks (they download their data, so the worker needs a network).")
    question_column: str = setting("question", help="Harness: the column holding the question.")
    choices_column: str = setting("choices", help="Harness multiple choice: the column holding the list of "
                                                  "choices, or one column per choice separated by commas (A,B,C,D).")
    answer_column: str = setting("answer", help="Harness: the column holding the answer: the right choice's "
                                                "0-based index, letter or text (multiple choice), or the "
                                                "expected text (generate-until).")
    answer_regex: str = setting("", help="Harness generate-until: a regular expression that finds the answer in "
                                         "the reply (its group if it has one), e.g. #### (\\d+); empty: the "
                                         "first line of the reply.")
    harness_tasks: str = setting("", help="Harness named tasks, separated by commas, e.g. hellaswag,arc_easy.")
    num_fewshot: int = setting(0, help="Harness: solved examples put before each question.", min=0, max=64)
    chat_template: bool = setting(False, help="Harness: send each prompt through the model's chat template "
                                              "(instruction-tuned models).")
    skip_base: bool = setting(False, help="Harness: do not score the base model beside the artifact.")

    @classmethod
    def from_dict(cls, data: dict) -> "EvaluateConfig":
        config = config_from_dict(cls, data)
        if not config.artifact_path and not config.base_model:
            raise ConfigError({"artifact_path": "name the artifact to score, or a base model (base_model) to "
                                                "benchmark on its own"})
        if not config.artifact_path and config.harness == "off":
            raise ConfigError({"harness": "a base model on its own is scored by an lm-evaluation-harness "
                                          "benchmark: pick multiple_choice, generate_until or named_tasks"})
        return config


@dataclass
class EvaluateResult:
    status: str  # "succeeded" or "cancelled"
    metrics: dict


def emit_progress(sink: EventSink, phase: str, done: int, total: int, unit: str, started: float) -> None:
    """A ProgressEvent with the time since ``started`` (time.monotonic()) and the time left at this pace."""
    elapsed = time.monotonic() - started
    eta = elapsed / done * (total - done) if done else None
    sink.emit(ProgressEvent(phase=phase, done=done, total=total, unit=unit, elapsed_s=round(elapsed, 2),
                            eta_s=None if eta is None else round(eta, 1)))


def _reference_pairs(config: EvaluateConfig, name: str) -> list[tuple[list[dict], str]]:
    """(conversation up to the last answer, that answer) for the first rows."""
    from tuning.data.readers import read_examples

    pairs = []
    for example in read_examples(config.dataset_path, name=name)[:config.generate_rows]:
        messages = [{"role": m.role, "content": m.content} for m in example.messages]
        if messages and messages[-1]["role"] == "assistant":
            pairs.append((messages[:-1], messages[-1]["content"]))
    return pairs


def _generate(model, tokenizer, messages: list[dict], max_new_tokens: int) -> str:
    import torch

    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                        return_dict=True).to(model.device)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).strip()


def run_evaluate(config: EvaluateConfig, sink: EventSink) -> EvaluateResult:
    from tuning.data.tasks import collate_for_task, load_task_data
    from tuning.evaluate import evaluate
    from tuning.loading import load_artifact
    from tuning.metrics import exact_match, rouge_l

    if config.harness != "off":  # the harness scores instead, through its own runner
        from tuning.harness import run_harness

        return EvaluateResult(status=(run := run_harness(config, sink)).status, metrics={"harness": run.scores})
    started = time.monotonic()
    name = config.dataset_name or Path(config.dataset_path).name
    sink.emit(LogEvent(message=f"Loading {Path(config.artifact_path).name}"))
    # The labels decide the classifier head's size, so read them before loading.
    label2id = None
    if config.task == "classify":
        from tuning.data.classify import build_label2id, read_labelled

        label2id = build_label2id((r.label for r in read_labelled(config.dataset_path, name=name)), file=name)
    model, tokenizer = load_artifact(config.artifact_path, base_model=config.base_model, task=config.task,
                                     label2id=label2id, trust_remote_code=config.trust_remote_code)
    data = load_task_data(config.task, config.dataset_path, name=name, tokenizer=tokenizer,
                          max_length=config.max_length)
    items = data.items[:config.max_rows]
    collate = collate_for_task(config.task, pad_token_id=tokenizer.pad_token_id)
    chunks = [items[i:i + config.batch_size] for i in range(0, len(items), config.batch_size)]
    sink.emit(LogEvent(message=f"Scoring {len(items)} rows of {name}"))

    def scored_batches():
        for done, chunk in enumerate(chunks, 1):
            yield collate(chunk)
            emit_progress(sink, "Scoring rows", done, len(chunks), "batches", started)

    import torch

    device = "cuda" if torch.cuda.is_available() and not getattr(model, "hf_quantizer", None) else "cpu"
    model.to(device)
    if config.task == "reward":  # the share of pairs whose chosen reply scores higher, and the mean margin
        from tuning.preference import evaluate_pairs
        from tuning.reward import RewardObjective

        metrics = evaluate_pairs(RewardObjective(model), scored_batches(), device=device,
                                 autocast=contextlib.nullcontext)
    else:
        metrics = evaluate(model, scored_batches(), device=device, autocast=contextlib.nullcontext,
                           task=config.task)
    metrics["rows"] = len(items)
    if config.task == "sft" and config.generate_rows:
        pairs = _reference_pairs(config, name)
        answers = []
        for done, (messages, reference) in enumerate(pairs, 1):
            if sink.should_stop():
                return EvaluateResult(status="cancelled", metrics=metrics)
            answers.append((_generate(model, tokenizer, messages, config.max_new_tokens), reference))
            emit_progress(sink, "Generating answers", done, len(pairs), "answers", started)
        if answers:
            metrics["exact_match"] = round(sum(exact_match(a, r) for a, r in answers) / len(answers), 6)
            metrics["rouge_l"] = round(sum(rouge_l(a, r) for a, r in answers) / len(answers), 6)
            metrics["samples"] = [{"expected": r, "generated": a} for a, r in answers[:5]]
    sink.emit(EvalEvent(step=0, **{k: v for k, v in metrics.items() if k in EvalEvent.__dataclass_fields__}))
    sink.emit(LogEvent(message="Scores: " + ", ".join(f"{k} {v}" for k, v in metrics.items()
                                                       if isinstance(v, (int, float)))))
    return EvaluateResult(status="succeeded", metrics=metrics)
