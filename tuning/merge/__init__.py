"""Merging: one file per merge method, one row here.

Three groups:

- "fold": fold an adapter into its base, giving a full model.
- "adapters": combine LoRA adapters of one base into one adapter (peft's
  ``add_weighted_adapter``).
- "models": merge whole models fine-tuned from one base (full model
  directories, or adapters folded in on the fly), tensor by tensor, so a
  merge needs memory for a few copies of one tensor, not of the models
  (see ``stream``). Fisher merging is the exception: it holds one model at a
  time to estimate its Fisher information.

A method declares a parameters dataclass (``setting()`` fields drive the
form, the CLI and validation), ``run(job)`` (writes the output into
``job.out``; see ``run.MergeJob``) and, for the models group,
``merge_tensors(base, tensors, weights, params)``: the per-tensor rule the
property tests exercise. ``check(params)`` returns ``{field: message}`` for
impossible settings, refused before a job is queued.

Nothing here imports torch or peft at import time: the web process reads
this table to draw the form.

    result = run_merge(MergeConfig.from_dict({...}), sink)   # MergeResult
    check_merge_sources(config)                              # ConfigError, cheap
"""

from __future__ import annotations

from tuning.merge.table import GROUPS, MERGE_METHODS, MergeMethod, describe  # noqa: F401 (the package's API)


def __getattr__(name: str):
    # run_merge / check_merge_sources / MergeConfig without importing them (and torch) with the table.
    if name in ("run_merge", "MergeResult"):
        from tuning.merge import run

        return getattr(run, name)
    if name == "check_merge_sources":
        from tuning.merge.check import check_merge_sources

        return check_merge_sources
    if name == "MergeConfig":
        from tuning.merge.config import MergeConfig

        return MergeConfig
    raise AttributeError(name)
