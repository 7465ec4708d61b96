"""Jobs that work on artifacts: merging and quantizing, alone or as a chain.

Like ``services.py`` these are writers of Job state. A chain (fold the
adapter into its base → quantize → download) is several jobs, each with
its own events; a later step ``depends_on`` the one before and is sent to a
worker only when that one succeeds, with its input filled in from the
artifact the earlier step made (``job_release_dependents``).
"""

from __future__ import annotations

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from studio.artifacts.models import Artifact
from studio.jobs.models import Job, job_output_dir
from studio.jobs.state import job_enqueue, job_set_status, job_submit
from tuning.config import config_to_dict
from tuning.methods import METHODS
from tuning.errors import ConfigError

# Where a chain step's input goes before the step it waits for has made it.
PENDING_INPUT = "(the output of job #{job_id})"
# A merge search (studio.jobs.services_search) waits in the queue for its candidates' jobs.
SEARCH_KIND = "merge_search"


def _common_base(artifacts: list[Artifact]):
    bases = {a.base_model_id for a in artifacts}
    if len(bases) != 1 or None in bases:
        names = ", ".join(f"{a.name} ({a.base_model or 'unknown base'})" for a in artifacts)
        raise ConfigError({"sources": f"the artifacts must share one base model; these do not: {names}"})
    return artifacts[0].base_model


def _merge_config(*, job: Job, method: str, method_params: dict, sources: list[dict], base_model,
                  dataset=None, extra: dict | None = None):
    from tuning.merge.config import MergeConfig

    values = {"method": method, "method_params": method_params, "sources": sources,
              "base_model": base_model.ref, "output_dir": str(job_output_dir(job.pk)),
              "trust_remote_code": settings.TRUST_REMOTE_CODE, **(extra or {})}
    if dataset is not None:
        values["dataset_path"] = dataset.file.path
    return MergeConfig.from_dict(values)


def _sources(artifacts: list[Artifact], weights: list[float] | None) -> list[dict]:
    sources = []
    for index, artifact in enumerate(artifacts):
        source = {"path": artifact.path}
        if weights:
            source["weight"] = weights[index]
        if artifact.is_adapter:
            source["base"] = artifact.base_model.ref
        sources.append(source)
    return sources


def _pool_for(needs_gpu: bool, what: str) -> str:
    if not needs_gpu:
        return settings.DEFAULT_DEVICE_POOL
    if not settings.GPU_POOLS:
        raise ConfigError({"scheme": f"{what} needs a CUDA GPU worker; none is registered (GPU_POOLS)"})
    return settings.GPU_POOLS[0]


def _queue(job: Job, *, config, name: str, input_artifacts: list[Artifact], depends_on: Job | None) -> Job:
    job.config = config_to_dict(config)
    job.name = name[:200]
    job.input_artifact_ids = [a.pk for a in input_artifacts]
    job.depends_on = depends_on
    job.save(update_fields=["config", "name", "input_artifact_ids", "depends_on", "device_pool"])
    job_submit(job=job)
    return job


def job_create_merge(*, user, team, artifacts: list[Artifact], method: str, method_params: dict,
                     weights: list[float] | None = None, dataset=None, name: str = "",
                     depends_on: Job | None = None, sources_checked: bool = False) -> Job:
    """Validate a merge of ``artifacts`` (already checked to be the user's
    team's), store it as queued and enqueue it. Raises ConfigError naming the
    field, tensor or token that makes the merge impossible; stores nothing then.

    With ``depends_on`` the input is that job's future output: ``artifacts``
    is empty and the merge is a fold of the adapter that job will make. ``sources_checked``: the caller
    checked these sources already (a merge search, once for all its candidates; reading every source's
    tokenizer takes seconds)."""
    from tuning.merge import MERGE_METHODS, check_merge_sources

    if method not in MERGE_METHODS:
        raise ConfigError({"method": f"unknown merge method '{method}'; choose one of {', '.join(MERGE_METHODS)}"})
    trained_with = METHODS.get(depends_on.config.get("method", "")) if depends_on else None
    if trained_with is not None and not trained_with.folds_into_base:
        raise ConfigError({"steps": f"a {trained_with.label} run leaves nothing to fold into the base model; "
                                    f"quantize its output directly, or train with an adapter that folds (LoRA …)"})
    base_model = depends_on.base_model if depends_on else _common_base(artifacts)
    with transaction.atomic():
        job = Job.objects.create(team=team, owner=user, kind=Job.Kind.MERGE, base_model=base_model, config={},
                                 dataset=dataset, device_pool=settings.DEFAULT_DEVICE_POOL)
        if depends_on:
            sources = [{"path": PENDING_INPUT.format(job_id=depends_on.pk), "base": base_model.ref}]
        else:
            sources = _sources(artifacts, weights)
        config = _merge_config(job=job, method=method, method_params=method_params, sources=sources,
                               base_model=base_model, dataset=dataset)
        if not depends_on and not sources_checked:
            check_merge_sources(config)
        label = MERGE_METHODS[method].label
        what = f"job #{depends_on.pk}" if depends_on else ", ".join(a.name for a in artifacts)
        job = _queue(job, config=config, name=name or f"{label}: {what}", input_artifacts=artifacts,
                     depends_on=depends_on)
    job.refresh_from_db()
    return job


def quantized_model_name(*, base_model, made_by: Job | None) -> str:
    """What a quantized model calls itself inside its files (GGUF general.name, the card's title): its base
    model and the job that made the weights, e.g. "SmolLM2-135M-Instruct - LoRA on words", rather than the
    name of the folder it was read from ("model")."""
    while made_by is not None and made_by.kind == Job.Kind.MERGE and made_by.depends_on_id:
        made_by = made_by.depends_on  # a chain's fold step: the weights are the training run's
    parts = [base_model.name if base_model else "", made_by.name if made_by else ""]
    return " - ".join(p for p in parts if p)[:200]


def _quantize_config(*, job: Job, scheme: str, source_path: str, base_model, eval_dataset=None,
                     prompts=None, model_name: str = "", report_settings: dict | None = None,
                     scheme_params: dict | None = None, validation_dataset=None):
    from tuning.quantize.config import REPORT_SETTINGS, QuantizeConfig

    values = {"scheme": scheme, "source_path": source_path, "base_model": base_model.ref if base_model else "",
              "output_dir": str(job_output_dir(job.pk)), "trust_remote_code": settings.TRUST_REMOTE_CODE,
              "model_name": model_name, "scheme_params": scheme_params or {}}
    unknown = set(report_settings or {}) - set(REPORT_SETTINGS)
    if unknown:
        raise ConfigError({name: f"unknown report setting; known: {', '.join(REPORT_SETTINGS)}" for name in unknown})
    values.update(report_settings or {})
    if prompts:
        values["prompts"] = list(prompts)
    if eval_dataset is not None:
        values["eval_dataset_path"] = eval_dataset.file.path
    if validation_dataset is not None:  # ComPEFT's α search
        values["validation_dataset_path"] = validation_dataset.file.path
    return QuantizeConfig.from_dict(values)


def job_create_quantize(*, user, team, artifact: Artifact | None, scheme: str, eval_dataset=None, prompts=None,
                        name: str = "", depends_on: Job | None = None, report_settings: dict | None = None,
                        scheme_params: dict | None = None, validation_dataset=None) -> Job:
    """Validate quantizing ``artifact`` (or, with ``depends_on``, the model
    that job will make) with ``scheme``, store the job and enqueue it.
    ``report_settings`` are QuantizeConfig's report fields (REPORT_SETTINGS);
    ``scheme_params`` the scheme's own settings (ComPEFT's density …);
    ``validation_dataset`` the split ComPEFT's α search scores on."""
    from tuning.quantize import QUANT_SCHEMES
    from tuning.quantize.run import check_quantize_source

    if scheme not in QUANT_SCHEMES:
        raise ConfigError({"scheme": f"unknown scheme '{scheme}'; choose one of {', '.join(QUANT_SCHEMES)}"})
    quant = QUANT_SCHEMES[scheme]
    trained_with = METHODS.get(depends_on.config.get("method", "")) if depends_on else None
    if trained_with is not None and trained_with.produces == "adapter" and not trained_with.folds_into_base:
        raise ConfigError({"steps": f"a {trained_with.label} run's adapter cannot be quantized: it has no single "
                                    f"weight per layer to fold into the base model; use it as it is"})
    pool = _pool_for(quant.needs_gpu, quant.label)  # other schemes' packages are checked on the worker
    base_model = depends_on.base_model if depends_on else artifact.base_model
    with transaction.atomic():
        job = Job.objects.create(team=team, owner=user, kind=Job.Kind.QUANTIZE, base_model=base_model,
                                 dataset=eval_dataset, config={}, device_pool=pool)
        source = PENDING_INPUT.format(job_id=depends_on.pk) if depends_on else artifact.path
        adapter = depends_on is None and artifact.is_adapter
        config = _quantize_config(job=job, scheme=scheme, source_path=source,
                                  base_model=base_model if adapter or quant.delta else None,
                                  eval_dataset=eval_dataset,
                                  prompts=prompts, report_settings=report_settings, scheme_params=scheme_params,
                                  validation_dataset=validation_dataset,
                                  model_name=quantized_model_name(
                                      base_model=base_model, made_by=depends_on or artifact.job))
        if not depends_on:
            check_quantize_source(config, on_worker=False)
        what = f"job #{depends_on.pk}" if depends_on else artifact.name
        job = _queue(job, config=config, name=name or f"{quant.label}: {what}",
                     input_artifacts=[artifact] if artifact else [], depends_on=depends_on)
    job.refresh_from_db()
    return job


def job_create_chain(*, user, team, start: Job | Artifact, steps: list[dict]) -> list[Job]:
    """Queue several steps at once, each waiting for the one before.

    ``start`` is a training job (running or finished: the chain begins with
    its adapter) or an artifact. ``steps`` are {"kind": "fold"} or
    {"kind": "quantize", "scheme": ..., "eval_dataset": Dataset|None}.
    All steps are validated before any is stored."""
    if not steps:
        raise ConfigError({"steps": "choose at least one step"})
    jobs: list[Job] = []
    with transaction.atomic():
        previous = start if isinstance(start, Job) else None
        artifact = start if isinstance(start, Artifact) else None
        for step in steps:
            if step["kind"] == "fold":
                job = job_create_merge(user=user, team=team, artifacts=[artifact] if artifact else [],
                                       method="fold", method_params={}, depends_on=previous)
            elif step["kind"] == "quantize":
                job = job_create_quantize(user=user, team=team, artifact=artifact, scheme=step["scheme"],
                                          eval_dataset=step.get("eval_dataset"), depends_on=previous)
            else:
                raise ConfigError({"steps": f"unknown step '{step['kind']}'"})
            jobs.append(job)
            previous, artifact = job, None
    return jobs


def _output_of(job: Job) -> Artifact | None:
    return job.artifacts.order_by("-created_at").first()


def _fill_input(job: Job, artifact: Artifact) -> None:
    """Put the artifact a finished step made into the waiting step's config,
    and check the result as a fresh job would be checked."""
    if job.kind == Job.Kind.MERGE:
        from tuning.merge import check_merge_sources
        from tuning.merge.config import MergeConfig

        config = MergeConfig.from_dict({**job.config, "sources": _sources([artifact], None)})
        check_merge_sources(config)
    elif job.kind == Job.Kind.EVALUATE:  # a merge search's candidate (studio.jobs.services_search): scored as merged
        from tuning.scoring import EvaluateConfig

        base = artifact.base_model.ref if artifact.is_adapter and artifact.base_model else ""
        config = EvaluateConfig.from_dict({**job.config, "artifact_path": artifact.path, "base_model": base})
    elif job.kind == "forgetting":  # studio.jobs.services_judge: checked against the base model of the run
        from tuning.forgetting import ForgettingConfig

        config = ForgettingConfig.from_dict({**job.config, "artifact_path": artifact.path})
    else:
        from tuning.quantize.run import check_quantize_source
        from tuning.quantize.config import QuantizeConfig

        base = artifact.base_model.ref if artifact.is_adapter and artifact.base_model else ""
        config = QuantizeConfig.from_dict({**job.config, "source_path": artifact.path, "base_model": base})
        check_quantize_source(config, on_worker=False)
    job.config = config_to_dict(config)
    job.input_artifact_ids = [artifact.pk]
    job.save(update_fields=["config", "input_artifact_ids"])


def job_release_dependents(*, job_id: int, status: str) -> None:
    """When a step ends: send the steps waiting for it to a worker (it
    succeeded) or end them with the reason (it did not)."""
    waiting = Job.objects.filter(depends_on_id=job_id, status=Job.Status.QUEUED)
    for job in waiting:
        if job.kind == SEARCH_KIND:  # a merge search waits for any one candidate, whatever became of it
            job_set_status(job.pk, Job.Status.QUEUED, message=f"Job #{job_id} {status}; the search goes on",
                           depends_on=None)
            transaction.on_commit(lambda job=job: job_enqueue(job_id=job.pk, pool=job.device_pool))
            continue
        if status != Job.Status.SUCCEEDED:
            job_set_status(job.pk, Job.Status.CANCELLED, message=f"Not run: job #{job_id}, the step before, {status}",
                           finished_at=timezone.now())
            job_release_dependents(job_id=job.pk, status=Job.Status.CANCELLED)
            continue
        artifact = _output_of(Job.objects.get(pk=job_id))
        try:
            if artifact is None:
                raise ConfigError({"sources": f"job #{job_id} made no artifact to work on"})
            _fill_input(job, artifact)
        except ConfigError as exc:
            message = f"Cannot use the output of job #{job_id}: {exc}"
            job_set_status(job.pk, Job.Status.FAILED, message=message, failure_kind=Job.FailureKind.USER_ERROR,
                           failure_message=message, finished_at=timezone.now())
            job_release_dependents(job_id=job.pk, status=Job.Status.FAILED)
            continue
        job_set_status(job.pk, Job.Status.QUEUED, message=f"Job #{job_id} finished; queued")
        transaction.on_commit(lambda job=job: job_enqueue(job_id=job.pk, pool=job.device_pool))


def job_create_evaluate(*, user, team, artifact: Artifact | None, dataset, settings_values: dict, name: str = "",
                        base_model=None) -> Job:
    """Score ``artifact`` on ``dataset`` (both the user's team's): loss and
    perplexity, exact match and ROUGE-L, or accuracy and F1. With no artifact,
    ``base_model`` (one the team may use) on its own, through a harness benchmark."""
    from pathlib import Path

    from tuning.scoring import EvaluateConfig

    from tuning.harness_tasks import check_harness_settings

    harness = settings_values.get("harness", "off") != "off"
    if artifact is None and not harness:
        raise ConfigError({"harness": "a base model on its own is scored by an lm-evaluation-harness benchmark: "
                                      "pick multiple_choice, generate_until or named_tasks (or pick an artifact)"})
    if artifact is not None:
        base_model = artifact.base_model
        # A harness run scores the base beside any artifact; the studio's scores need it for adapters only.
        base_ref = base_model.ref if base_model and (artifact.is_adapter or harness) else ""
    else:
        base_ref = base_model.ref
    config = EvaluateConfig.from_dict({
        **settings_values, "artifact_path": artifact.path if artifact else "", "dataset_path": dataset.file.path,
        "dataset_name": Path(dataset.file.name).name, "trust_remote_code": settings.TRUST_REMOTE_CODE,
        "base_model": base_ref})
    if harness:  # the column mapping is checked against the file now, naming the setting to fix
        check_harness_settings(config)
    elif config.task not in dataset.tasks:
        raise ConfigError({"task": f"{dataset.name} is {dataset.schema} data, usable for "
                                   f"{', '.join(dataset.tasks)}; pick one of those tasks or another dataset"})
    with transaction.atomic():
        job = Job.objects.create(team=team, owner=user, kind=Job.Kind.EVALUATE, base_model=base_model,
                                 dataset=dataset, config={}, device_pool=settings.DEFAULT_DEVICE_POOL)
        what = artifact.name if artifact else f"{base_model.name} (base model)"
        job = _queue(job, config=config, name=name or f"Evaluate {what} on {dataset.name}",
                     input_artifacts=[artifact] if artifact else [], depends_on=None)
    job.refresh_from_db()
    return job
