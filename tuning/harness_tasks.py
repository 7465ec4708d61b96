"""A dataset version as an lm-evaluation-harness task: the rows read through
the studio's own readers (any uploaded format), the user's column mapping
applied and checked, written as JSON lines beside a task definition (YAML)
that the harness loads with ``dataset_path: json``. Prompting, scoring and
standard errors are then the harness's own.

Pure Python (no torch, no lm_eval): the web side calls ``harness_rows`` to
refuse a bad mapping when the job is created, naming the setting; the worker
calls ``write_task`` with the same checks.
"""

from __future__ import annotations

import json
import re
import string
from pathlib import Path

from tuning.errors import ConfigError, DatasetError

HARNESS_MODES = ("off", "multiple_choice", "generate_until", "named_tasks")
# The generated task's prompt, the harness's own convention for question answering (arc, sciq, …).
PROMPT = "Question: {{question}}\nAnswer:"
TASK_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
LETTERS = string.ascii_uppercase


def named_tasks(config) -> list[str]:
    """The harness tasks a ``named_tasks`` run names, in order, or ConfigError."""
    names = [name.strip() for name in config.harness_tasks.split(",") if name.strip()]
    if not names:
        raise ConfigError({"harness_tasks": "name at least one lm-evaluation-harness task, e.g. hellaswag"})
    bad = [name for name in names if not TASK_NAME_PATTERN.match(name)]
    if bad:
        raise ConfigError({"harness_tasks": f"not a task name: {', '.join(bad)} (letters, digits, _ . - only)"})
    return names


def _choice_columns(config) -> list[str]:
    return [column.strip() for column in config.choices_column.split(",") if column.strip()]


def _missing(setting: str, column: str, record: dict, row: int, file: str) -> ConfigError:
    found = ", ".join(sorted(record)) or "none"
    return ConfigError({setting: f"column '{column}' is not in {file} (row {row} has columns: {found})"})


def _choices(config, record: dict, row: int, file: str) -> list[str]:
    columns = _choice_columns(config)
    if not columns:
        raise ConfigError({"choices_column": "name the column holding the choices (a list), or several "
                                             "columns separated by commas, e.g. A,B,C,D"})
    for column in columns:
        if column not in record:
            raise _missing("choices_column", column, record, row, file)
    if len(columns) > 1:
        choices = [record[column] for column in columns]
    else:
        choices = record[columns[0]]
        if isinstance(choices, str) and choices.strip().startswith("["):  # a list written into a CSV cell
            try:
                choices = json.loads(choices)
            except ValueError:
                pass
    if not isinstance(choices, list) or len(choices) < 2:
        raise ConfigError({"choices_column": f"{file} row {row}: '{columns[0]}' must hold a list of at least "
                                             f"two choices (or name one column per choice, e.g. A,B,C,D)"})
    return [str(choice).strip() for choice in choices]


def _answer_index(value, choices: list[str], row: int, file: str) -> int:
    """A 0-based index, a letter (A = the first choice) or a choice's text, as an index into ``choices``."""
    text = str(value).strip()
    if isinstance(value, bool):
        index = None
    elif isinstance(value, int) or text.isdigit():
        index = int(text)
    elif len(text) == 1 and text.upper() in LETTERS:
        index = LETTERS.index(text.upper())
    elif text in choices:
        index = choices.index(text)
    else:
        index = None
    if index is None or not 0 <= index < len(choices):
        last = len(choices) - 1
        raise ConfigError({"answer_column": f"{file} row {row}: answer {text!r} is out of range for "
                                            f"{len(choices)} choices (0–{last}, A–{LETTERS[last]}, "
                                            f"or one of the choices' texts)"})
    return index


def harness_rows(config) -> list[dict]:
    """The first ``max_rows`` rows of ``config.dataset_path`` as the generated
    task reads them: {question, choices, answer index} for multiple choice,
    {question, answer} for generate-until. ConfigError names the setting."""
    from tuning.data.records import iter_records

    name = config.dataset_name or Path(config.dataset_path).name
    if config.harness == "generate_until" and config.answer_regex:
        try:
            if re.compile(config.answer_regex).groups > 1:
                raise ConfigError({"answer_regex": "use at most one group: the answer is what it captures"})
        except re.error as exc:
            raise ConfigError({"answer_regex": f"not a regular expression: {exc}"}) from None
    rows = []
    try:
        for row, record in iter_records(config.dataset_path, name):
            if len(rows) >= config.max_rows:
                break
            if config.question_column not in record:
                raise _missing("question_column", config.question_column, record, row, name)
            if config.answer_column not in record:
                raise _missing("answer_column", config.answer_column, record, row, name)
            question = str(record[config.question_column]).strip()
            if config.harness == "multiple_choice":
                choices = _choices(config, record, row, name)
                rows.append({"question": question, "choices": choices,
                             "answer": _answer_index(record[config.answer_column], choices, row, name)})
            else:
                rows.append({"question": question, "answer": str(record[config.answer_column]).strip()})
    except DatasetError as exc:
        raise ConfigError({"dataset": str(exc)}) from None
    if not rows:
        raise ConfigError({"dataset": f"{name} has no rows"})
    return rows


def task_definition(config, *, task: str, data_file: str | Path) -> dict:
    """The harness task (its YAML keys) for rows written by ``write_task``."""
    definition = {
        "task": task,
        "dataset_path": "json",
        # datasets' Arrow cache of the rows goes beside them, in the run's temporary folder: under the
        # user's cache every run (a new temporary path) would leave a copy behind.
        "dataset_kwargs": {"data_files": {"test": str(data_file)},
                           "cache_dir": str(Path(data_file).parent / "datasets-cache")},
        "test_split": "test",
        "output_type": config.harness,
        "doc_to_text": PROMPT,
        "doc_to_target": "answer",
        "num_fewshot": config.num_fewshot,
        "metadata": {"version": 1},
    }
    if config.num_fewshot:  # examples drawn from the same rows; the harness leaves the row itself out
        definition["fewshot_split"] = "test"
    if config.harness == "multiple_choice":
        definition["doc_to_choice"] = "choices"
        definition["target_delimiter"] = " "
        definition["metric_list"] = [{"metric": "acc", "aggregation": "mean", "higher_is_better": True},
                                     {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True}]
        return definition
    # Generate-until: an answer on one line stops at the line's end; an answer pulled out of a longer
    # reply by a regex (e.g. "#### (\d+)") stops at the next question or a blank line.
    definition["target_delimiter"] = " "
    definition["generation_kwargs"] = {
        "until": ["\n\n", "Question:"] if config.answer_regex else ["\n"],
        "do_sample": False, "max_gen_toks": config.max_new_tokens}
    steps = [{"function": "regex", "regex_pattern": config.answer_regex, "group_select": 0}] \
        if config.answer_regex else []
    definition["filter_list"] = [{"name": "answer", "filter": [*steps, {"function": "remove_whitespace"},
                                                               {"function": "take_first"}]}]
    definition["metric_list"] = [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True,
                                  "ignore_case": True, "ignore_punctuation": False}]
    return definition


def task_name(config) -> str:
    """A task name from the dataset's name: letters, digits and underscores."""
    stem = Path(config.dataset_name or Path(config.dataset_path).name).stem
    return "studio_" + (re.sub(r"[^A-Za-z0-9]+", "_", stem).strip("_").lower() or "dataset")


def write_task(config, directory: str | Path) -> str:
    """Write the rows and the task definition into ``directory`` (a folder the
    harness's TaskManager is pointed at); returns the task's name."""
    import yaml

    directory = Path(directory)
    name = task_name(config)
    data_file = directory / f"{name}.jsonl"
    with open(data_file, "w", encoding="utf-8") as handle:
        for row in harness_rows(config):
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    definition = task_definition(config, task=name, data_file=data_file)
    (directory / f"{name}.yaml").write_text(yaml.safe_dump(definition, sort_keys=False, allow_unicode=True))
    return name


def check_harness_settings(config) -> None:
    """What can be refused before a worker starts: the mapping against the
    file for a generated task, the names' shape for named tasks."""
    if config.harness == "named_tasks":
        named_tasks(config)
    elif config.harness in ("multiple_choice", "generate_until"):
        harness_rows(config)
