"""Judged comparison: two models answer the same prompts, a judge compares the answers pairwise.

Language-model judges favour one position (usually the first answer they read). So every pair is judged
twice, once with model A's answer first and once with model B's first; a model wins a prompt only when
both orders name it, and a disagreement counts as a tie. A judge that always answers "A" thus gives
nothing but ties.

The judge is any OpenAI-compatible endpoint (through the ``openai`` client) or a model loaded here; both
get the same judging template and their reply is read by ``parse_verdict``. The shares of wins, ties and
losses (model B against model A) carry 95% Wilson score intervals: each share is a binomial proportion
over the judged prompts.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, replace
from pathlib import Path

from tuning.errors import ConfigError, TuningError
from tuning.events import EventSink, JudgedEvent, LogEvent
from tuning.fields import config_from_dict, setting
from tuning.loading import load_language_model
from tuning.scoring import emit_progress

MAX_PROMPTS = 200  # each costs two generations and two judgements
Z_95 = 1.959964  # the normal quantile of a two-sided 95% interval

JUDGE_TEMPLATE = """You are an impartial judge. Compare two answers to the same request.

[Request]
{question}

[Answer A]
{answer_a}

[Answer B]
{answer_b}

Which answer is better: more helpful, correct and clear? Do not let the order or the length of the answers
sway you. Reply with one word only: A, B, or tie."""


class JudgeError(TuningError):
    """The judge could not be asked or did not answer (unreachable, refused, an HTTP error)."""


@dataclass(frozen=True, kw_only=True)
class JudgeConfig:
    model_a_path: str = setting("", help="Directory of model A; empty: the base model itself.")
    model_a_base: str = setting(help="Base model of A (directory or hub id): A itself when no path is given, "
                                     "else the base its adapter was trained on.")
    label_a: str = setting("A", help="What the results call model A.")
    model_b_path: str = setting("", help="Directory of model B; empty: the base model itself.")
    model_b_base: str = setting(help="Base model of B, as for A.")
    label_b: str = setting("B", help="What the results call model B.")
    dataset_path: str = setting("", help="Prompts from this dataset (each row's conversation up to its last "
                                         "answer); or give prompts.")
    max_rows: int = setting(20, help="Dataset rows used as prompts (the first ones).", min=1, max=MAX_PROMPTS,
                            basic=True)
    max_new_tokens: int = setting(128, help="Longest answer each model gives, in tokens.", min=1, max=2048,
                                  basic=True)
    judge_url: str = setting("", help="Base URL of an OpenAI-compatible judge, e.g. https://api.openai.com/v1 "
                                      "(its key is a team secret); or give judge_path.", basic=True)
    judge_model: str = setting("", help="The model name the judge endpoint serves, e.g. gpt-4o-mini.",
                               basic=True)
    judge_path: str = setting("", help="Or a model of the studio as the judge: its directory.")
    judge_base: str = setting("", help="Base model of the judge when judge_path is an adapter.")
    judge_max_tokens: int = setting(16, help="Longest verdict the judge may write, in tokens.", min=1, max=1024)
    trust_remote_code: bool = setting(False, help="Run model code shipped with the model (admins only).")
    prompts: tuple = ()

    @classmethod
    def from_dict(cls, data: dict) -> "JudgeConfig":
        data = dict(data)
        prompts = data.pop("prompts", None) or []
        errors = {}
        if (not isinstance(prompts, (list, tuple)) or len(prompts) > MAX_PROMPTS
                or not all(isinstance(p, str) and p.strip() for p in prompts)):
            errors["prompts"] = f"give at most {MAX_PROMPTS} prompts, each a non-empty text"
        try:
            config = config_from_dict(cls, data)
        except ConfigError as exc:
            errors = {**exc.errors, **errors}
            config = None
        if config is not None:
            if not config.judge_url and not config.judge_path:
                errors["judge_url"] = "name a judge: an OpenAI-compatible endpoint's URL, or a model of the studio"
            elif config.judge_url and config.judge_path:
                errors["judge_url"] = "name one judge: an endpoint or a model of the studio, not both"
            elif config.judge_url and not config.judge_model:
                errors["judge_model"] = "name the model the judge endpoint serves"
            if config.judge_url and not re.match(r"https?://[^/\s]+", config.judge_url):
                errors["judge_url"] = "must be an http:// or https:// URL with a host"
            if not prompts and not config.dataset_path:
                errors["prompts"] = "give prompts, or a dataset whose rows are the prompts"
        if errors:
            raise ConfigError(errors)
        return replace(config, prompts=tuple(p.strip() for p in prompts))


@dataclass
class JudgeResult:
    status: str  # "succeeded" or "cancelled"
    summary: dict
    pairs: list


def parse_verdict(text: str) -> str | None:
    """"A", "B" or "tie" from a judge's reply, None when it names none. The template asks for one word;
    "[[A]]" (MT-Bench's form), "Answer B" and "Tie." are read too."""
    text = (text or "").strip()
    bracketed = re.search(r"\[\[\s*(A|B|tie)\s*\]\]", text, re.IGNORECASE)
    first = bracketed or re.match(r"[\W_]*(?:answer\s+)?(A|B|tie)\b", text, re.IGNORECASE)
    if not first:
        return None
    word = first.group(1)
    return "tie" if word.lower() == "tie" else word.upper()


def pair_outcome(verdict_ab: str | None, verdict_ba: str | None) -> str:
    """"a", "b" or "tie" for one prompt: ``verdict_ab`` was given with A's answer first, ``verdict_ba`` with
    B's first. Only two verdicts naming the same model make a win; a disagreement is a tie."""
    first = {"A": "a", "B": "b"}.get(verdict_ab or "", "tie")
    second = {"A": "b", "B": "a"}.get(verdict_ba or "", "tie")
    return first if first == second else "tie"


def wilson_interval(successes: int, total: int, z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion (95% by default)."""
    if total == 0:
        return 0.0, 1.0
    share = successes / total
    denominator = 1 + z * z / total
    centre = (share + z * z / (2 * total)) / denominator
    half = z * math.sqrt(share * (1 - share) / total + z * z / (4 * total * total)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def summarize(outcomes: list[str]) -> dict:
    """Counts, shares and 95% Wilson intervals of B's wins, the ties and B's losses."""
    total = len(outcomes)
    counts = {"wins": outcomes.count("b"), "ties": outcomes.count("tie"), "losses": outcomes.count("a")}
    summary = {"pairs": total, **counts, "interval": "95% Wilson score interval"}
    for name, count in counts.items():
        low, high = wilson_interval(count, total)
        summary[f"{name}_share"] = round(count / total, 4) if total else 0.0
        summary[f"{name}_interval"] = [round(low, 4), round(high, 4)]
    return summary


def question_text(messages: list[dict]) -> str:
    """The request as the judge reads it: the user's text, or each turn named in a conversation."""
    if len(messages) == 1:
        return messages[0]["content"]
    return "\n".join(f"{m['role']}: {m['content']}" for m in messages)


def prompt_set(config: JudgeConfig) -> list[list[dict]]:
    """The conversations both models answer: the given prompts, else the dataset's first rows."""
    if config.prompts:
        return [[{"role": "user", "content": prompt}] for prompt in config.prompts]
    from tuning.data.readers import read_examples

    conversations = []
    for example in read_examples(config.dataset_path, name=Path(config.dataset_path).name)[:config.max_rows]:
        messages = [{"role": m.role, "content": m.content} for m in example.messages]
        while messages and messages[-1]["role"] == "assistant":
            messages.pop()  # the dataset's own answer: the models write theirs
        if messages:
            conversations.append(messages)
    if not conversations:
        raise ConfigError({"dataset": f"{Path(config.dataset_path).name} has no rows with a prompt to answer"})
    return conversations


class EndpointJudge:
    """Asks an OpenAI-compatible chat endpoint. ``http_client`` is how the studio keeps the connection to
    the address it checked (studio.notifications.outbound); the command line passes none."""

    def __init__(self, *, url: str, model: str, api_key: str, max_tokens: int, http_client=None):
        from openai import OpenAI

        self.url, self.model, self.max_tokens = url, model, max_tokens
        # A judge without a key (a local server) still needs a value: the client refuses to start without one.
        self.client = OpenAI(base_url=url, api_key=api_key or "none", http_client=http_client, max_retries=2,
                             timeout=120.0)

    def __call__(self, prompt: str) -> str:
        import openai

        try:
            reply = self.client.chat.completions.create(
                model=self.model, messages=[{"role": "user", "content": prompt}], max_tokens=self.max_tokens,
                temperature=0)
        except openai.APIStatusError as exc:
            raise JudgeError(f"the judge at {self.url} answered HTTP {exc.status_code}: {exc.message}") from None
        except openai.APIConnectionError as exc:
            cause = exc.__cause__
            raise JudgeError(f"cannot reach the judge at {self.url}: {cause or exc}") from None
        if not reply.choices:
            raise JudgeError(f"the judge at {self.url} answered no choices")
        return reply.choices[0].message.content or ""


class ModelJudge:
    """A model loaded here, prompted with the judging template (greedy)."""

    def __init__(self, model, tokenizer, *, max_tokens: int):
        self.model, self.tokenizer, self.max_tokens = model, tokenizer, max_tokens

    def __call__(self, prompt: str) -> str:
        from tuning.generate import generate_reply

        return generate_reply(self.model, self.tokenizer, [{"role": "user", "content": prompt}],
                              max_new_tokens=self.max_tokens)


def _answers(config: JudgeConfig, sink: EventSink, conversations, *, path: str, base: str, label: str,
             started: float) -> list[str] | None:
    """One model's greedy answer to each conversation; None when cancelled."""
    import gc

    from tuning.generate import generate_reply

    sink.emit(LogEvent(message=f"Loading {label}"))
    model, tokenizer = load_language_model(path, base, trust_remote_code=config.trust_remote_code)
    answers = []
    for done, messages in enumerate(conversations, 1):
        if sink.should_stop():
            return None
        answers.append(generate_reply(model, tokenizer, messages, max_new_tokens=config.max_new_tokens))
        emit_progress(sink, f"{label} answering", done, len(conversations), "prompts", started)
    del model
    gc.collect()  # one model in memory at a time
    return answers


def make_judge(config: JudgeConfig, *, api_key: str = "", http_client=None):
    if config.judge_url:
        return EndpointJudge(url=config.judge_url, model=config.judge_model, api_key=api_key,
                             max_tokens=config.judge_max_tokens, http_client=http_client)
    model, tokenizer = load_language_model(config.judge_path, config.judge_base,
                                           trust_remote_code=config.trust_remote_code)
    return ModelJudge(model, tokenizer, max_tokens=config.judge_max_tokens)


def run_judge(config: JudgeConfig, sink: EventSink, *, api_key: str = "", http_client=None) -> JudgeResult:
    """Both models answer, the judge compares each pair in both orders; one JudgedEvent at the end."""
    started = time.monotonic()
    conversations = prompt_set(config)
    answers = {}
    for side, path, base, label in (("a", config.model_a_path, config.model_a_base, config.label_a),
                                    ("b", config.model_b_path, config.model_b_base, config.label_b)):
        answers[side] = _answers(config, sink, conversations, path=path, base=base, label=label, started=started)
        if answers[side] is None:
            return JudgeResult(status="cancelled", summary={}, pairs=[])
    judge = make_judge(config, api_key=api_key, http_client=http_client)
    pairs = []
    for done, (messages, answer_a, answer_b) in enumerate(zip(conversations, answers["a"], answers["b"]), 1):
        if sink.should_stop():
            return JudgeResult(status="cancelled", summary={}, pairs=pairs)
        question = question_text(messages)
        raw_ab = judge(JUDGE_TEMPLATE.format(question=question, answer_a=answer_a, answer_b=answer_b))
        raw_ba = judge(JUDGE_TEMPLATE.format(question=question, answer_a=answer_b, answer_b=answer_a))
        verdict_ab, verdict_ba = parse_verdict(raw_ab), parse_verdict(raw_ba)
        pairs.append({"prompt": question, "answer_a": answer_a, "answer_b": answer_b,
                      "verdict_a_first": verdict_ab, "verdict_b_first": verdict_ba,
                      "reply_a_first": raw_ab[:500], "reply_b_first": raw_ba[:500],
                      "outcome": pair_outcome(verdict_ab, verdict_ba)})
        emit_progress(sink, "Judging pairs", done, len(conversations), "pairs", started)
    summary = summarize([pair["outcome"] for pair in pairs])
    sink.emit(JudgedEvent(label_a=config.label_a, label_b=config.label_b, summary=summary, pairs=pairs))
    sink.emit(LogEvent(message=f"{config.label_b} against {config.label_a}: {summary['wins']} wins, "
                               f"{summary['ties']} ties, {summary['losses']} losses of {summary['pairs']}"))
    return JudgeResult(status="succeeded", summary=summary, pairs=pairs)
