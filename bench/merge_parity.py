"""Tensor-level parity of the studio's merge methods with mergekit's, on two
synthetic fine-tunes of one small Llama (an embedding of vocab × hidden
entries, so float rounding shows as it does on a real model).

    .venv/bin/python bench/merge_parity.py [--mergekit-python /tmp/mk/bin/python] [--vocab 32000]

mergekit is LGPL and pins its own dependencies, so it runs from a separate
environment (``python3 -m venv /tmp/mk && /tmp/mk/bin/pip install
<the local CPU torch wheel> mergekit==0.1.5``), never imported here.
Deterministic methods go through mergekit's own command, ``mergekit-yaml``,
on the same model directories; DELLA, which draws at random, goes through
mergekit's per-tensor merge with the global generator seeded as the studio
seeds each tensor's generator (bench/mergekit_side.py), so both draw the
same keep masks. Prints, per method, the largest absolute difference and
‖studio − mergekit‖ / ‖mergekit − base‖ over all tensors.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file, save_file

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tuning.events import MemorySink  # noqa: E402
from tuning.merge import run_merge  # noqa: E402
from tuning.merge.common import tensor_generator  # noqa: E402
from tuning.merge.config import MergeConfig  # noqa: E402

SEED = 0
# (label, studio method, studio settings, mergekit config or None for the per-tensor path)
CASES = [
    ("WiSE-FT α=0.3 vs linear (base 0.7, fine-tune 0.3)", "wise_ft", {"alpha": 0.3}, 1,
     {"merge_method": "linear", "models": [{"model": "{base}", "parameters": {"weight": 0.7}},
                                           {"model": "{a}", "parameters": {"weight": 0.3}}]}),
    ("SCE select_topk 1", "sce", {"select_topk": 1.0}, 2,
     {"merge_method": "sce", "base_model": "{base}", "models": [{"model": "{a}"}, {"model": "{b}"}],
      "parameters": {"select_topk": 1.0}}),
    ("SCE select_topk 0.3", "sce", {"select_topk": 0.3}, 2,
     {"merge_method": "sce", "base_model": "{base}", "models": [{"model": "{a}"}, {"model": "{b}"}],
      "parameters": {"select_topk": 0.3}}),
    ("DARE-TIES density 1, normalise off vs mergekit's default", "dare_ties", {"density": 1.0, "normalize": False},
     2, {"merge_method": "dare_ties", "base_model": "{base}",
         "models": [{"model": "{a}", "parameters": {"weight": 0.6, "density": 1.0}},
                    {"model": "{b}", "parameters": {"weight": 0.6, "density": 1.0}}]}),
    ("DARE-TIES density 1, normalise on vs normalize: true", "dare_ties", {"density": 1.0, "normalize": True},
     2, {"merge_method": "dare_ties", "base_model": "{base}", "parameters": {"normalize": True},
         "models": [{"model": "{a}", "parameters": {"weight": 0.6, "density": 1.0}},
                    {"model": "{b}", "parameters": {"weight": 0.6, "density": 1.0}}]}),
    ("SLERP t=0.3 (mergekit: one arc per row; studio: per tensor)", "slerp", {"t": 0.3}, 2,
     {"merge_method": "slerp", "base_model": "{a}", "models": [{"model": "{a}"}, {"model": "{b}"}],
      "parameters": {"t": 0.3}}),
    ("DELLA density 0.5 ε 0.15, rescale l1 (mergekit's)", "della",
     {"density": 0.5, "epsilon": 0.15, "rescale": "l1", "seed": SEED}, 2, None),
    ("DELLA linear density 0.4 ε 0.1, rescale l1", "della_linear",
     {"density": 0.4, "epsilon": 0.1, "rescale": "l1", "seed": SEED}, 2, None),
]
# The per-tensor path's mergekit settings for the DELLA cases.
DELLA_MERGEKIT = {
    "della": {"parameters": {"int8_mask": False, "normalize": True, "rescale": True, "lambda": 1.0},
              "per_source": {"weight": [0.6, 0.6], "density": [0.5, 0.5], "epsilon": [0.15, 0.15]}},
    "della_linear": {"parameters": {"int8_mask": False, "normalize": False, "rescale": True, "lambda": 1.0},
                     "per_source": {"weight": [0.6, 0.6], "density": [0.4, 0.4], "epsilon": [0.1, 0.1]}},
}
WEIGHT = 0.6


def build_models(root: Path, vocab: int, hidden: int) -> dict[str, Path]:
    """A random base and two fine-tunes: base + a shared change + each its own
    (so signs partly agree, as two fine-tunes of one base do)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 8 // 3,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                         tie_word_embeddings=False)
    model = LlamaForCausalLM(config)
    paths = {"base": root / "base", "a": root / "a", "b": root / "b"}
    model.save_pretrained(paths["base"], safe_serialization=True)
    base = load_file(paths["base"] / "model.safetensors")
    generator = torch.Generator().manual_seed(1)
    shared = {name: torch.randn(t.shape, generator=generator) for name, t in base.items()}
    for key in ("a", "b"):
        model.save_pretrained(paths[key], safe_serialization=True)
        # Changes of 10% of a tensor's mean |weight|: mergekit's SCE takes equal coefficients when the
        # task vectors' mean squares sum below 1e-6, and this keeps every tensor above that.
        tuned = {name: t + 0.1 * t.abs().mean() * (shared[name] + torch.randn(t.shape, generator=generator))
                 for name, t in base.items()}
        save_file(tuned, str(paths[key] / "model.safetensors"), metadata={"format": "pt"})
    return paths


def studio_merge(method: str, settings: dict, sources: list[Path], base: Path, out: Path) -> tuple[dict, float]:
    config = MergeConfig.from_dict({"method": method, "base_model": str(base), "output_dir": str(out),
                                    "method_params": settings,
                                    "sources": [{"path": str(s), "weight": WEIGHT} for s in sources]})
    started = time.perf_counter()
    result = run_merge(config, MemorySink())
    return load_file(Path(result.output_path) / "model.safetensors"), time.perf_counter() - started


def mergekit_cli(python: str, template: dict, paths: dict, out: Path) -> tuple[dict, float]:
    text = json.dumps({**template, "dtype": "float32", "out_dtype": "float32"})
    for key, path in paths.items():
        text = text.replace("{" + key + "}", str(path))
    config = out.with_suffix(".yaml")
    config.write_text(yaml.safe_dump(json.loads(text)))
    started = time.perf_counter()
    subprocess.run([str(Path(python).parent / "mergekit-yaml"), str(config), str(out), "--quiet"], check=True)
    return load_file(out / "model.safetensors"), time.perf_counter() - started


def mergekit_per_tensor(python: str, method: str, paths: dict, names: list[str], out: Path) -> tuple[dict, float]:
    job = {"method": method, "base": str(paths["base"]), "sources": [str(paths["a"]), str(paths["b"])],
           "seeds": {name: SEED * 1_000_003 + _crc(name) for name in names}, "out": str(out),
           **DELLA_MERGEKIT[method]}
    job_file = out.with_suffix(".json")
    job_file.write_text(json.dumps(job))
    started = time.perf_counter()
    subprocess.run([python, str(REPO / "bench" / "mergekit_side.py"), str(job_file)], check=True)
    return load_file(str(out)), time.perf_counter() - started


def _crc(name: str) -> int:
    # The studio's per-tensor seed (tuning.merge.common.tensor_generator), checked below.
    import zlib

    return zlib.crc32(name.encode())


def compare(ours: dict, theirs: dict, base: dict) -> tuple[float, float]:
    largest, difference, change = 0.0, 0.0, 0.0
    for name, reference in theirs.items():
        mine = ours[name].to(torch.float64)
        reference = reference.to(torch.float64)
        largest = max(largest, float((mine - reference).abs().max()))
        difference += float((mine - reference).square().sum())
        change += float((reference - base[name].to(torch.float64)).square().sum())
    return largest, (difference / change) ** 0.5 if change else 0.0


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mergekit-python", default="/tmp/mk/bin/python")
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--hidden", type=int, default=256)
    args = parser.parse_args()
    version = subprocess.run([args.mergekit_python, "-c", "import importlib.metadata as m; "
                              "print(m.version('mergekit'), m.version('torch'))"],
                             capture_output=True, text=True, check=True).stdout.split()
    assert torch.equal(torch.rand(3, generator=tensor_generator(SEED, "x")),
                       torch.rand(3, generator=torch.Generator().manual_seed(SEED * 1_000_003 + _crc("x"))))
    with tempfile.TemporaryDirectory() as work:
        root = Path(work)
        paths = build_models(root, args.vocab, args.hidden)
        base = load_file(paths["base"] / "model.safetensors")
        entries = sum(t.numel() for t in base.values())
        print(f"mergekit {version[0]} (torch {version[1]}) vs the studio (torch {torch.__version__}); two synthetic "
              f"fine-tunes of a {entries / 1e6:.1f}M-parameter Llama (embedding {args.vocab}×{args.hidden})\n")
        print(f"| {'case':<60} | max abs diff | rel. diff | studio s | mergekit s |")
        print(f"|{'-' * 62}|-------------:|----------:|---------:|-----------:|")
        worst = 0.0
        for number, (label, method, settings, count, template) in enumerate(CASES):
            sources = [paths["a"], paths["b"]][:count]
            ours, our_time = studio_merge(method, settings, sources, paths["base"], root / f"studio-{number}")
            out = root / f"mergekit-{number}"
            if template is None:
                theirs, their_time = mergekit_per_tensor(args.mergekit_python, method, paths, list(base),
                                                         out.with_suffix(".safetensors"))
            else:
                theirs, their_time = mergekit_cli(args.mergekit_python, template, paths, out)
            largest, relative = compare(ours, theirs, base)
            print(f"| {label:<60} | {largest:12.2e} | {relative:9.2e} | {our_time:8.2f} | {their_time:10.2f} |",
                  flush=True)
            worst = max(worst, relative)
    print("\nrel. diff: ‖studio − mergekit‖ / ‖mergekit − base‖ over every tensor. Times include each tool's "
          "start-up (mergekit's command loads its package each run), so they are not a speed comparison.")
    print(json.dumps({"figure": "merge_parity_worst_relative_diff", "value": worst, "cases": len(CASES),
                      "mergekit": version[0], "vocab": args.vocab, "hidden": args.hidden}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
