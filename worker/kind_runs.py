"""How the worker runs the model kinds of job (``studio.jobs.kinds``):
each function takes the claimed Job and its sink, runs the work in
``tuning`` from the job's stored config, and returns (status, summary)."""

from __future__ import annotations

from studio.jobs.models import Job


def run_train(job: Job, sink) -> tuple[str, str]:
    from tuning.config import TrainConfig
    from tuning.modelcard import loss_text
    from tuning.train import run_train as train

    config = TrainConfig.from_dict(job.config)
    if config.devices > 1:  # torchrun launches one process per device (tuning.distributed)
        from worker.distributed_runs import train_on_ranks
        from worker.gang_runs import head_launch

        result = train_on_ranks(job, sink, config, gang=head_launch(job))  # on several workers: a rendezvous
    else:
        result = train(config, sink)
    if result.status == "cancelled":
        return result.status, f"Cancelled at step {result.steps}; the last checkpoint is kept"
    return result.status, f"Finished {result.steps} steps, final loss {loss_text(result.final_loss)}"


def run_merge(job: Job, sink) -> tuple[str, str]:
    from tuning.merge import run_merge as merge
    from tuning.merge.config import MergeConfig

    result = merge(MergeConfig.from_dict(job.config), sink)
    return result.status, "Cancelled; nothing was kept" if result.status == "cancelled" else "Merged"


def run_quantize(job: Job, sink) -> tuple[str, str]:
    from tuning.quantize.config import QuantizeConfig
    from tuning.quantize.run import run_quantize as quantize

    result = quantize(QuantizeConfig.from_dict(job.config), sink)
    return result.status, "Cancelled; nothing was kept" if result.status == "cancelled" else "Quantized"


def run_evaluate(job: Job, sink) -> tuple[str, str]:
    from tuning.scoring import EvaluateConfig, run_evaluate as evaluate

    result = evaluate(EvaluateConfig.from_dict(job.config), sink)
    if "harness" in result.metrics:
        from tuning.harness import harness_summary

        return result.status, "Cancelled" if result.status == "cancelled" else \
            f"Harness: {harness_summary(result.metrics['harness'])}"
    scores = ", ".join(f"{k} {v}" for k, v in result.metrics.items() if isinstance(v, float))
    return result.status, "Cancelled" if result.status == "cancelled" else f"Scored: {scores}"
