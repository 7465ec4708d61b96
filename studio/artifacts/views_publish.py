"""Publishing an artifact to the Hub from its page: the form, the publish
jobs' progress and the commits they made, in one partial that the progress
component fetches again when a job ends."""

from __future__ import annotations

from django.http import Http404
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from studio.accounts.policy import Action, allows, refusal
from studio.artifacts.forms import PublishForm
from studio.artifacts.selectors import artifact_get_for_user, artifact_publishing
from studio.artifacts.services_publish import artifact_publish_request, artifact_publish_retry
from studio.catalog.selectors import team_secrets
from studio.jobs.models import Job
from studio.jobs.pages import job_start


def publish_context(request, artifact, form=None) -> dict:
    may = allows(user=request.user, action=Action.CREATE, team_id=artifact.team_id)
    secrets = list(team_secrets(team_id=artifact.team_id)) if may else []
    return {"artifact": artifact, "publishing": artifact_publishing(artifact), "may_publish": may,
            "publish_form": form or PublishForm(secrets=secrets)}


def _answer(request, artifact, form=None, status: int = 200):
    if request.method == "POST" and not request.htmx and status == 200:
        return redirect(artifact)
    return render(request, "artifacts/_publish.html", publish_context(request, artifact, form), status=status)


def artifact_publish(request, artifact_id: int):
    """GET: the publish section; POST: queue a publish job from its form."""
    artifact = artifact_get_for_user(user=request.user, artifact_id=artifact_id)
    if request.method != "POST":
        return _answer(request, artifact)
    secrets = list(team_secrets(team_id=artifact.team_id))
    form = PublishForm(request.POST, secrets=secrets)
    if not allows(user=request.user, action=Action.CREATE, team_id=artifact.team_id):
        form.add_error(None, refusal(user=request.user, action=Action.CREATE, team_id=artifact.team_id,
                                     doing="publish artifacts"))
    elif form.is_valid():
        data = form.cleaned_data
        jobs, errors = job_start(request, team=artifact.team, model_error_field="repo_id", create=lambda: (
            artifact_publish_request(user=request.user, artifact=artifact, repo_id=data["repo_id"],
                                     branch=data["branch"], private=data["private"],
                                     commit_message=data["commit_message"], token=data["token"],
                                     secret_id=data["secret"])),
            detail={"repo_id": data["repo_id"], "branch": data["branch"] or "main"})
        if jobs:
            return _answer(request, artifact)
        for field, message in errors.items():
            form.add_error(field if field in form.fields else None, message)
    return _answer(request, artifact, form, status=400)


@require_POST
def artifact_publish_again(request, artifact_id: int, job_id: int):
    """Retry a failed or cancelled publish job with its settings."""
    artifact = artifact_get_for_user(user=request.user, artifact_id=artifact_id)
    job = Job.objects.filter(pk=job_id, team_id=artifact.team_id, config__artifact_id=artifact.pk).first()
    if job is None:
        raise Http404
    form = PublishForm(secrets=[])
    if not allows(user=request.user, action=Action.CREATE, team_id=artifact.team_id):
        form.add_error(None, refusal(user=request.user, action=Action.CREATE, team_id=artifact.team_id,
                                     doing="publish artifacts"))
        return _answer(request, artifact, form, status=403)
    jobs, errors = job_start(request, team=artifact.team, model_error_field="repo_id",
                             create=lambda: artifact_publish_retry(job=job, user=request.user),
                             detail={"repo_id": job.config["repo_id"], "retry_of": job.pk})
    if not jobs:
        for message in errors.values():
            form.add_error(None, message)
        return _answer(request, artifact, form, status=400)
    return _answer(request, artifact)
