"""A job's system prompt through the JSON API: taken like any other
setting, and a custom prompt without its text refused naming the field
(the form's side is in tests/e2e/test_system_prompt_browser.py)."""

from studio.jobs.models import Job
from tests.web.test_preference_jobs import api, create, instructions  # noqa: F401 (fixtures)


def test_the_api_takes_a_custom_system_prompt(api, instructions, tiny_base_model):  # noqa: F811
    response = create(api, instructions, tiny_base_model, system_prompt="custom",
                      system_prompt_text="You answer in one word.")
    assert response.status_code == 201, response.content
    settings = response.json()["hyperparameters"]
    assert (settings["system_prompt"], settings["system_prompt_text"]) == ("custom", "You answer in one word.")


def test_the_api_refuses_a_custom_system_prompt_without_text(api, instructions, tiny_base_model):  # noqa: F811
    response = create(api, instructions, tiny_base_model, system_prompt="custom")
    assert response.status_code == 400, response.content
    assert response.json()["error"]["field"] == "hyperparameters.system_prompt_text"
    assert "write the system prompt" in response.json()["error"]["message"]
    assert not Job.objects.exists()
