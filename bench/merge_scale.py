"""Merging at scale: two synthetic 1.1B-parameter fine-tunes of one base, the studio against mergekit.

    .venv/bin/python bench/merge_scale.py [--layers 22] [--vocab 32000] [--methods task_arithmetic,ties] [--rounds 1]
                                          [--mergekit-python /tmp/mk/bin/python] [--keep DIR]

The models have TinyLlama-1.1B's shape (vocab 32000, hidden 2048, MLP 5632,
22 layers, 4 key/value heads, an untied head) in bf16, random weights: a
base, and two fine-tunes = base + a change both share + each its own (so
the signs TIES elects partly agree). They are written tensor by tensor
(never a whole model in memory) into ``--keep`` (default a temporary
directory, deleted at the end; about 6.6 GB).

Arms, each a fresh process, alternating round by round:
- studio: ``tuning.merge.run_merge`` (what a merge job runs);
- mergekit: ``mergekit-yaml`` 0.1.5 from its own environment (bench/merge_parity.py says how to make it),
  computing in float32 and writing bf16, as the studio does for a bf16 base.

Figures per method: wall time (studio ÷ mergekit; goal ≤ 0.5), each
process's peak resident memory (``os.wait4``: the whole process, imports
included) and that peak over the largest tensor's bytes (goal: a small
multiple), and the outputs compared tensor by tensor: the largest absolute
difference, ‖studio − mergekit‖ / ‖mergekit − base‖ in float64, and the
share of entries that differ.
One JSON line per figure.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

HIDDEN, MLP, HEADS, KV_HEADS = 2048, 5632, 32, 4
WEIGHT, DENSITY = 0.6, 0.5
SOURCES = {"weight": WEIGHT}
METHODS = {  # studio method and settings, mergekit's config for the same merge
    "task_arithmetic": ({}, {"merge_method": "task_arithmetic",
                             "models": [{"model": m, "parameters": SOURCES} for m in ("{a}", "{b}")]}),
    "ties": ({"density": DENSITY}, {"merge_method": "ties",
                                    "models": [{"model": m, "parameters": {**SOURCES, "density": DENSITY}}
                                               for m in ("{a}", "{b}")]}),
}


def config(layers: int, vocab: int):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=vocab, hidden_size=HIDDEN, intermediate_size=MLP, num_hidden_layers=layers,
                       num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, tie_word_embeddings=False,
                       dtype="bfloat16", architectures=["LlamaForCausalLM"])


def layout(layers: int, vocab: int) -> list[tuple[str, str, tuple[int, ...]]]:
    kv = HIDDEN // HEADS * KV_HEADS
    names = [("model.embed_tokens.weight", (vocab, HIDDEN)), ("lm_head.weight", (vocab, HIDDEN)),
             ("model.norm.weight", (HIDDEN,))]
    for n in range(layers):
        block = f"model.layers.{n}."
        names += [(block + "self_attn.q_proj.weight", (HIDDEN, HIDDEN)),
                  (block + "self_attn.k_proj.weight", (kv, HIDDEN)), (block + "self_attn.v_proj.weight", (kv, HIDDEN)),
                  (block + "self_attn.o_proj.weight", (HIDDEN, HIDDEN)),
                  (block + "mlp.gate_proj.weight", (MLP, HIDDEN)), (block + "mlp.up_proj.weight", (MLP, HIDDEN)),
                  (block + "mlp.down_proj.weight", (HIDDEN, MLP)), (block + "input_layernorm.weight", (HIDDEN,)),
                  (block + "post_attention_layernorm.weight", (HIDDEN,))]
    return [(name, "BF16", shape) for name, shape in names]


def write_models(root: Path, layers: int, vocab: int) -> dict[str, Path]:
    """base, a, b: written one tensor at a time, all three from the same per-tensor draws."""
    import torch

    from tuning.merge.tensors import ShardWriter

    paths = {key: root / key for key in ("base", "a", "b")}
    plan = layout(layers, vocab)
    writers = {}
    for key, path in paths.items():
        path.mkdir(parents=True, exist_ok=True)
        config(layers, vocab).save_pretrained(path)
        writers[key] = ShardWriter(path, plan, max_shard_bytes=2**40)
    for number, (name, _, shape) in enumerate(plan):
        generator = torch.Generator().manual_seed(number)
        if len(shape) == 1:  # norms: ones, changed a little by each fine-tune
            base = torch.ones(shape)
        else:
            base = torch.randn(shape, generator=generator) * 0.02
        shared = torch.randn(shape, generator=generator)
        scale = 0.1 * float(base.abs().mean())
        writers["base"].write(name, base.to(torch.bfloat16))
        for key in ("a", "b"):
            tuned = base + scale * (shared + torch.randn(shape, generator=generator))
            writers[key].write(name, tuned.to(torch.bfloat16))
    for writer in writers.values():
        writer.close()
    return paths


def timed(command: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS MiB) of one process."""
    started = time.monotonic()
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    elapsed = time.monotonic() - started
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"{' '.join(command[:3])} … failed:\n{process.stderr.read().decode()[-3000:]}")
    return elapsed, usage.ru_maxrss / 1024  # KiB on Linux


def studio_command(method: str, paths: dict, out: Path) -> list[str]:
    settings, _ = METHODS[method]
    job = {"method": method, "base_model": str(paths["base"]), "output_dir": str(out), "method_params": settings,
           "sources": [{"path": str(paths["a"]), "weight": WEIGHT}, {"path": str(paths["b"]), "weight": WEIGHT}]}
    return [sys.executable, __file__, "--child", json.dumps(job)]


def mergekit_command(python: str, method: str, paths: dict, out: Path) -> list[str]:
    _, template = METHODS[method]
    text = json.dumps({**template, "base_model": "{base}", "dtype": "float32", "out_dtype": "bfloat16"})
    for key, path in paths.items():
        text = text.replace("{" + key + "}", str(path))
    recipe = out.with_suffix(".yaml")
    recipe.write_text(text)  # JSON is YAML
    return [str(Path(python).parent / "mergekit-yaml"), str(recipe), str(out), "--quiet"]


def weights_of(directory: Path):
    from safetensors import safe_open

    files = sorted(directory.rglob("*.safetensors"))
    handles = [safe_open(str(f), "pt") for f in files]
    return {name: handle for handle in handles for name in handle.keys()}


def compare(studio: Path, mergekit: Path, base: Path) -> dict:
    """How far apart the two outputs are. Both compute in float32 and round to bf16, so a sum taken in
    another order can round an entry to the neighbouring bf16 value: ``differing_share`` counts them."""
    import torch

    ours, theirs, origin = weights_of(studio), weights_of(mergekit), weights_of(base)
    largest, difference, change, differing, entries = 0.0, 0.0, 0.0, 0, 0
    for name, handle in theirs.items():
        reference = handle.get_tensor(name).to(torch.float64)
        mine = ours[name].get_tensor(name).to(torch.float64)
        gap = (mine - reference).abs()
        largest = max(largest, float(gap.max()))
        difference += float(gap.square().sum())
        change += float((reference - origin[name].get_tensor(name).to(torch.float64)).square().sum())
        differing += int((gap > 0).sum())
        entries += gap.numel()
    return {"max_abs_diff": largest, "relative_diff": (difference / change) ** 0.5 if change else 0.0,
            "differing_share": differing / entries}


def child(job: dict) -> None:
    from tuning.events import MemorySink
    from tuning.merge import run_merge
    from tuning.merge.config import MergeConfig

    result = run_merge(MergeConfig.from_dict(job), MemorySink())
    if result.status != "succeeded":
        raise SystemExit(f"merge ended {result.status}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, default=22)
    parser.add_argument("--vocab", type=int, default=32000, help="smaller for a quick check of the script")
    parser.add_argument("--methods", default="task_arithmetic,ties")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--mergekit-python", default=os.environ.get("MERGEKIT_PYTHON", "/tmp/mk/bin/python"))
    parser.add_argument("--keep", help="directory for the models (kept between runs); default: a temporary one")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(json.loads(args.child))
        return
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="merge-scale-"))
    plan = layout(args.layers, args.vocab)
    parameters = sum(int.__mul__(*shape) if len(shape) == 2 else shape[0] for _, _, shape in plan)
    largest_mib = max(int.__mul__(*s) for _, _, s in plan if len(s) == 2) * 2 / 2**20
    started = time.monotonic()
    paths = {key: root / key for key in ("base", "a", "b")}
    if not all((path / "model.safetensors").exists() for path in paths.values()):
        paths = write_models(root, args.layers, args.vocab)
    print(json.dumps({"figure": "models", "parameters": parameters, "largest_tensor_mib": round(largest_mib, 1),
                      "file_mib": round((paths["base"] / "model.safetensors").stat().st_size / 2**20),
                      "written_s": round(time.monotonic() - started, 1)}), flush=True)
    try:
        for method in args.methods.split(","):
            runs: dict[str, list[tuple[float, float]]] = {"studio": [], "mergekit": []}
            for round_ in range(args.rounds):
                outs = {"studio": root / f"studio-{method}", "mergekit": root / f"mergekit-{method}"}
                for arm in (("studio", "mergekit") if round_ % 2 == 0 else ("mergekit", "studio")):
                    shutil.rmtree(outs[arm], ignore_errors=True)
                    command = (studio_command(method, paths, outs[arm]) if arm == "studio" else
                               mergekit_command(args.mergekit_python, method, paths, outs[arm]))
                    runs[arm].append(timed(command))
                    print(json.dumps({"run": arm, "method": method, "round": round_ + 1,
                                      "wall_s": round(runs[arm][-1][0], 1), "peak_mib": round(runs[arm][-1][1])}),
                          file=sys.stderr, flush=True)
            gaps = compare(outs["studio"], outs["mergekit"], paths["base"])
            ratios = [s[0] / m[0] for s, m in zip(runs["studio"], runs["mergekit"])]
            peaks = {arm: max(p for _, p in r) for arm, r in runs.items()}
            print(json.dumps({
                "figure": "merge_scale", "method": method, "ratio": round(statistics.median(ratios), 3),
                "round_ratios": [round(r, 3) for r in ratios],
                "studio_s": round(statistics.median(w for w, _ in runs["studio"]), 1),
                "mergekit_s": round(statistics.median(w for w, _ in runs["mergekit"]), 1),
                "studio_peak_mib": round(peaks["studio"]), "mergekit_peak_mib": round(peaks["mergekit"]),
                "studio_peak_over_largest_tensor": round(peaks["studio"] / largest_mib, 2),
                **gaps, "goal": 0.5}), flush=True)
            for out in outs.values():
                shutil.rmtree(out, ignore_errors=True)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
