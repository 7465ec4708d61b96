import pytest

from studio.accounts.models import Membership, Team
from studio.accounts.services import default_team, user_create
from studio.catalog.services import base_model_register


@pytest.fixture
def member(db):
    return user_create(username="alice", password="pw-alice-123")


@pytest.fixture
def member_client(client, member):
    client.force_login(member)
    return client


@pytest.fixture
def outsider(db):
    """A user of another team: must never see the default team's work."""
    team = Team.objects.create(name="Rivals", slug="rivals")
    return user_create(username="mallory", password="pw-mallory-123", team=team, role=Membership.Role.ADMIN)


@pytest.fixture
def tiny_base_model(db, tiny_model):
    return base_model_register(name="tiny", source="local", ref=str(tiny_model))


@pytest.fixture
def team(db):
    return default_team()


@pytest.fixture
def pairs_dataset(member, team, tmp_path):
    """Two instruction/output rows of the default team: enough to queue training jobs that never run."""
    from studio.datasets.services import dataset_create_from_file

    data = tmp_path / "pairs.csv"
    data.write_text("instruction,output\nq1,a1\nq2,a2\n")
    return dataset_create_from_file(team=team, user=member, source_path=data, filename="pairs.csv")


@pytest.fixture(autouse=True)
def media_root(settings, tmp_path):
    """Each test stores its files in its own directory."""
    settings.MEDIA_ROOT = tmp_path / "media"
    return settings.MEDIA_ROOT


@pytest.fixture(autouse=True)
def fresh_cache():
    """What a process memoises (fair share's usage of ended jobs) never leaks from one test into the next."""
    from django.core.cache import cache

    cache.clear()
    yield
    cache.clear()
