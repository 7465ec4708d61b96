"""Reads of the base-model catalogue. A model added by a team is that team's;
bundled and admin-added ones (team empty) are every team's."""

from __future__ import annotations

from django.db.models import Count, Q, QuerySet
from django.shortcuts import get_object_or_404

from studio.accounts.models import TeamSecret
from studio.accounts.selectors import team_ids_for_user
from studio.artifacts.models import Artifact
from studio.catalog.models import BaseModel
from studio.datasets.models import DatasetAnalysis
from studio.jobs.models import Job
from tuning.methods import METHODS


def base_model_list(*, team_ids) -> QuerySet[BaseModel]:
    """The models the given teams may use: shared ones and their own."""
    return BaseModel.objects.filter(Q(team__isnull=True) | Q(team_id__in=list(team_ids)))


def base_model_list_for_user(*, user) -> QuerySet[BaseModel]:
    return base_model_list(team_ids=team_ids_for_user(user=user))


def base_model_get_for_user(*, user, base_model_id: int) -> BaseModel:
    """The model, or 404 when it does not exist or is another team's."""
    return get_object_or_404(base_model_list_for_user(user=user), pk=base_model_id)


def base_model_usage(*, team_ids) -> dict[int, dict[str, int]]:
    """{model id: {"analyses", "jobs", "artifacts"}} counted over the given teams' work."""
    usage: dict[int, dict[str, int]] = {}
    for key, rows in (
            ("analyses", DatasetAnalysis.objects.filter(dataset__team_id__in=team_ids).values("base_model_id")),
            ("jobs", Job.objects.filter(team_id__in=team_ids).exclude(kind__in=("analyse", "diet"))
             .exclude(base_model_id=None).values("base_model_id")),
            ("artifacts", Artifact.objects.filter(team_id__in=team_ids).values("base_model_id"))):
        for row in rows.annotate(n=Count("pk")):
            usage.setdefault(row["base_model_id"], {"analyses": 0, "jobs": 0, "artifacts": 0})[key] = row["n"]
    return usage


def team_secrets(*, team_id: int) -> QuerySet[TeamSecret]:
    return TeamSecret.objects.filter(team_id=team_id)


def method_list():
    return list(METHODS.values())
