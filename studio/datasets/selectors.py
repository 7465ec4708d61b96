from django.shortcuts import get_object_or_404

from studio.accounts.selectors import team_ids_for_user
from studio.datasets.models import Dataset


def dataset_list_for_user(*, user):
    return Dataset.objects.filter(team_id__in=team_ids_for_user(user=user))


def dataset_get_for_user(*, user, dataset_id: int) -> Dataset:
    """The dataset, or 404 when it does not exist or belongs to another team."""
    return get_object_or_404(dataset_list_for_user(user=user), pk=dataset_id)
