"""Preference tuning and reward models from the new-job form and the JSON
API: the same settings as the CLI's YAML, and impossible combinations
refused naming the field (a preference loss on SFT data, SFT on preference
pairs, a setting the chosen loss does not read, a pairwise loss or a reward
model on unpaired completions)."""

import json

import pytest

from studio.accounts.services import api_token_create
from studio.datasets.services import dataset_create_from_file
from studio.jobs.models import Job
from tests.web.test_job_form import FIELDS, FormValues
from tuning.config import PREFERENCE_FIELDS
from tuning.methods import METHODS
from tuning.preference import PREFERENCE_LOSSES

PAIRS = [{"prompt": "Say hi.", "chosen": "Hi!", "rejected": "No."},
         {"prompt": "Add 2 and 2.", "chosen": "4.", "rejected": "5."}]


@pytest.fixture
def pairs(member, team, tmp_path):
    data = tmp_path / "pairs.jsonl"
    data.write_text("\n".join(json.dumps(row) for row in PAIRS) + "\n")
    return dataset_create_from_file(team=team, user=member, source_path=data, filename="pairs.jsonl")


@pytest.fixture
def instructions(member, team, tmp_path):
    data = tmp_path / "sft.csv"
    data.write_text("instruction,output\nq1,a1\nq2,a2\n")
    return dataset_create_from_file(team=team, user=member, source_path=data, filename="sft.csv")


def test_the_form_shows_the_preference_settings_for_the_preference_task_only(member_client):
    page = member_client.get(FIELDS, {"task": "preference", "method": "lora"}).content.decode()
    drawn = FormValues(page)
    assert set(PREFERENCE_FIELDS) <= drawn.names and drawn.values["preference_loss"] == "dpo"
    for loss in PREFERENCE_LOSSES.values():
        assert f'href="{loss.paper}"' in page
    # Methods that cannot score pairs are disabled, with the reason.
    assert {"prefix_tuning", "prompt_tuning", "p_tuning"} <= drawn.disabled
    assert "Not for the preference task" in page and not {"lora", "full", "adalora", "ia3"} & drawn.disabled
    sft = FormValues(member_client.get(FIELDS, {"task": "sft", "method": "lora"}).content.decode())
    assert not set(PREFERENCE_FIELDS) & sft.names


def test_posting_the_form_queues_a_dpo_job(member_client, pairs, tiny_base_model):
    assert pairs.tasks == ["preference", "reward"]
    response = member_client.post("/jobs/new/", {
        "dataset": pairs.pk, "base_model": tiny_base_model.pk, "method": "lora", "task": "preference",
        "fields_for": "lora", "max_steps": 3, "preference_loss": "cdpo", "beta": 0.2, "label_smoothing": 0.1,
        "reference": "precomputed", "method__rank": 4})
    job = Job.objects.get()
    assert response.status_code == 302, response.content.decode()[:2000]
    assert (job.config["task"], job.config["preference_loss"], job.config["beta"], job.config["label_smoothing"],
            job.config["reference"]) == ("preference", "cdpo", 0.2, 0.1, "precomputed")


@pytest.mark.parametrize("task, data, field, words", [
    ("sft", "pairs", "task", "usable for preference"),
    ("preference", "instructions", "task", "usable for sft"),
])
def test_the_form_refuses_a_task_the_data_cannot_train(member_client, request, tiny_base_model, task, data, field,
                                                       words):
    dataset = request.getfixturevalue(data)
    response = member_client.post("/jobs/new/", {"dataset": dataset.pk, "base_model": tiny_base_model.pk,
                                                 "method": "lora", "task": task, "fields_for": "lora"})
    assert response.status_code == 400 and not Job.objects.exists()
    assert words in " ".join(response.context["form"].errors[field])


def test_the_form_names_a_setting_the_loss_does_not_read(member_client, pairs, tiny_base_model):
    response = member_client.post("/jobs/new/", {"dataset": pairs.pk, "base_model": tiny_base_model.pk,
                                                 "method": "lora", "task": "preference", "fields_for": "lora",
                                                 "preference_loss": "ipo", "label_smoothing": 0.2})
    assert response.status_code == 400 and not Job.objects.exists()
    assert "IPO has no label smoothing" in " ".join(response.context["form"].errors["label_smoothing"])


@pytest.fixture
def api(client, member):
    client.defaults["HTTP_AUTHORIZATION"] = f"Bearer {api_token_create(user=member, name='script')[1]}"
    return client


def create(api, dataset, base_model, **hyperparameters):
    return api.post("/api/v1/fine_tuning/jobs", {
        "model": base_model.pk, "training_file": dataset.pk, "method": {"type": "full"},
        "hyperparameters": {"max_steps": 2, **hyperparameters}}, content_type="application/json")


def test_the_api_takes_the_same_settings(api, pairs, tiny_base_model):
    response = create(api, pairs, tiny_base_model, task="preference", preference_loss="simpo", beta=2.0,
                      simpo_gamma=0.8)
    assert response.status_code == 201, response.content
    hyperparameters = response.json()["hyperparameters"]
    assert (hyperparameters["task"], hyperparameters["preference_loss"], hyperparameters["simpo_gamma"]) == (
        "preference", "simpo", 0.8)
    assert METHODS[response.json()["method"]["type"]].produces == "model"


@pytest.mark.parametrize("values, field", [
    ({"task": "sft"}, "hyperparameters.task"),
    ({"task": "preference", "preference_loss": "orpo", "reference": "precomputed"}, "hyperparameters.reference"),
    ({"task": "preference", "cpo_alpha": 0.5}, "hyperparameters.cpo_alpha"),
])
def test_the_api_refuses_impossible_combinations_naming_the_field(api, pairs, tiny_base_model, values, field):
    response = create(api, pairs, tiny_base_model, **values)
    assert response.status_code == 400 and response.json()["error"]["field"] == field, response.content
    assert not Job.objects.exists()


@pytest.fixture
def feedback(member, team, tmp_path):
    """Unpaired completions labelled desirable or not (KTO's data)."""
    data = tmp_path / "feedback.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in [
        {"prompt": "Say hi.", "completion": "Hi!", "label": True},
        {"prompt": "Add 2 and 2.", "completion": "5.", "label": False}]))
    return dataset_create_from_file(team=team, user=member, source_path=data, filename="feedback.jsonl")


def test_unpaired_data_opens_the_form_on_kto_and_queues_a_kto_job(member_client, feedback, tiny_base_model):
    assert (feedback.schema, feedback.tasks) == ("unpaired", ["preference"])
    page = member_client.get(f"/datasets/{feedback.pk}/").content.decode()
    assert "task=preference&amp;preference_loss=kto" in page
    response = member_client.post("/jobs/new/", {
        "dataset": feedback.pk, "base_model": tiny_base_model.pk, "method": "lora", "task": "preference",
        "fields_for": "lora", "max_steps": 3, "preference_loss": "kto", "desirable_weight": 1.2,
        "undesirable_weight": 0.9, "method__rank": 4})
    assert response.status_code == 302, response.content.decode()[:2000]
    job = Job.objects.get()
    assert (job.config["preference_loss"], job.config["desirable_weight"], job.config["undesirable_weight"]) == (
        "kto", 1.2, 0.9)


def test_a_pairwise_loss_on_unpaired_data_is_refused_naming_the_loss(member_client, api, feedback,
                                                                     tiny_base_model):
    response = member_client.post("/jobs/new/", {"dataset": feedback.pk, "base_model": tiny_base_model.pk,
                                                 "method": "lora", "task": "preference", "fields_for": "lora",
                                                 "preference_loss": "orpo"})
    assert response.status_code == 400 and not Job.objects.exists()
    assert "ORPO compares a chosen and a rejected reply" in " ".join(
        response.context["form"].errors["preference_loss"])
    refused = create(api, feedback, tiny_base_model, task="preference", preference_loss="dpo")
    assert refused.status_code == 400 and refused.json()["error"]["field"] == "hyperparameters.preference_loss"
    assert "choose kto" in refused.json()["error"]["message"]
    accepted = create(api, feedback, tiny_base_model, task="preference", preference_loss="kto",
                      undesirable_weight=1.5)
    assert accepted.status_code == 201 and accepted.json()["hyperparameters"]["undesirable_weight"] == 1.5


def test_pairs_train_a_reward_model_from_the_form_and_the_api(member_client, api, pairs, feedback, tiny_base_model):
    drawn = FormValues(member_client.get(FIELDS, {"task": "reward", "method": "lora"}).content.decode())
    assert "reward_centering" in drawn.names and not set(PREFERENCE_FIELDS) & drawn.names
    assert "reward_centering" not in FormValues(member_client.get(
        FIELDS, {"task": "preference", "method": "lora"}).content.decode()).names
    response = member_client.post("/jobs/new/", {
        "dataset": pairs.pk, "base_model": tiny_base_model.pk, "method": "lora", "task": "reward",
        "fields_for": "lora", "max_steps": 3, "reward_centering": 0.01, "method__rank": 4})
    assert response.status_code == 302, response.content.decode()[:2000]
    assert (Job.objects.get().config["task"], Job.objects.get().config["reward_centering"]) == ("reward", 0.01)
    made = create(api, pairs, tiny_base_model, task="reward")
    assert made.status_code == 201 and made.json()["hyperparameters"]["task"] == "reward"
    refused = create(api, feedback, tiny_base_model, task="reward")
    assert refused.status_code == 400 and refused.json()["error"]["field"] == "hyperparameters.task"
    assert "usable for preference" in refused.json()["error"]["message"]


def test_grpo_with_no_code_rewards_from_the_form_and_the_api(member_client, api, instructions, tiny_base_model,
                                                             pairs):
    drawn = FormValues(member_client.get(FIELDS, {"task": "grpo", "method": "lora"}).content.decode())
    assert {"group_size", "answer_pattern", "reward_exact_match", "reward_model"} <= drawn.names
    assert "group_size" not in FormValues(member_client.get(FIELDS, {"task": "sft", "method": "lora"})
                                          .content.decode()).names
    assert instructions.tasks == ["sft", "grpo"]
    response = member_client.post("/jobs/new/", {
        "dataset": instructions.pk, "base_model": tiny_base_model.pk, "method": "lora", "task": "grpo",
        "fields_for": "lora", "max_steps": 3, "group_size": 6, "reward_exact_match": 1.0,
        "answer_pattern": r"(\d+)$", "reward_format": 0.5, "format_pattern": "^a", "method__rank": 4})
    assert response.status_code == 302, response.content.decode()[:2000]
    job = Job.objects.get()
    config = job.config
    assert (config["task"], config["group_size"], config["answer_pattern"], config["format_pattern"]) == (
        "grpo", 6, r"(\d+)$", "^a")
    page = member_client.get(f"/jobs/{job.pk}/").content.decode()
    # GRPO's own charts (they once sat inside the preference-only block and never showed); no pair charts
    assert 'id="reward-mean-chart"' in page and 'id="completion-length-chart"' in page
    assert 'id="rewards-chart"' not in page and 'id="kl-chart"' not in page  # no KL penalty asked for
    assert 'id="reward-baseline-chart"' not in page  # GRPO's group mean is its baseline, not greedy answers
    remax = member_client.post("/jobs/new/", {
        "dataset": instructions.pk, "base_model": tiny_base_model.pk, "method": "lora", "task": "grpo",
        "fields_for": "lora", "max_steps": 3, "policy_loss": "remax", "group_size": 1, "reward_exact_match": 1.0,
        "method__rank": 4})
    assert remax.status_code == 302, remax.content.decode()[:2000]
    page = member_client.get(remax["Location"]).content.decode()
    assert 'id="reward-baseline-chart"' in page and 'data-metric="reward_baseline"' in page
    refused = create(api, instructions, tiny_base_model, task="grpo", reward_exact_match=0)
    assert refused.status_code == 400 and refused.json()["error"]["field"] == "hyperparameters.reward_exact_match"
    unknown = create(api, instructions, tiny_base_model, task="grpo", reward_model_weight=1.0, reward_model="999")
    assert unknown.status_code == 400 and "no reward model #999" in unknown.json()["error"]["message"]
    assert not create(api, pairs, tiny_base_model, task="grpo").status_code == 201  # pairs are not prompts
