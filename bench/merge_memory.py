"""Peak memory of a TIES merge of two copies of the bundled model.

    .venv/bin/python bench/merge_memory.py

Makes two slightly different copies of the bundled SmolLM2-135M (fp32,
about 540 MB each: the base plus small noise, written tensor by tensor),
then runs ``run_merge`` with TIES on them in a child process. The figure is
the child's peak resident memory above its resident memory just before the
merge (interpreter, torch, transformers and the tuning package imported),
divided by the size of one model's weights file. Target: at most 2.0 (the
merge streams tensors, so it should need far less than the two models).

Prints one JSON line: {"figure": "ties_merge_peak_memory_over_model_size", ...}.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / ".cache" / "bench"
NOISE = 1e-3  # relative size of each copy's change: enough that TIES has signs to elect


def _noisy_copy(base: Path, dest: Path, seed: int) -> Path:
    """``base`` with N(0, NOISE·std) added to every float tensor, one tensor at a time."""
    import shutil

    import torch

    from tuning.merge.tensors import ShardWriter, TensorFile, read_header

    if (dest / "model.safetensors").exists():
        return dest
    partial = dest.with_name(dest.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(base, partial, ignore=shutil.ignore_patterns("*.safetensors"))
    source = TensorFile(base / "model.safetensors")
    layout = [(name, dtype, shape) for name, (dtype, shape) in read_header(base / "model.safetensors").items()]
    writer = ShardWriter(partial, layout, max_shard_bytes=2**40)
    generator = torch.Generator().manual_seed(seed)
    for name in source.keys():
        tensor = source.get_tensor(name)
        if tensor.is_floating_point():
            scale = NOISE * float(tensor.float().std()) if tensor.numel() > 1 else NOISE
            tensor = tensor + scale * torch.randn(tensor.shape, generator=generator, dtype=tensor.dtype)
        writer.write(name, tensor)
    writer.close()
    shutil.rmtree(dest, ignore_errors=True)
    partial.rename(dest)
    return dest


def _child(arguments: dict) -> None:
    """Run the merge and report this process's memory (KiB from getrusage, Linux)."""
    import gc

    import psutil

    from tuning.events import MemorySink
    from tuning.merge import run_merge
    from tuning.merge.config import MergeConfig

    import torch

    torch.ones(1).add_(1)  # torch loaded and initialised before the baseline: the merge needs it anyway
    config = MergeConfig.from_dict(arguments)
    gc.collect()
    baseline = psutil.Process().memory_info().rss
    started = time.monotonic()
    result = run_merge(config, MemorySink())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"baseline": baseline, "peak": peak, "status": result.status,
                      "elapsed_s": time.monotonic() - started, "output": result.output_path}))


def main() -> None:
    from tuning.models import prepare_bundled_model

    base = prepare_bundled_model(CACHE / "smollm2-135m-instruct")
    a = _noisy_copy(base, CACHE / "merge-memory" / "a", seed=1)
    b = _noisy_copy(base, CACHE / "merge-memory" / "b", seed=2)
    out = CACHE / "merge-memory" / "out"
    arguments = {"method": "ties", "base_model": str(base), "output_dir": str(out),
                 "sources": [str(a), str(b)], "method_params": {"density": 0.2}}
    child = subprocess.run([sys.executable, __file__, "--child", json.dumps(arguments)], capture_output=True,
                           text=True, cwd=REPO)
    import shutil

    shutil.rmtree(out, ignore_errors=True)  # 500 MB nobody needs; the two copies are kept for the next run
    if child.returncode != 0:
        sys.exit(f"the merge failed:\n{child.stderr[-3000:]}")
    report = json.loads(child.stdout.strip().splitlines()[-1])
    model_bytes = (base / "model.safetensors").stat().st_size
    above = report["peak"] - report["baseline"]
    print(json.dumps({"figure": "ties_merge_peak_memory_over_model_size", "value": round(above / model_bytes, 3),
                      "model_mb": round(model_bytes / 2**20, 1), "peak_mb": round(above / 2**20, 1),
                      "baseline_mb": round(report["baseline"] / 2**20, 1),
                      "merge_s": round(report["elapsed_s"], 1), "target": 2.0,
                      "definition": "peak RSS of the merge process above its RSS after imports, / model file size"}))


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    if sys.argv[1:2] == ["--child"]:
        _child(json.loads(sys.argv[2]))
    else:
        main()
