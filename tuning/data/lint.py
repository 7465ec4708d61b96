"""Lint a fine-tuning dataset: find the rows that would train badly,
before a GPU hour is spent on them.

``lint`` takes ``Example`` records (from ``readers.read_examples``) or raw
rows (dicts, or ``(row_number, dict)`` pairs as ``records.iter_records``
yields them). Raw rows are read leniently so that every problem in the
file is listed at once, where the strict reader stops at the first one;
``lint_file`` does that for a file.

Findings and why they are blocking or not:

========================  ========  =======  ==============================================
code                      severity  fixable  why
========================  ========  =======  ==============================================
empty_row                 blocking  yes      nothing to train on; the reader refuses it
empty_prompt              blocking  yes      a blank user turn: the reader refuses it
empty_response            blocking  yes      teaches the model to answer with nothing
roles_out_of_order        blocking  yes      unknown role, system not first, a reply
                                             before any user turn, two user turns in a
                                             row: templates refuse or garble these
ends_on_user              blocking  yes      the last turn has no reply to learn
template_error            blocking  yes      the base model's chat template refuses the row
exact_duplicates          warning   yes      over-weights those rows (Lee et al. 2021)
near_duplicates           warning   yes      same, for rows differing in a few words
validation_overlap        warning   yes      eval loss then measures memorisation
missing_eos               warning   no       the model never learns to stop; a template
                                             or data fix, not a row to drop
over_max_length           warning   yes      the end of the row is cut off in training
no_response_within_max    warning   yes      only prompt fits: training skips the row
empty_rejected            blocking  yes      preference pairs: nothing to compare the chosen
                                             reply with (an empty chosen one is empty_response)
identical_pair            blocking  yes      preference pairs: chosen and rejected are the
                                             same reply, so the pair teaches nothing
identical_within_max      warning   yes      preference pairs: the replies differ only after
                                             max length, so training drops the pair
unreadable_label          blocking  yes      unpaired (KTO) rows: the label says neither
                                             desirable nor undesirable; the reader refuses it
unbalanced_labels         warning   no       unpaired (KTO) rows: one label far outnumbers the
                                             other, and the weights should make up for it
                                             (KTO paper, Eq. 8; TRL's KTOTrainer warns alike)
========================  ========  =======  ==============================================

"fixable" means dropping the listed rows removes the finding (``drop_rows``).
Duplicate findings list the later copies only, so dropping keeps one of each.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tuning.data.embed import NUM_PERM, SHINGLE_WORDS, lsh_parameters, near_duplicate_groups
from tuning.data.readers import CHAT_KEYS, PROMPT_KEYS, RESPONSE_KEYS, ROLE_ALIASES, ROLES, Example, Message
from tuning.data.records import iter_records, pick_column
from tuning.data.schemas.unpaired import UNPAIRED, read_label
from tuning.data.versioning import text_key
from tuning.errors import ConfigError, DatasetError

__all__ = ["Finding", "LintReport", "lint", "lint_file", "drop_rows", "BLOCKING", "WARNING"]

BLOCKING, WARNING = "blocking", "warning"
LISTED = 100  # row numbers (and reasons) a finding lists; ``count`` is always complete
NEAR_THRESHOLD = 0.8

# code -> (severity, fixable by dropping the rows)
CHECKS = {"empty_row": (BLOCKING, True), "empty_prompt": (BLOCKING, True), "empty_response": (BLOCKING, True),
          "roles_out_of_order": (BLOCKING, True), "ends_on_user": (BLOCKING, True),
          "template_error": (BLOCKING, True), "exact_duplicates": (WARNING, True),
          "near_duplicates": (WARNING, True), "validation_overlap": (WARNING, True), "missing_eos": (WARNING, False),
          "over_max_length": (WARNING, True), "no_response_within_max": (WARNING, True),
          "empty_rejected": (BLOCKING, True), "identical_pair": (BLOCKING, True),
          "identical_within_max": (WARNING, True), "unreadable_label": (BLOCKING, True),
          "unbalanced_labels": (WARNING, False)}


@dataclass(frozen=True)
class Finding:
    code: str
    message: str  # what is wrong and what to do
    rows: tuple[int, ...]  # 1-based row numbers, all of them
    details: dict = field(default_factory=dict)  # row -> why, for some findings

    @property
    def severity(self) -> str:
        return CHECKS[self.code][0]

    @property
    def fixable(self) -> bool:
        return CHECKS[self.code][1]

    def to_dict(self) -> dict:
        listed = self.rows[:LISTED]
        return {"code": self.code, "severity": self.severity, "message": self.message, "rows": list(listed),
                "count": len(self.rows), "fixable": self.fixable,
                "details": {str(row): self.details[row] for row in listed if row in self.details}}


@dataclass(frozen=True)
class LintReport:
    findings: tuple[Finding, ...]
    rows_checked: int
    parameters: dict

    @property
    def blocking(self) -> bool:
        return any(f.severity == BLOCKING for f in self.findings)

    def rows_to_drop(self, codes: list[str] | None = None) -> list[int]:
        """Rows of the fixable findings (of ``codes``, or all) for ``drop_rows``."""
        return sorted({row for f in self.findings if f.fixable and (codes is None or f.code in codes)
                       for row in f.rows})

    def to_dict(self) -> dict:
        return {"blocking": self.blocking, "rows_checked": self.rows_checked, "parameters": self.parameters,
                "findings": [f.to_dict() for f in self.findings]}


@dataclass
class _Row:
    row: int
    turns: tuple[Message, ...] | None  # None: a row without conversation (text, text+label)
    text: str  # everything in it, for duplicate checks
    rejected: str | None = None  # a preference row's rejected reply (its turns end with the chosen one)
    label: object = None  # an unpaired (KTO) row's label as written: desirable or not


def _content(value) -> str:
    return value if isinstance(value, str) else ""


def _reply(value) -> str:
    """A preference reply: text, or a conversation whose last assistant turn is the reply (as the reader reads it)."""
    if isinstance(value, list):
        turns = [t for t in value if isinstance(t, dict) and t.get("role") in ("assistant", "gpt")]
        return _content(turns[-1].get("content")) if turns else ""
    return _content(value)


def _lenient_turns(items: list) -> list[Message]:
    turns = []
    for item in items:
        item = item if isinstance(item, dict) else {}
        raw = item.get("role", item.get("from"))
        role = ROLE_ALIASES.get(raw.strip().lower(), raw) if isinstance(raw, str) else repr(raw)
        content = _content(item.get("content", item.get("value")))
        if role == "system" and not content.strip():
            continue  # an empty system message counts as absent, as in the reader
        turns.append(Message(role, content, train=item.get("weight", 1) != 0))
    return turns


def _lenient(record: dict, row: int) -> _Row:
    """A raw row as turns, without refusing anything: the checks below say what is wrong."""
    key = pick_column(tuple(CHAT_KEYS), record)
    if key is not None and isinstance(record[key], list):
        turns = _lenient_turns(record[key])
        system = _content(record.get("system"))
        if system.strip() and not (turns and turns[0].role == "system"):
            turns.insert(0, Message("system", system))
    else:
        prompt_key = pick_column(PROMPT_KEYS, record)
        response_key = pick_column(RESPONSE_KEYS + ("chosen",), record)  # preference rows: the chosen reply
        if prompt_key is None and response_key is None:  # text or text+label: the text column is the row
            column = pick_column(("text",), record)
            text = _content(record[column]) if column else "\n".join(
                v for v in record.values() if isinstance(v, str))
            return _Row(row, None, text)
        prompt = _content(record.get(prompt_key))
        extra = _content(record.get(pick_column(("input",), record) or "input"))
        prompt = f"{prompt}\n\n{extra}" if extra.strip() and prompt.strip() else prompt or extra
        system = _content(record.get(pick_column(("system",), record) or "system"))
        rejected_key = pick_column(("rejected",), record) if response_key == "chosen" else None
        rejected = _reply(record.get(rejected_key)) if rejected_key else None
        if prompt_key is None and rejected_key and isinstance(record[response_key], list):
            # Whole conversations without a prompt column: the chosen one's turns hold the prompt.
            turns = _lenient_turns(record[response_key])
        else:
            turns = ([Message("system", system)] if system.strip() else []) + [
                Message("user", prompt), Message("assistant", _reply(record.get(response_key)))]
        text = "\n".join([m.content for m in turns] + ([rejected] if rejected is not None else []))
        label_key = pick_column(UNPAIRED.field("label").columns, record) if response_key != "chosen" else None
        label = record[label_key] if label_key and prompt_key else None
        return _Row(row, tuple(turns), text, rejected, label)
    return _Row(row, tuple(turns), "\n".join(m.content for m in turns))


def _rows(items) -> list[_Row]:
    rows = []
    for index, item in enumerate(items):
        if isinstance(item, Example):
            rows.append(_Row(item.row or index + 1, item.messages, "\n".join(m.content for m in item.messages)))
        elif isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], dict):
            rows.append(_lenient(item[1], item[0]))
        elif isinstance(item, dict):
            rows.append(_lenient(item, index + 1))
        else:
            raise TypeError(f"lint takes Example records or row dicts, not {type(item).__name__}")
    return rows


def _key(row: _Row) -> str:
    if row.turns is None:
        return text_key(row.text)
    return text_key("\x1e".join(f"{m.role}\x1f{m.content}" for m in row.turns))


def _structure(turns: tuple[Message, ...]) -> tuple[str, str] | None:
    """(code, reason) for the first thing wrong with a conversation's shape or content, or None."""
    if not any(m.content.strip() for m in turns):
        return "empty_row", "every turn is empty"
    for index, message in enumerate(turns):
        if message.role not in ROLES:
            return "roles_out_of_order", f"turn {index} has the unknown role {message.role!r}"
        if message.role == "system" and index > 0:
            return "roles_out_of_order", f"turn {index} is a system message after the start"
    rest = [(i, m) for i, m in enumerate(turns) if m.role != "system"]
    if not rest:
        return "empty_row", "only a system message"
    if rest[0][1].role != "user":
        return "roles_out_of_order", f"turn {rest[0][0]} is the assistant's, before any user turn"
    # Two assistant turns in a row are left alone: ChatML renders them fine, and a template that refuses
    # them is caught by the template check.
    for (i, a), (j, b) in zip(rest, rest[1:]):
        if a.role == b.role == "user":
            return "roles_out_of_order", f"turns {i} and {j} are both user turns"
    if rest[-1][1].role == "user":
        return "ends_on_user", f"turn {rest[-1][0]} (the last) is the user's"
    for index, message in rest:
        if not message.content.strip():
            return ("empty_response" if message.role == "assistant" else "empty_prompt"), f"turn {index} is empty"
    return None


def _closers(tokenizer) -> set[str]:
    """Tokens that can end an assistant turn: EOS and the special tokens the tokenizer added (ChatML's
    <|im_end|>, Llama 3's <|eot_id|>, Gemma's <end_of_turn>), less those that open or pad text."""
    eos = tokenizer.eos_token
    special = {t.content for t in getattr(tokenizer, "added_tokens_decoder", {}).values() if t.special}
    openers = {tokenizer.bos_token, tokenizer.unk_token, tokenizer.pad_token} - {eos}
    return ({eos} | special) - openers - {None, ""}


def _closes_turns(example: Example, tokenizer, closers: set[str]) -> bool:
    """Whether every trained assistant turn is followed by a closer in the rendered text."""
    for index, message in enumerate(example.messages):
        if message.role != "assistant" or not message.train:
            continue
        messages = [{"role": m.role, "content": m.content} for m in example.messages[:index + 1]]
        through = tokenizer.apply_chat_template(messages, tokenize=False)
        content = message.content.strip()
        at = through.rfind(content)
        if at < 0:
            continue  # the template rewrites the content; nothing to anchor on
        tail = through[at + len(content):].lstrip()
        if not any(tail.startswith(token) for token in closers):
            return False
    return True


def _finding(code: str, rows: list[int], message: str, details: dict | None = None) -> Finding:
    return Finding(code, message, tuple(sorted(rows)), dict(details or {}))


def _plural(n: int) -> str:
    return f"{n} row{'s' * (n != 1)}"


def _n(n: int, one: str, many: str) -> str:
    """"1 row has" / "2 rows have": the count with its verb."""
    return f"{_plural(n)} {one if n == 1 else many}"


def lint(examples, *, tokenizer=None, max_length: int | None = None, validation=None,
         near_threshold: float = NEAR_THRESHOLD, progress: Callable[[int, int], None] | None = None) -> LintReport:
    """Every finding for ``examples`` (see the module docstring). The tokenizer checks (template, EOS,
    length) run only with a ``tokenizer``; the length checks only with ``max_length`` too; the overlap
    check only with ``validation`` rows (same kinds of item as ``examples``)."""
    if max_length is not None and max_length < 1:
        raise ConfigError({"max_length": f"must be at least 1 (got {max_length})"})
    rows = _rows(examples)
    found: dict[str, list[int]] = {code: [] for code in CHECKS}
    details: dict[str, dict[int, str]] = {code: {} for code in CHECKS}
    closers = _closers(tokenizer) if tokenizer is not None else set()
    eos_checked, healthy = 0, []
    for done, row in enumerate(rows, start=1):
        problem = _structure(row.turns) if row.turns is not None else (
            None if row.text.strip() else ("empty_row", "no text"))
        problem = problem or _pair_problem(row) or _label_problem(row)
        if problem:
            found[problem[0]].append(row.row)
            details[problem[0]][row.row] = problem[1]
        else:
            healthy.append(row)
            if tokenizer is not None:
                _tokenizer_checks(row, tokenizer, max_length, closers, found, details)
                eos_checked += row.turns is not None and row.row not in details["template_error"]
        if progress is not None:
            progress(done, len(rows))
    _duplicates(healthy, near_threshold, found)
    balance = _label_balance(healthy)
    if balance:
        found["unbalanced_labels"] = balance[0]
        details["unbalanced_labels"]["counts"] = balance[1]
    if validation is not None:
        _overlap(healthy, _rows(validation), near_threshold, found)
    findings = [_describe(code, found[code], details[code], tokenizer, max_length, near_threshold, eos_checked)
                for code in CHECKS if found[code]]
    bands, per_band = lsh_parameters(near_threshold)
    parameters = {"near_duplicates": {"method": "MinHash + LSH", "threshold": near_threshold,
                                      "num_perm": NUM_PERM, "shingle_words": SHINGLE_WORDS, "bands": bands,
                                      "rows_per_band": per_band}, "max_length": max_length}
    return LintReport(tuple(findings), len(rows), parameters)


def _pair_problem(row: _Row) -> tuple[str, str] | None:
    if row.rejected is None:
        return None
    if not row.rejected.strip():
        return "empty_rejected", "the rejected reply is empty"
    if text_key(row.rejected) == text_key(row.turns[-1].content):
        return "identical_pair", "chosen and rejected are the same reply"
    return None


def _tokenizer_checks(row: _Row, tokenizer, max_length, closers, found, details) -> None:
    from tuning.data.sft import has_labels, tokenize_example

    if row.turns is None:  # plain text: only its length matters
        if max_length is not None and len(tokenizer(row.text, add_special_tokens=False)["input_ids"]) > max_length:
            found["over_max_length"].append(row.row)
        return
    example = Example(row.turns, row.row)
    try:
        # Uncut when there is no max_length: that check is off, the template must still accept the row.
        tokenized = tokenize_example(example, tokenizer, max_length=max_length or sys.maxsize, loss_on_prompt=False)
    except DatasetError as exc:
        found["template_error"].append(row.row)
        details["template_error"][row.row] = exc.reason
        return
    if not _closes_turns(example, tokenizer, closers):
        found["missing_eos"].append(row.row)
    if tokenized.truncated:
        found["over_max_length"].append(row.row)
        if not has_labels(tokenized):
            found["no_response_within_max"].append(row.row)
    if row.rejected is not None and max_length is not None and has_labels(tokenized):
        rejected = Example(row.turns[:-1] + (Message("assistant", row.rejected),), row.row)
        other = tokenize_example(rejected, tokenizer, max_length=max_length, loss_on_prompt=False)
        if other.labels == tokenized.labels:
            found["identical_within_max"].append(row.row)


def _duplicates(rows: list[_Row], threshold: float, found) -> None:
    first: dict[str, int] = {}
    unique = []
    for row in rows:
        key = _key(row)
        if key in first:
            found["exact_duplicates"].append(row.row)
        else:
            first[key] = row.row
            unique.append(row)
    for group in near_duplicate_groups([r.text for r in unique], threshold=threshold):
        found["near_duplicates"].extend(unique[i].row for i in group[1:])


def _overlap(rows: list[_Row], validation: list[_Row], threshold: float, found) -> None:
    keys = {_key(row) for row in validation}
    exact = {row.row for row in rows if _key(row) in keys}
    groups = near_duplicate_groups([r.text for r in rows] + [r.text for r in validation], threshold=threshold)
    near = {rows[i].row for g in groups if g[-1] >= len(rows) for i in g if i < len(rows)}
    found["validation_overlap"].extend(exact | near)


def _label_problem(row: _Row) -> tuple[str, str] | None:
    if row.label is not None and read_label(row.label) is None:
        return "unreadable_label", f"the label {row.label!r} is neither true nor false"
    return None


def _label_balance(rows: list[_Row]) -> tuple[list[int], tuple[int, int]] | None:
    """(the rows of the more common label, (desirable, undesirable) counts) where one label
    outnumbers the other by more than 4 to 3 with the default weights (the KTO paper's Eq. 8 keeps
    desirable × weight : undesirable × weight between 1 and 4/3)."""
    labelled = [(row.row, read_label(row.label)) for row in rows if row.label is not None]
    desirable = [r for r, good in labelled if good]
    undesirable = [r for r, good in labelled if good is False]
    if not desirable or not undesirable:
        return None
    if len(undesirable) <= len(desirable) <= len(undesirable) * 4 / 3:
        return None
    return max(desirable, undesirable, key=len), (len(desirable), len(undesirable))


def _describe(code: str, rows: list[int], details: dict, tokenizer, max_length, threshold, eos_checked) -> Finding:
    k = len(rows)
    if code == "unbalanced_labels":
        desirable, undesirable = details.pop("counts")
        ratio = undesirable / desirable
        message = (f"{desirable} {'completion is' if desirable == 1 else 'completions are'} labelled desirable and "
                   f"{undesirable} undesirable; KTO works best when desirable × its weight is 1 to 4/3 times "
                   f"undesirable × its weight (KTO paper, Eq. 8): set desirable weight between {ratio:.2f} and "
                   f"{ratio * 4 / 3:.2f}, or undesirable weight between {3 / (4 * ratio):.2f} and {1 / ratio:.2f}")
        return _finding(code, rows, message, {})
    if code == "missing_eos":
        closer = tokenizer.eos_token or "an EOS token"
        if len(rows) == eos_checked:
            message = (f"the base model's chat template never closes the assistant's turn with {closer} or another "
                       f"end-of-turn token, so the model will not learn to stop and will run on to the token "
                       f"limit. Choose a base model (or chat template) that ends turns, or append {closer} to "
                       f"every response")
        else:
            message = (f"{_plural(k)}: the assistant's reply is not followed by {closer} or an end-of-turn token "
                       f"once rendered, so these rows do not teach the model to stop. Check how their replies end, "
                       f"or append {closer} to them")
        return _finding(code, rows, message, details)
    has, is_ = _n(k, "has", "have"), _n(k, "is", "are")
    messages = {
        "empty_row": f"{has} no text; drop them",
        "empty_prompt": f"{has} an empty user turn; fill it in or drop the rows",
        "empty_response": f"{has} an empty assistant reply, which teaches the model to answer with nothing; write "
                          f"the reply or drop the rows",
        "roles_out_of_order": f"{has} turns out of order (an unknown role, a system message after the start, a "
                              f"reply before any user turn, or two user turns in a row); reorder or merge "
                              f"the turns (roles: system, user, assistant) or drop the rows",
        "ends_on_user": f"{_n(k, 'ends', 'end')} on a user turn with no reply to learn; add the assistant's reply, "
                        f"remove the last turn, or drop the rows",
        "template_error": f"the base model's chat template refuses {_plural(k)}; change their turns, drop them, or "
                          f"choose another base model",
        "exact_duplicates": f"{_n(k, 'repeats', 'repeat')} an earlier row (ignoring case and spacing), which makes "
                            f"the model memorise them; drop the copies (the first of each stays)",
        "near_duplicates": f"{_n(k, 'is a near copy', 'are near copies')} of an earlier row (MinHash estimate of "
                           f"word {SHINGLE_WORDS}-gram Jaccard similarity >= {threshold}, {NUM_PERM} permutations, "
                           f"LSH); drop them to keep one of each",
        "validation_overlap": f"{_n(k, 'also appears', 'also appear')} (exactly or nearly, Jaccard >= {threshold}) "
                              f"in the validation set, so validation loss would reward memorising; drop them from "
                              f"training",
        "over_max_length": f"{is_} longer than max length {max_length} tokens and will be cut; raise max length, "
                           f"shorten them, or drop them",
        "no_response_within_max": f"{has} no reply token within max length {max_length}: training skips them; "
                                  f"raise max length or shorten their prompts",
        "empty_rejected": f"{has} an empty rejected reply, so there is nothing to prefer the chosen one to; write "
                          f"the rejected reply or drop the rows",
        "identical_pair": f"{has} the same chosen and rejected reply (ignoring case and spacing), so the pair "
                          f"teaches nothing; fix one of the replies or drop the rows",
        "unreadable_label": f"{has} a label that says neither desirable nor undesirable; write true or false "
                            f"(also 1/0, desirable/undesirable, good/bad) or drop the rows",
        "identical_within_max": f"{has} chosen and rejected replies that differ only after max length {max_length} "
                                f"tokens, so training drops them; raise max length or shorten the prompts",
    }
    return _finding(code, rows, messages[code], details)


def lint_file(path: str | Path, *, name: str | None = None, tokenizer=None, max_length: int | None = None,
              validation_path: str | Path | None = None, validation_name: str | None = None,
              near_threshold: float = NEAR_THRESHOLD, progress: Callable[[int, int], None] | None = None) -> LintReport:
    """``lint`` over a JSONL or CSV file's raw rows; row numbers are the file's (as in DatasetError)."""
    name = name or Path(path).name
    validation = None
    if validation_path is not None:
        validation = list(iter_records(validation_path, validation_name or Path(validation_path).name))
    return lint(list(iter_records(path, name)), tokenizer=tokenizer, max_length=max_length, validation=validation,
                near_threshold=near_threshold, progress=progress)


def drop_rows(rows: list[dict], row_numbers, *, file_rows: list[int] | None = None) -> list[dict]:
    """``rows`` without those numbered in ``row_numbers`` (the one-click fix). Numbers are 1-based
    positions in ``rows``, or, with ``file_rows`` (each row's number in its file, as
    ``records.iter_records`` gives them), file row numbers. An unknown number is refused: it means the
    findings came from another version of the data."""
    numbers = list(file_rows) if file_rows is not None else list(range(1, len(rows) + 1))
    if len(numbers) != len(rows):
        raise ConfigError({"file_rows": f"has {len(numbers)} numbers for {len(rows)} rows; give one per row"})
    drop = set(row_numbers)
    unknown = sorted(drop - set(numbers))
    if unknown:
        raise DatasetError(f"row(s) {', '.join(map(str, unknown[:10]))} are not in this dataset; lint this version "
                           f"again and drop the rows it lists")
    return [row for number, row in zip(numbers, rows) if number not in drop]
