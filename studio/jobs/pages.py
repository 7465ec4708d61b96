"""What the pages that start jobs share: the start itself (call the
service, record it in the audit log, or collect what the service refused)
and what the next-steps form of a training job offers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from django.conf import settings

from studio.audit.services import audit_record
from studio.jobs.forms import NO_GPU
from tuning.errors import ConfigError, ModelError
from tuning.methods import METHODS


def job_start(request, *, team, create: Callable[[], object], model_error_field: str,
              detail: dict | None = None) -> tuple[list, dict[str, str]]:
    """Run ``create`` (a jobs service returning a Job, or a chain's list of
    Jobs) and record each job it queued as "job.started": ``(jobs, {})``.
    What the service refused comes back as ``([], {field: message})``: a
    ConfigError's own fields, a ModelError under ``model_error_field``, for
    the page to show beside its form."""
    try:
        created = create()
    except ConfigError as exc:
        return [], dict(exc.errors)
    except ModelError as exc:
        return [], {model_error_field: str(exc)}
    jobs = created if isinstance(created, list) else [created]
    for job in jobs:
        after = {"after": job.depends_on_id} if job.depends_on_id else {}
        audit_record(user=request.user, team=team, action="job.started", target=job,
                     detail={"kind": job.kind, **after, **(detail or {})}, request=request)
    return jobs, {}


def quantize_estimate(artifact, *, chosen_scheme: str = "") -> str:
    """The quantize form's note before submitting: about how long the chosen (or a GGUF) scheme takes with the
    default report, from the size of the weights on disk (an adapter: its base model's)."""
    from pathlib import Path

    from tuning.quantize.common import weights_size
    from tuning.quantize.estimate import estimate_seconds

    if artifact is None:
        return ""
    path = Path(artifact.base_model.ref) if artifact.is_adapter and artifact.base_model else Path(artifact.path)
    size = weights_size(path) if path.is_dir() else 0
    if not size:
        return ""
    gguf = not chosen_scheme or chosen_scheme.startswith("gguf")
    seconds = estimate_seconds(weight_bytes=size, gguf=gguf, parts=("agreement",))
    answers = estimate_seconds(weight_bytes=size, gguf=gguf, parts=("agreement", "answers")) - seconds
    perplexity = estimate_seconds(weight_bytes=size, gguf=gguf, parts=("agreement", "perplexity")) - seconds
    return (f"With the default report: about {seconds} s for this model ({size / 2**20:,.0f} MiB of weights) on a "
            f"small CPU worker; answers add about {answers} s, perplexity on 16 rows about {perplexity} s.")


def quantize_schemes(model_config: dict | None = None) -> list[tuple[dict, str]]:
    """[(scheme as described for the UI, why it is unavailable or "")].

    GPU schemes are unavailable without a GPU pool; the rest run on any
    worker (their packages are in the requirements). With the model's
    ``model_config`` (config.json), a scheme that cannot write its family
    (a GGUF writer for it) says so before queueing. The web process does not ask the scheme about this
    machine: that imports torch, and jobs run elsewhere."""
    from tuning.quantize import QUANT_SCHEMES, describe, export_support

    family = export_support(model_config) if model_config else {}
    return [(describe(scheme, check_machine=False),
             NO_GPU if scheme.needs_gpu and not settings.GPU_POOLS else family.get(name) or "")
            for name, scheme in QUANT_SCHEMES.items()]


def model_config_in(*directories) -> dict | None:
    """The first readable config.json among ``directories`` (an artifact's own folder, then its base
    model's: a merged model has one, an adapter's base does); None when none can be read."""
    for directory in filter(None, directories):
        try:
            return json.loads((Path(directory) / "config.json").read_text())
        except (OSError, ValueError):
            continue
    return None


def chain_form_context(job) -> dict:
    """What the next-steps form of a training job offers: folding (only where
    the method's output folds into the base model) and the schemes; and the
    name of the method's loss penalty, which the job page charts."""
    method = METHODS.get(job.config.get("method", "")) if job.kind == "train" else None
    base = model_config_in(job.base_model.ref if job.base_model else None)
    return {"job": job, "schemes": quantize_schemes(base), "folds_into_base": bool(method and method.folds_into_base),
            # the job page charts the term the method adds to its training loss (AdaLoRA), beside the loss
            "penalty_label": method.penalty_label if method else ""}
