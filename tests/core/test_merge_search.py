"""Evolutionary merge search in the core library (tuning/merge_search.py): the proposer is CMA-ES replayed
from the seed, so a generation depends on the scores before it and nothing else; bad settings are refused
by field; `python -m tuning merge-search` runs a search on the tiny model, keeps the best candidate's model
and deletes the others', and a second run with the same config merges nothing again."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from tuning.__main__ import main
from tuning.errors import ConfigError
from tuning.events import MemorySink
from tuning.merge_search import MergeSearchConfig, propose, recipe
from tuning.merge_search_run import run_merge_search


def perturbed_copy(tiny_model: Path, dest: Path, *, scale: float, seed: int) -> Path:
    """A "fine-tune" of the tiny model: every weight moved by seeded noise of ``scale``."""
    shutil.copytree(tiny_model, dest)
    generator = torch.Generator().manual_seed(seed)
    tensors = {name: tensor + scale * torch.randn(tensor.shape, generator=generator)
               for name, tensor in load_file(dest / "model.safetensors").items()}
    save_file(tensors, dest / "model.safetensors", metadata={"format": "pt"})
    return dest


def settings(tiny_model, sources, data, out, **extra) -> dict:
    return {"method": "task_arithmetic", "sources": [str(s) for s in sources], "base_model": str(tiny_model),
            "search": {"weight.0": [0.0, 1.0], "weight.1": [0.0, 1.0]}, "dataset_path": str(data),
            "evaluate": {"task": "sft", "max_rows": 4, "generate_rows": 0}, "metric": "eval_loss",
            "budget": 4, "population": 2, "seed": 3, "output_dir": str(out), **extra}


def test_a_generation_is_a_function_of_the_seed_and_the_scores_before_it(tiny_model, tmp_path):
    config = MergeSearchConfig.from_dict(settings(tiny_model, ["a", "b"], "data.jsonl", tmp_path,
                                                  search={"weight.0": [0.0, 1.0], "scaling": [0.5, 2.0]},
                                                  budget=6, population=3))
    first = propose(config, [])
    assert first == propose(config, []) and len(first) == 3
    for candidate in first:  # within the ranges, in a fixed order: weights first
        assert list(candidate) == ["weight.0", "scaling"]
        assert 0 <= candidate["weight.0"] <= 1 and 0.5 <= candidate["scaling"] <= 2
    after = propose(config, [[1.0, 2.0, 3.0]])
    assert after == propose(config, [[1.0, 2.0, 3.0]]) and len(after) == 3
    assert after != propose(config, [[3.0, 2.0, 1.0]])  # the scores steer the next generation
    assert propose(dict_replace(config, seed=4), []) != first
    # the last generation is cut to the budget; a failed candidate (None) ranks last rather than stopping it
    assert len(propose(dict_replace(config, budget=5), [[1.0, None, 3.0]])) == 2
    # a searched coefficient replaces the source's weight or the method's setting in the recipe
    assert recipe(config, first[0]) == {"method": "task_arithmetic", "weights": [first[0]["weight.0"], 1.0],
                                        "method_params": {"scaling": first[0]["scaling"]}}


def dict_replace(config, **changes):
    import dataclasses

    return dataclasses.replace(config, **changes)


@pytest.mark.parametrize("change, field", [
    ({"sources": ["only-one"]}, "sources"),
    ({"search": {"weight.2": [0, 1]}}, "search.weight.2"),
    ({"search": {"weight.0": [1, 0]}}, "search.weight.0"),
    ({"search": {"density": [0.1, 0.5]}}, "search.density"),  # task arithmetic has no density
    ({"method": "ties", "search": {"density": [0.1, 1.5]}}, "search.density"),
    ({"method": "slerp"}, "method"),
    ({"metric": "accuracy"}, "metric"),  # an sft evaluation reports no accuracy
    ({"metric": "exact_match"}, "metric"),  # no answers generated
    ({"population": 5}, "population"),  # more than the budget
    ({"budget": 1}, "budget"),
    ({"evaluate": {"task": "sft", "harness": "named_tasks"}}, "evaluate.harness"),
    ({"evaluate": {"max_rowz": 4}}, "evaluate.max_rowz"),
    ({"method_params": {"scaling": 50}}, "method_params.scaling"),
])
def test_bad_settings_are_refused_naming_the_field(tiny_model, tmp_path, change, field):
    with pytest.raises(ConfigError) as refused:
        MergeSearchConfig.from_dict({**settings(tiny_model, ["a", "b"], "data.jsonl", tmp_path), **change})
    assert field in refused.value.errors, refused.value.errors


def test_the_cli_search_keeps_the_best_and_a_second_run_merges_nothing_again(tiny_model, memorisable_jsonl,
                                                                             tmp_path):
    sources = [perturbed_copy(tiny_model, tmp_path / "near", scale=0.01, seed=1),
               perturbed_copy(tiny_model, tmp_path / "far", scale=0.5, seed=2)]
    config_path = tmp_path / "search.yaml"
    out = tmp_path / "search"
    import yaml

    one_generation = {"budget": 2}  # the studio's test runs two generations; here one keeps the suite short
    config_path.write_text(yaml.safe_dump(settings(tiny_model, sources, memorisable_jsonl, out, **one_generation)))
    assert main(["merge-search", str(config_path)]) == 0

    record = json.loads((out / "search.json").read_text())
    scores = [c["score"] for c in record["candidates"]]
    assert len(scores) == 2 and all(isinstance(s, float) for s in scores) and scores[0] != scores[1]
    best = record["best_index"]
    assert scores[best] == min(scores)  # eval_loss: lower is better
    assert record["best_recipe"]["weights"] == [record["candidates"][best]["coefficients"]["weight.0"],
                                                record["candidates"][best]["coefficients"]["weight.1"]]
    kept = [p.name for p in out.iterdir() if p.is_dir()]
    assert kept == [f"candidate-{best}"] and (out / kept[0] / "model" / "model.safetensors").exists()

    sink = MemorySink()  # the same search again: every candidate comes from the record
    again = run_merge_search(MergeSearchConfig.from_dict(settings(tiny_model, sources, memorisable_jsonl, out,
                                                                  **one_generation)), sink)
    assert again.best_index == best and [c["score"] for c in again.candidates] == scores
    merged = [e for e in sink.events if e.kind == "log" and "merging" in e.message]
    assert merged == [] and sum("scored by an earlier run" in e.message for e in sink.events if e.kind == "log") == 2
    assert [e.index for e in sink.events if e.kind == "candidate"] == [0, 1]
