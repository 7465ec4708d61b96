"""The dataset analysis renders its preview through the chat template the
user picks (the one a job's chat_template setting would train with), run
here by the worker's own run_job, and says which template it used."""

import json

from studio.datasets.models import DatasetAnalysis
from studio.jobs.models import Job
from tests.web.test_steps import dataset  # noqa: F401 (a fixture: four instruction rows)
from worker.runner import run_job


def test_the_preview_uses_the_picked_template_and_says_so(member_client, dataset, tiny_base_model):  # noqa: F811
    response = member_client.post(f"/datasets/{dataset.pk}/analyse/", {
        "base_model": tiny_base_model.pk, "max_length": 64, "chat_template": "llama3"})
    assert response.status_code == 200
    analysis = DatasetAnalysis.objects.get()
    assert analysis.chat_template == "llama3"
    assert run_job(analysis.job_id, worker_name="test") == Job.Status.SUCCEEDED
    analysis.refresh_from_db()
    assert "Llama 3" in analysis.template_in_effect
    assert "<|start_header_id|>" in json.dumps(analysis.preview)
    page = member_client.get(f"/datasets/{dataset.pk}/analyses/{analysis.pk}/").content.decode()
    assert 'id="template-in-effect"' in page and "Llama 3" in page

    member_client.post(f"/datasets/{dataset.pk}/analyse/", {"base_model": tiny_base_model.pk, "max_length": 64})
    own = DatasetAnalysis.objects.latest("pk")
    run_job(own.job_id, worker_name="test")
    own.refresh_from_db()
    assert own.template_in_effect == ("the model's own chat template; the template's default system prompt "
                                      "“You are a helpful AI assistant named SmolLM, trained by Hugging Face” for "
                                      "rows without one")
    assert "<|start_header_id|>" not in json.dumps(own.preview)
