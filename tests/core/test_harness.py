"""lm-evaluation-harness on a dataset version: the task the studio generates
from the column mapping scores exactly as the harness itself scores an
equivalent hand-written task, run directly with its own model loading."""

import json

import pytest
import yaml

from tuning.errors import ConfigError, TuningError
from tuning.events import MemorySink
from tuning.harness_tasks import harness_rows
from tuning.scoring import EvaluateConfig, run_evaluate

ROWS = 24


@pytest.fixture(autouse=True)
def datasets_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets-cache"))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")  # the json builder ships with datasets: nothing to fetch


@pytest.fixture(scope="module")
def lora_adapter(tiny_model, tmp_path_factory):
    """A LoRA adapter with random (non-zero) weights, so the artifact and its base score differently."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model),
                           LoraConfig(r=4, lora_alpha=32, target_modules=["q_proj", "v_proj"],
                                      init_lora_weights=False))
    out = tmp_path_factory.mktemp("harness-adapter")
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def mc_file(tmp_path_factory):
    """Multiple choice with letter answers and the user's own column names (the keys are set per test)."""
    path = tmp_path_factory.mktemp("harness-mc") / "quiz.jsonl"
    _write_quiz(path, ["A"] * ROWS)
    return path


WORDS = ("apple river stone cloud music paper orange garden window silver candle forest tiger bread ocean pencil "
         "mirror rocket castle violin").split()


def _write_quiz(path, keys):
    rows = [{"prompt": f"Which word is number {i}?", "options": [WORDS[(i * 3 + c * 7) % len(WORDS)] for c in range(4)],
             "key": key} for i, key in enumerate(keys)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def _direct(tmp_path, definition: dict, **model_args) -> dict:
    """The harness on a hand-written task, loading the model itself (as `lm_eval --model hf` does)."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    folder = tmp_path / f"direct-{definition['task']}"
    folder.mkdir(parents=True)
    (folder / "task.yaml").write_text(yaml.safe_dump(definition))
    return lm_eval.simple_evaluate(model="hf", model_args={**model_args, "device": "cpu"}, tasks=[definition["task"]],
                                   task_manager=TaskManager(include_path=str(folder), include_defaults=False),
                                   batch_size=4, log_samples=True)


def _studio(dataset, artifact, **settings) -> tuple[list, MemorySink]:
    sink = MemorySink()
    config = EvaluateConfig.from_dict({"artifact_path": str(artifact), "dataset_path": str(dataset), "batch_size": 4,
                                       **settings})
    result = run_evaluate(config, sink)
    assert result.status == "succeeded"
    return result.metrics["harness"], sink


def test_multiple_choice_task_scores_as_the_hand_written_task(tmp_path, tiny_model, lora_adapter):
    quiz = tmp_path / "quiz.jsonl"
    _write_quiz(quiz, ["A"] * ROWS)
    hand_written = {"task": "quiz_by_hand", "dataset_path": "json", "test_split": "train",
                    "dataset_kwargs": {"data_files": str(quiz)}, "output_type": "multiple_choice",
                    "doc_to_text": "Question: {{prompt}}\nAnswer:", "doc_to_choice": "{{options}}",
                    "doc_to_target": "{{['A', 'B', 'C', 'D'].index(key)}}",
                    "metric_list": [{"metric": "acc"}, {"metric": "acc_norm"}]}
    # The right answers are the base model's own picks, so the base scores 1 and the adapter, which moves the
    # model, less: the two sides cannot agree by chance.
    samples = _direct(tmp_path / "picks", hand_written, pretrained=str(tiny_model))["samples"]["quiz_by_hand"]
    picks = {s["doc_id"]: max(range(4), key=lambda c: s["filtered_resps"][c][0]) for s in samples}
    _write_quiz(quiz, ["ABCD"[picks[i]] for i in range(ROWS)])

    scores, sink = _studio(quiz, lora_adapter, base_model=str(tiny_model), harness="multiple_choice",
                           question_column="prompt", choices_column="options", answer_column="key")
    by_side = {row["side"]: row for row in scores}
    assert set(by_side) == {"artifact", "base"} and by_side["artifact"]["n"] == ROWS
    assert by_side["base"]["metrics"]["acc"] == 1.0 and by_side["artifact"]["metrics"]["acc"] < 1.0
    for side, model_args in (("artifact", {"pretrained": str(tiny_model), "peft": str(lora_adapter)}),
                             ("base", {"pretrained": str(tiny_model)})):
        direct = _direct(tmp_path / side, hand_written, **model_args)["results"]["quiz_by_hand"]
        for metric in ("acc", "acc_norm"):
            assert by_side[side]["metrics"][metric] == pytest.approx(direct[f"{metric},none"], abs=1e-6), side
            assert by_side[side]["stderr"][metric] == pytest.approx(direct[f"{metric}_stderr,none"], abs=1e-6)

    progress = sink.of_kind("progress")
    assert {event.phase for event in progress} == {"studio_quiz · artifact", "studio_quiz · base"}
    assert progress[-1].done == progress[-1].total == ROWS * 4  # one loglikelihood request per choice
    harness_events = sink.of_kind("harness")
    assert len(harness_events) == 1 and harness_events[0].results == scores


def test_generate_until_exact_match(tmp_path, tiny_model):
    """Half the expected answers are what the model answers (in another case), half are not: exact match 0.5."""
    questions = [f"Name a word for {i}." for i in range(8)]
    source = tmp_path / "questions.jsonl"
    source.write_text("".join(json.dumps({"q": q}) + "\n" for q in questions))
    hand_written = {"task": "gen_by_hand", "dataset_path": "json", "test_split": "train",
                    "dataset_kwargs": {"data_files": str(source)}, "output_type": "generate_until",
                    "doc_to_text": "Question: {{q}}\nAnswer:", "doc_to_target": "", "target_delimiter": " ",
                    "generation_kwargs": {"until": ["\n"], "do_sample": False, "max_gen_toks": 8},
                    "metric_list": [{"metric": "exact_match"}]}
    samples = _direct(tmp_path, hand_written, pretrained=str(tiny_model))["samples"]["gen_by_hand"]
    replies = {sample["doc"]["q"]: sample["resps"][0][0].strip() for sample in samples}

    dataset = tmp_path / "answers.jsonl"
    dataset.write_text("".join(json.dumps({"q": q, "a": replies[q].upper() if i % 2 == 0 else "not the reply"}) + "\n"
                               for i, q in enumerate(questions)))
    scores, _ = _studio(dataset, tiny_model, harness="generate_until", question_column="q", answer_column="a",
                        max_new_tokens=8, skip_base=True)
    assert [(row["side"], row["n"]) for row in scores] == [("artifact", 8)]
    assert scores[0]["metrics"]["exact_match"] == 0.5
    assert scores[0]["stderr"]["exact_match"] == pytest.approx((0.25 / 7) ** 0.5, abs=1e-6)  # sample stderr of a mean


def test_regex_extraction_pulls_the_answer_out_of_the_reply(tmp_path, tiny_model):
    """With a regex, the reply's captured group is compared: a group that captures nothing-but-the-fallback
    text never matches, one that captures the whole line always does."""
    dataset = tmp_path / "answers.jsonl"
    dataset.write_text("".join(json.dumps({"q": f"Say {i}.", "a": "[invalid]"}) + "\n" for i in range(4)))
    scores, _ = _studio(dataset, tiny_model, harness="generate_until", question_column="q", answer_column="a",
                        answer_regex="(NEVER-IN-A-REPLY)", max_new_tokens=4, skip_base=True)
    assert scores[0]["metrics"]["exact_match"] == 1.0  # no reply matches: each gives the harness's fallback


def _config(path, **settings):
    return EvaluateConfig.from_dict({"artifact_path": "unused", "dataset_path": str(path), **settings})


def test_the_generated_task_keeps_its_cache_in_its_own_folder(tmp_path, mc_file):
    from tuning.harness_tasks import write_task

    _write_quiz(mc_file, ["A"] * ROWS)
    name = write_task(_config(mc_file, harness="multiple_choice", question_column="prompt",
                              choices_column="options", answer_column="key"), tmp_path)
    definition = yaml.safe_load((tmp_path / f"{name}.yaml").read_text())
    assert definition["dataset_kwargs"]["cache_dir"] == str(tmp_path / "datasets-cache")
    assert len((tmp_path / f"{name}.jsonl").read_text().splitlines()) == ROWS


def test_mapping_refusals_name_the_setting(mc_file):
    _write_quiz(mc_file, ["A", "d", 2, "0"])
    mc = {"harness": "multiple_choice", "question_column": "prompt", "choices_column": "options",
          "answer_column": "key"}
    assert [row["answer"] for row in harness_rows(_config(mc_file, **mc))] == [0, 3, 2, 0]
    with pytest.raises(ConfigError) as missing:
        harness_rows(_config(mc_file, **{**mc, "question_column": "question"}))
    assert "question_column" in missing.value.errors and "'question'" in str(missing.value)
    with pytest.raises(ConfigError) as choices:
        harness_rows(_config(mc_file, **{**mc, "choices_column": "A,B"}))
    assert "choices_column" in choices.value.errors
    out_of_range = mc_file.with_name("bad.jsonl")
    out_of_range.write_text(json.dumps({"prompt": "p", "options": ["x", "y"], "key": 2}) + "\n")
    with pytest.raises(ConfigError) as bad:
        harness_rows(_config(out_of_range, **mc))
    assert "answer_column" in bad.value.errors and "row 1" in str(bad.value) and "out of range" in str(bad.value)
    with pytest.raises(ConfigError) as regex:
        harness_rows(_config(mc_file, harness="generate_until", question_column="prompt", answer_column="key",
                             answer_regex="(unclosed"))
    assert "answer_regex" in regex.value.errors


def test_named_tasks_are_refused_offline(tiny_model, mc_file):
    with pytest.raises(TuningError, match="no network .*HF_DATASETS_OFFLINE is set"):
        run_evaluate(_config(mc_file, artifact_path=str(tiny_model), harness="named_tasks",
                             harness_tasks="hellaswag"), MemorySink())


class StopAfterFirstBatch(MemorySink):
    def should_stop(self) -> bool:
        return len(self.of_kind("progress")) >= 2  # the run's start, then one batch done


def test_a_cancel_stops_between_two_batches(tiny_model, mc_file):
    _write_quiz(mc_file, ["A"] * ROWS)
    sink = StopAfterFirstBatch()
    result = run_evaluate(_config(mc_file, artifact_path=str(tiny_model), harness="multiple_choice",
                                  question_column="prompt", choices_column="options", answer_column="key",
                                  batch_size=4), sink)
    assert result.status == "cancelled" and result.metrics == {"harness": []}
    assert not sink.of_kind("harness") and sink.of_kind("progress")[-1].done < ROWS * 4
