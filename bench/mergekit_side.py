"""The mergekit side of bench/merge_parity.py, run by the Python of a
separate environment that has mergekit (its dependencies need not agree
with the studio's); it imports nothing of the studio.

    MERGEKIT_PYTHON bench/mergekit_side.py JOB.json

The job names a base model directory, source directories, a mergekit
method and its parameters, and a random seed per tensor name. Every tensor
goes through mergekit's own per-tensor merge (``merge_group``) after
``torch.manual_seed(seed)``, so a randomised method (DELLA) draws the
stream the studio draws from its per-tensor generator. The merged tensors
are written to the job's ``out`` safetensors file.
"""

from __future__ import annotations

import json
import sys

import torch
from mergekit.merge_methods import registry
from mergekit.merge_methods.base import TensorGroup
from safetensors import safe_open
from safetensors.torch import save_file


def main(path: str) -> int:
    job = json.loads(open(path).read())
    method = registry.get(job["method"])
    files = [safe_open(f"{directory}/model.safetensors", "pt") for directory in [job["base"], *job["sources"]]]
    # Per-source settings are keyed by the entry ids from_tensors gives: 1, 2, ... (0 is the base).
    parameters = dict(job["parameters"])
    for name, values in job["per_source"].items():
        parameters[name] = {index + 1: value for index, value in enumerate(values)}
    merged = {}
    for name in files[0].keys():
        tensors = [handle.get_tensor(name).to(torch.float32) for handle in files]
        torch.manual_seed(job["seeds"][name])
        group = TensorGroup.from_tensors(tensors, base_index=0, name=name)
        merged[name] = method.merge_group(group, **parameters).contiguous()
    save_file(merged, job["out"])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
