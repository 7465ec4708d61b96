"""One run over two CPU processes (torchrun, gloo) is the run of one process
on the same global batches: the same loss at every step, for LoRA and for
full fine-tuning (with LLRD's parameter groups, recomputed activations,
packed or padded rows and the fused loss, under DDP and FSDP2). Rank 0
alone reports and writes; a cancel stops both ranks at the same step with
a whole checkpoint; a rank killed mid-run stops the group, torchrun
restarts it, and the run resumes from its last checkpoint.

Each test launches the ranks exactly as the worker does
(``tuning.distributed.launch_command``), reading rank 0's events file."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from tuning.__main__ import main as tuning_cli
from tuning.config import TrainConfig, config_to_dict
from tuning.distributed import launch_command
from tuning.ranks import Ranks, check_distributed
from tuning.errors import ConfigError
from tuning.events import MemorySink
from tuning.methods import METHODS
from tuning.train import run_train

REPO = Path(__file__).resolve().parents[2]
RANK_TIMEOUT_S = 600


def config(tiny_model, data, out, **overrides) -> TrainConfig:
    return TrainConfig.from_dict({
        "base_model": str(tiny_model), "dataset_path": str(data), "output_dir": str(out), "max_steps": 3,
        "batch_size": 4, "learning_rate": 0.02, "warmup_ratio": 0.0, "precision": "fp32", "save_every": 1000,
        "method_params": {"rank": 8, "alpha": 16, "dropout": 0.0}, **overrides})


def _launch(config: TrainConfig, tmp_path: Path, *, stop: bool = False, **popen) -> tuple[subprocess.Popen, Path]:
    config_file, events, stop_file = tmp_path / "config.json", tmp_path / "events.jsonl", tmp_path / "stop"
    config_file.write_text(json.dumps(config_to_dict(config)))
    if stop:
        stop_file.touch()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(launch_command(devices=config.devices, config_file=config_file, events=events,
                                           stop_file=stop_file),
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **popen)
    return proc, events


def _finish(proc: subprocess.Popen) -> str:
    output = proc.communicate(timeout=RANK_TIMEOUT_S)[0].decode(errors="replace")
    assert proc.returncode == 0, output[-4000:]
    return output


def _lines(events: Path) -> list[dict]:
    return [json.loads(line) for line in events.read_text().splitlines() if line.strip()]


def _of_kind(lines: list[dict], kind: str) -> list[dict]:
    return [line["data"] for line in lines if line.get("kind") == kind]


def test_a_shard_is_a_contiguous_part_and_the_shards_cover_the_batch():
    rows = list(range(7))
    shards = [Ranks(rank=r, world_size=3).shard(rows) for r in range(3)]
    assert shards == [[0, 1, 2], [3, 4], [5, 6]]
    assert Ranks().shard(rows) == rows


def test_what_several_devices_cannot_do_yet_is_refused_naming_the_field(tiny_model, memorisable_jsonl, tmp_path):
    base = config(tiny_model, memorisable_jsonl, tmp_path, devices=2)
    check_distributed(base, METHODS["lora"])  # LoRA on chat data: fine
    with pytest.raises(ConfigError) as small:
        check_distributed(replace(base, batch_size=1), METHODS["lora"])
    assert "batch_size" in small.value.errors
    with pytest.raises(ConfigError) as preference:
        check_distributed(replace(base, task="preference"), METHODS["lora"])
    assert "preference" in preference.value.errors["devices"]
    with pytest.raises(ConfigError) as adalora:
        check_distributed(base, METHODS["adalora"])
    assert "AdaLoRA" in adalora.value.errors["devices"]


FULL = {"method": "full", "method_params": {}, "learning_rate": 1e-3}
LLRD = {**FULL, "method": "llrd"}
# What the log says of the fused loss and of packed batches (tuning/train_model.py).
FUSED, PACKED = "Loss computed with the output head, a chunk of tokens at a time", "Packing rows end to end"


@pytest.mark.slow
@pytest.mark.parametrize("method, sharding, settings", [
    ("lora", "auto", {}),
    # Full fine-tuning with LLRD's parameter groups (one learning rate per depth) and activations recomputed in
    # the backward pass: under DDP on padded rows, under FSDP2 on packed ones.
    ("llrd", "ddp", {"gradient_checkpointing": True, "packing": False}),
    ("llrd", "fsdp", {"gradient_checkpointing": True}),
], ids=["lora-ddp", "llrd-recompute-padded-ddp", "llrd-recompute-fsdp"])
def test_two_ranks_take_the_steps_of_one_process(method, sharding, settings, tiny_model, memorisable_jsonl, tmp_path):
    """Each way of holding the model (DDP, FSDP2), with the fused loss (under FSDP2 a forward method of the
    sharded root), packed or padded rows, recomputed activations and LLRD's parameter groups, takes the steps
    one process takes on the same global batches."""
    one = config(tiny_model, memorisable_jsonl, tmp_path / "one", save_every=2,
                 **{**(LLRD if method == "llrd" else {}), **settings})
    sink = MemorySink()
    alone = run_train(one, sink)
    proc, events = _launch(replace(one, devices=2, sharding=sharding, output_dir=str(tmp_path / "two")), tmp_path)
    _finish(proc)
    lines = _lines(events)
    logs = [line["message"] for line in _of_kind(lines, "log")]
    sharded_log = [message for message in logs if "Fully sharded (FSDP2)" in message]
    assert len(sharded_log) == (sharding == "fsdp"), "FSDP2 where asked for, DDP otherwise"
    assert any(FUSED in message for message in logs), logs
    assert any(PACKED in message for message in logs) == settings.get("packing", True), logs

    metrics = _of_kind(lines, "metrics")
    assert [m["step"] for m in metrics] == [1, 2, 3], "each step once: rank 0 alone reports"
    torch.testing.assert_close(torch.tensor([m["loss"] for m in metrics]),
                               torch.tensor([event.loss for event in sink.of_kind("metrics")]), rtol=2e-4, atol=2e-5)
    # The whole global batch's tokens are counted, not rank 0's share.
    assert [m["tokens_seen"] for m in metrics] == [event.tokens_seen for event in sink.of_kind("metrics")]
    assert len(_of_kind(lines, "artifact")) == 1
    # The output rank 0 wrote holds the weights one process reaches.
    produced = METHODS[method].produces
    from safetensors.torch import load_file

    name = "adapter_model.safetensors" if produced == "adapter" else "model.safetensors"
    theirs, ours = load_file(tmp_path / "two" / produced / name), load_file(Path(alone.output_path) / name)
    assert theirs.keys() == ours.keys()
    for key in ours:
        torch.testing.assert_close(theirs[key], ours[key], rtol=1e-3, atol=1e-5)
    if sharding == "fsdp":
        _check_sharded_checkpoint_and_output(tmp_path / "two", Path(alone.output_path).parent)


def _check_sharded_checkpoint_and_output(two: Path, one: Path) -> None:
    """The FSDP2 run's step-2 checkpoint is DCP shards, which consolidate into the weights one process
    checkpointed at step 2; its output loads in one process with stock transformers and answers as
    the one-process output does."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    checkpoint = two / "checkpoints" / "step-0000002"
    assert sorted(p.name for p in (checkpoint / "sharded").glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    assert not (checkpoint / "model.safetensors").exists(), "the run writes shards, not a whole model"
    assert tuning_cli(["consolidate", str(checkpoint), str(two / "consolidated")]) == 0
    consolidated = load_file(two / "consolidated" / "model.safetensors")
    alone = load_file(one / "checkpoints" / "step-0000002" / "model.safetensors")
    assert alone.keys() <= consolidated.keys()
    for key in alone:
        torch.testing.assert_close(consolidated[key], alone[key], rtol=1e-3, atol=1e-5)
    ids = torch.arange(3, 40)[None]
    with torch.no_grad():
        logits = [AutoModelForCausalLM.from_pretrained(path).eval()(ids).logits
                  for path in (two / "model", one / "model", two / "consolidated")]
    torch.testing.assert_close(logits[0], logits[1], rtol=1e-3, atol=1e-4)
    assert logits[2].shape == logits[1].shape


@pytest.mark.slow
def test_a_stop_request_stops_both_ranks_at_the_same_step_with_a_checkpoint(tiny_model, memorisable_jsonl, tmp_path):
    proc, events = _launch(config(tiny_model, memorisable_jsonl, tmp_path / "out", devices=2, max_steps=50),
                           tmp_path, stop=True)
    _finish(proc)  # both ranks ended: had one waited for the other at a collective, this would time out
    lines = _lines(events)
    assert [m["step"] for m in _of_kind(lines, "metrics")] == [1]
    assert [c["step"] for c in _of_kind(lines, "checkpoint")] == [1]
    assert (tmp_path / "out" / "checkpoints" / "step-0000001" / "adapter_model.safetensors").exists()
    assert not _of_kind(lines, "artifact")


@pytest.mark.slow
def test_a_stopped_fsdp_run_resumes_from_its_shards_in_one_process(tiny_model, memorisable_jsonl, tmp_path):
    """A cancel stops both FSDP2 ranks at one step with a sharded checkpoint; DCP reads it back onto a
    different device count (here one process), which then takes the steps an uninterrupted run takes.
    Evaluating and answering the golden prompts, whose forward passes every rank runs, work sharded."""
    run = config(tiny_model, memorisable_jsonl, tmp_path / "out", devices=2, max_steps=50, scheduler="constant",
                 validation_ratio=0.25, eval_every=1, golden_prompts=["Greet me."], golden_max_new_tokens=4, **FULL)
    proc, events = _launch(run, tmp_path, stop=True)
    _finish(proc)
    lines = _lines(events)
    assert [s["step"] for s in _of_kind(lines, "samples")] == [0], "answered once, before the first step"
    assert [e["step"] for e in _of_kind(lines, "eval")] == [1]
    assert (tmp_path / "out" / "checkpoints" / "best" / "sharded" / ".metadata").exists()
    assert [m["step"] for m in _of_kind(lines, "metrics")] == [1]
    assert [c["step"] for c in _of_kind(lines, "checkpoint")] == [1]
    assert not _of_kind(lines, "artifact")
    checkpoint = tmp_path / "out" / "checkpoints" / "step-0000001"
    assert (checkpoint / "sharded" / ".metadata").exists()

    resumed_sink, uninterrupted_sink = MemorySink(), MemorySink()
    run_train(replace(run, devices=1, max_steps=3, resume_from=str(checkpoint)), resumed_sink)
    run_train(replace(run, devices=1, max_steps=3, output_dir=str(tmp_path / "whole")), uninterrupted_sink)
    resumed, whole = resumed_sink.of_kind("metrics"), uninterrupted_sink.of_kind("metrics")
    assert [m.step for m in resumed] == [2, 3]
    torch.testing.assert_close(torch.tensor([m.loss for m in resumed]), torch.tensor([m.loss for m in whole[1:]]),
                               rtol=2e-4, atol=2e-5)


def _rank_pids(parent: int) -> dict[int, int]:
    """{rank: pid} of the rank processes under a torchrun process."""
    import psutil

    found = {}
    for child in psutil.Process(parent).children(recursive=True):
        try:
            rank = child.environ().get("RANK")
        except (psutil.Error, OSError):
            continue
        if rank is not None and "tuning.distributed" in " ".join(child.cmdline()):
            found[int(rank)] = child.pid
    return found


@pytest.mark.slow
@pytest.mark.parametrize("method", ["lora", "full"])  # DDP, and FSDP2 (auto's choice for full fine-tuning)
def test_a_killed_rank_stops_the_group_which_resumes_from_its_last_checkpoint(method, tiny_model, memorisable_jsonl,
                                                                                tmp_path):
    # A full fine-tune's step is slower: fewer of them still leave the kill landing mid-run.
    run = config(tiny_model, memorisable_jsonl, tmp_path / "out", devices=2, save_every=3,
                 **({**FULL, "max_steps": 30} if method == "full" else {"max_steps": 60}))
    proc, events = _launch(run, tmp_path)
    deadline = time.monotonic() + RANK_TIMEOUT_S
    while not (events.exists() and _of_kind(_lines(events), "checkpoint")):
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended before its first checkpoint"
        time.sleep(0.05)
    os.kill(_rank_pids(proc.pid)[1], signal.SIGKILL)
    _finish(proc)

    lines = _lines(events)
    marks = [n for n, line in enumerate(lines) if "resumed_after_step" in line]
    assert len(marks) == 1, "torchrun restarted the group once"
    resumed_after = lines[marks[0]]["resumed_after_step"]
    assert resumed_after >= 3 and resumed_after % 3 == 0
    after = [m["step"] for m in _of_kind(lines[marks[0]:], "metrics")]
    assert after == list(range(resumed_after + 1, run.max_steps + 1)), "the restarted group goes on from the checkpoint"
    before = [m["step"] for m in _of_kind(lines[:marks[0]], "metrics")]
    assert before[:resumed_after] == list(range(1, resumed_after + 1))
    assert len(_of_kind(lines, "artifact")) == 1
    # The resume is exact: a step the lost attempt took after its checkpoint has the same loss when redone.
    lost = {m["step"]: m["loss"] for m in _of_kind(lines[:marks[0]], "metrics") if m["step"] > resumed_after}
    redone = {m["step"]: m["loss"] for m in _of_kind(lines[marks[0]:], "metrics") if m["step"] in lost}
    assert redone.keys() == lost.keys()
    for step in lost:
        assert redone[step] == pytest.approx(lost[step], rel=1e-4, abs=1e-5), step
