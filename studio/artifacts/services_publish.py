"""Publishing an artifact to a hub: a ``publish`` job (studio.jobs.kinds) that a
worker runs (worker/publish_runs.py), and the record of each commit it made.

What can be refused without the hub is refused here, before a job is queued:
no token, a repo id or branch the hub would not take, a base model whose
terms forbid sharing the artifact. The token's rights and the repo's owner
are checked by the worker against the hub itself, before any upload."""

from __future__ import annotations

import re
from pathlib import Path

from django.conf import settings
from django.db import transaction

from studio.artifacts.models import Artifact, Publication
from studio.artifacts.selectors import artifact_card_facts
from studio.audit.services import audit_record
from studio.catalog.services import REPO_ID, hub_secret_for
from studio.jobs.models import Job
from studio.jobs.state import job_create
from tuning.errors import ConfigError
from tuning.hub_card import CardFacts, redistribution_refusal

PUBLISH_KIND = "publish"
BRANCH = re.compile(r"^[A-Za-z0-9][\w.-]{0,99}$")


def artifact_publish_request(*, user, artifact: Artifact, repo_id: str, branch: str = "main", private: bool = True,
                             commit_message: str = "", token: str = "", secret_id: int | None = None) -> Job:
    """Queue a job that publishes ``artifact`` to ``repo_id`` (owner/name, or a
    name under the token's user) on ``branch``: a new repo, or a new commit to
    one the token may write. A pasted ``token`` is kept as a team secret.
    Raises ConfigError naming the field."""
    repo_id, branch = repo_id.strip(), (branch or "main").strip()
    if not REPO_ID.match(repo_id) or ".." in repo_id:
        raise ConfigError({"repo_id": f"'{repo_id[:100]}' is not a hub repo id; write it as owner/name "
                                      "(your user or an organisation) or a name under the token's user"})
    if not BRANCH.match(branch) or ".." in branch:
        raise ConfigError({"branch": "a branch name: letters, digits, . _ - (main when empty)"})
    if not token.strip() and not secret_id:
        raise ConfigError({"token": "publishing needs a hub access token with write access: paste one or pick a "
                                    "saved one"})
    if not Path(artifact.path).is_dir():
        raise ConfigError({"repo_id": "the files of this artifact are gone from the server"})
    facts = artifact_card_facts(artifact)
    if refusal := redistribution_refusal(CardFacts.from_dict(facts), private=private):
        raise ConfigError({"private" if "private repo" in refusal else "licence": refusal})
    unfinished = Job.objects.filter(team_id=artifact.team_id, kind=PUBLISH_KIND, config__artifact_id=artifact.pk,
                                    config__repo_id=repo_id).exclude(status__in=Job.FINISHED).first()
    if unfinished:
        raise ConfigError({"repo_id": f"this artifact is already being published to {repo_id} (job #{unfinished.pk})"})
    with transaction.atomic():
        config = {"artifact_id": artifact.pk, "repo_id": repo_id, "branch": branch, "private": bool(private),
                  "commit_message": commit_message.strip()[:200] or f"Publish {artifact.name} from Tuning Studio",
                  "secret_id": hub_secret_for(user=user, team=artifact.team, token=token, secret_id=secret_id,
                                              repo_id=repo_id),
                  "card": facts}
        # The artifact is named in the config, not as an input: a publish job reads it without making anything
        # from it, so it does not hold the artifact (or its base model) back from being deleted.
        return job_create(kind=PUBLISH_KIND, team=artifact.team, owner=user, config=config,
                          name=f"Publish {artifact.name} to {repo_id}")


def artifact_publish_retry(*, job: Job, user) -> Job:
    """A new publish job with the settings (and saved token) of a failed or cancelled one."""
    if job.kind != PUBLISH_KIND or job.status not in (Job.Status.FAILED, Job.Status.CANCELLED):
        raise ConfigError({"job": "only a failed or cancelled publish job can be tried again"})
    artifact = Artifact.objects.filter(pk=job.config["artifact_id"], team_id=job.team_id).first()
    if artifact is None:
        raise ConfigError({"job": "the artifact this job published was deleted"})
    config = job.config
    return artifact_publish_request(user=user, artifact=artifact, repo_id=config["repo_id"], branch=config["branch"],
                                    private=config["private"], commit_message=config["commit_message"],
                                    secret_id=config["secret_id"])


def publication_record(*, job: Job, artifact: Artifact, repo_id: str, branch: str, commit_sha: str, commit_url: str,
                       repo_url: str) -> Publication:
    """What a publish job committed (the worker calls this once the commit exists), with its audit entry."""
    with transaction.atomic():
        publication, _ = Publication.objects.update_or_create(job=job, defaults=dict(
            artifact=artifact, endpoint=settings.HF_ENDPOINT or "https://huggingface.co", repo_id=repo_id,
            branch=branch, private=job.config.get("private", False), commit_sha=commit_sha, commit_url=commit_url,
            repo_url=repo_url, published_by_id=job.owner_id))
        audit_record(user=job.owner, team=artifact.team, action="artifact.published", target=artifact,
                     detail={"repo_id": repo_id, "branch": branch, "commit": commit_sha, "job": job.pk,
                             "private": publication.private, "endpoint": publication.endpoint})
    return publication
