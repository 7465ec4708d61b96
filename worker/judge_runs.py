"""How the worker runs judged comparisons and forgetting checks (studio.jobs.services_judge).

A judge endpoint's key is read from the team secret the job names, here and nowhere else; its HTTP client
checks every request's address with the studio's outbound guard and connects to the address it checked
(studio.notifications.outbound.pin_request), so a judge URL cannot reach into the studio's network, not
even through a redirect or a DNS answer that changes after the form was checked.
"""

from __future__ import annotations

import functools

from studio.accounts.secrets import SecretUnreadable, secret_value
from studio.jobs.models import Job
from studio.jobs.services_judge import JUDGE_ALLOWED, judge_config_for_run
from studio.notifications import outbound
from tuning.errors import TuningError


def _guarded_http_client():
    import httpx2  # the openai client's HTTP library

    # trust_env=False: a proxy from the environment would connect on the guard's behalf to any address
    return httpx2.Client(trust_env=False, follow_redirects=False, event_hooks={
        "request": [functools.partial(outbound.pin_request, allowed=JUDGE_ALLOWED)]})


def run_judge(job: Job, sink) -> tuple[str, str]:
    from tuning.judge import JudgeConfig, run_judge as judge

    values, studio_part = judge_config_for_run(job.config)
    config = JudgeConfig.from_dict(values)
    api_key = ""
    if studio_part.get("secret_id"):
        try:
            api_key = secret_value(secret_id=studio_part["secret_id"], team_id=job.team_id)
        except SecretUnreadable as exc:
            raise TuningError(str(exc)) from None
    client = _guarded_http_client() if config.judge_url else None
    try:
        result = judge(config, sink, api_key=api_key, http_client=client)
    except outbound.AddressRefused as exc:
        raise TuningError(f"The judge URL was refused before connecting: {exc} (an admin can allow intranet "
                          f"judges with {JUDGE_ALLOWED})") from None
    finally:
        if client is not None:
            client.close()
    if result.status == "cancelled":
        return "cancelled", "Cancelled"
    summary = result.summary
    return "succeeded", (f"{config.label_b} against {config.label_a}: {summary['wins']} wins, {summary['ties']} "
                         f"ties, {summary['losses']} losses of {summary['pairs']}")


def run_forgetting(job: Job, sink) -> tuple[str, str]:
    from tuning.forgetting import ForgettingConfig, run_forgetting as check

    values, _ = judge_config_for_run(job.config)
    config = ForgettingConfig.from_dict(values)
    result = check(config, sink)
    if result.status == "cancelled":
        return "cancelled", "Cancelled"
    verdict = "regressed: may have forgotten general knowledge" if result.regressed else "within the threshold"
    return "succeeded", (f"Perplexity on general text {result.perplexity_base:.2f} → {result.perplexity_tuned:.2f} "
                         f"({result.change_pct:+.1f}%, threshold {config.threshold_pct:g}%): {verdict}")
