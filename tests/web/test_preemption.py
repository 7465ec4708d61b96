"""Which running job an urgent one may take a worker from (studio/jobs/
services_queue.py: job_preempt_for): lower priority only, training runs
whose method resumes from a checkpoint only, a team admin within the team
and staff across teams; and the worker's side: a preempted run goes back to
the queue at its old place. The real run (checkpoint, requeue, resume, each
step once, cancel while preempted) is in tests/integration/test_live_jobs.py."""

import pytest
from django.test import Client

from studio.accounts.models import Membership
from studio.accounts.services import user_create
from studio.jobs.models import Job
from studio.jobs.selectors import job_stop_requested
from studio.jobs.services import job_cancel, job_requeue_preempted
from studio.jobs.services_queue import job_preempt_for
from tests.web.test_fair_share import people, submit  # noqa: F401 (fixtures)
from tests.web.test_queue import dataset  # noqa: F401 (a fixture)
from tuning.errors import ConfigError


def running(job: Job, *, method: str = "lora") -> Job:
    Job.objects.filter(pk=job.pk).update(status=Job.Status.RUNNING, config={**job.config, "method": method})
    return Job.objects.get(pk=job.pk)


def urgent(submit, people, who="alice", priority=10) -> Job:  # noqa: F811
    job = submit(who, "urgent")
    Job.objects.filter(pk=job.pk).update(priority=priority)
    return Job.objects.get(pk=job.pk)


def test_the_lowest_priority_resumable_training_run_of_the_team_is_chosen(submit, people):  # noqa: F811
    admin = people["ada"][0]
    low = running(submit("bob", "low"))
    Job.objects.filter(pk=low.pk).update(priority=-5)
    running(submit("alice", "middle"))
    victim = job_preempt_for(job=urgent(submit, people), user=admin)
    assert victim.pk == low.pk
    assert Job.objects.get(pk=low.pk).status == Job.Status.PREEMPTING and job_stop_requested(job_id=low.pk)
    with pytest.raises(ConfigError, match="already stopping to free a worker"):
        job_preempt_for(job=urgent(submit, people), user=admin)


def test_never_a_run_that_cannot_resume_nor_one_of_equal_priority(submit, people, monkeypatch):  # noqa: F811
    import dataclasses

    from tuning.methods import METHODS

    monkeypatch.setitem(METHODS, "no_resume", dataclasses.replace(METHODS["lora"], name="no_resume",
                                                                  resumable=False))
    running(submit("bob", "cannot resume"), method="no_resume")
    same = running(submit("bob", "same priority"))
    Job.objects.filter(pk=same.pk).update(priority=10)
    with pytest.raises(ConfigError, match="no running training job of pool default with a priority below 10"):
        job_preempt_for(job=urgent(submit, people), user=people["ada"][0])


def test_a_team_admin_preempts_only_the_teams_own_runs_and_staff_any(submit, people):  # noqa: F811
    other = running(submit("carol", "another team's run"))
    job = urgent(submit, people)
    with pytest.raises(ConfigError, match="no running training job"):
        job_preempt_for(job=job, user=people["ada"][0])
    with pytest.raises(ConfigError, match="Only a team admin"):
        job_preempt_for(job=job, user=people["bob"][0])
    staff = user_create(username="root", password="pw-root-12345", team=people["ada"][1],
                        role=Membership.Role.ADMIN, is_superuser=True)
    assert job_preempt_for(job=job, user=staff).pk == other.pk


def test_a_preempted_run_goes_back_at_its_place_and_a_cancel_meanwhile_wins(submit, people):  # noqa: F811
    first = running(submit("bob", "first"))
    later = submit("alice", "later")
    job_preempt_for(job=urgent(submit, people), user=people["ada"][0])
    assert job_requeue_preempted(job_id=first.pk)
    requeued = Job.objects.get(pk=first.pk)
    assert requeued.status == Job.Status.QUEUED and requeued.queue_order == first.queue_order < later.queue_order
    assert requeued.config["resume_from"] == ""  # it had saved no checkpoint: it starts again
    # a cancel that comes while it is stopping makes the run end as a cancel
    second = running(submit("bob", "second"))
    job_preempt_for(job=urgent(submit, people), user=people["ada"][0])
    job_cancel(job=Job.objects.get(pk=second.pk))
    assert Job.objects.get(pk=second.pk).status == Job.Status.CANCELLING
    assert not job_requeue_preempted(job_id=second.pk)


def test_the_queue_page_offers_preempt_to_admins_for_urgent_jobs(submit, people):  # noqa: F811
    running(submit("bob", "long run"))
    job = urgent(submit, people)
    client = Client()
    client.force_login(people["bob"][0])
    assert '"action": "preempt"' not in client.get("/jobs/queue/").content.decode()
    client.force_login(people["ada"][0])
    assert f'hx-confirm="Pause a running job of lower priority at its next checkpoint so that job #{job.pk}' in \
        client.get("/jobs/queue/").content.decode()
    table = client.post(f"/jobs/{job.pk}/queue-action/", {"action": "preempt"}).content.decode()
    assert "Preempting" in table or "preempting" in table
    from studio.audit.models import AuditEntry

    assert AuditEntry.objects.filter(action="job.reprioritised", detail__preempted__isnull=False).count() == 1
