"""Every page needs a login; another team's ids answer 404 and leak nothing."""

import pytest

from studio.datasets.services import dataset_create_from_file
from studio.jobs.services import job_create_train

PAGES = ["/", "/datasets/", "/jobs/new/", "/artifacts/", "/playground/", "/jobs/new/merge/", "/jobs/new/quantize/",
         "/jobs/new/evaluate/", "/jobs/new/judge/",
         # pages of one team's things: another team gets 404 (from here on)
         "/datasets/{dataset}/", "/jobs/{job}/", "/jobs/{job}/status/", "/jobs/{job}/events/",
         "/artifacts/{artifact}/", "/artifacts/{artifact}/download/", "/artifacts/{artifact}/files/README.md",
         "/artifacts/{artifact}/publish/"]
TEAM_PAGES = PAGES.index("/datasets/{dataset}/")


@pytest.fixture
def work(member, team, tiny_base_model, tmp_path, settings):
    from studio.artifacts.services import artifact_create

    data = tmp_path / "d.csv"
    data.write_text("instruction,output\nq,a\n")
    dataset = dataset_create_from_file(team=team, user=member, source_path=data, filename="d.csv")
    job = job_create_train(user=member, team=team, dataset=dataset, base_model=tiny_base_model,
                           settings_values={"max_steps": 1}, method_params={})
    adapter = settings.MEDIA_ROOT / "jobs" / str(job.pk) / "adapter"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text("{}")
    (adapter / "README.md").write_text("# model card\n")
    artifact = artifact_create(job=job, kind="adapter", path=str(adapter), metadata={})
    return {"dataset": dataset.pk, "job": job.pk, "artifact": artifact.pk}


@pytest.mark.parametrize("page", PAGES)
def test_pages_need_login(client, work, page):
    response = client.get(page.format(**work))
    assert response.status_code == 302 and response.url.startswith("/accounts/login/")


@pytest.mark.parametrize("page", PAGES[TEAM_PAGES:])
def test_other_team_gets_404(client, outsider, work, page):
    client.force_login(outsider)
    assert client.get(page.format(**work)).status_code == 404


def test_other_team_cannot_cancel(client, outsider, work):
    client.force_login(outsider)
    assert client.post(f"/jobs/{work['job']}/cancel/").status_code == 404


def test_member_sees_own_team_work(member_client, work):
    for page in PAGES:
        assert member_client.get(page.format(**work)).status_code == 200, page
