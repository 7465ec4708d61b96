from django.shortcuts import get_object_or_404

from studio.accounts.selectors import team_ids_for_user
from studio.artifacts.models import Artifact


def artifact_list_for_user(*, user):
    return Artifact.objects.filter(team_id__in=team_ids_for_user(user=user)).select_related("job")


def artifact_get_for_user(*, user, artifact_id: int) -> Artifact:
    return get_object_or_404(artifact_list_for_user(user=user), pk=artifact_id)
