"""Publishing on the real stack (Redis, uvicorn, Celery workers as separate
processes; their HF_ENDPOINT is the stack's hub on 127.0.0.1): a trained
adapter folded into its base, published by a publish job through
huggingface_hub, then added back as a base model from the same hub by a
model_add job, the round trip a team that shares models on the Hub makes."""

import json
import re

import pytest

from tuning.hub_card import split_front_matter

pytestmark = pytest.mark.integration

ROWS = "".join(json.dumps({"instruction": f"Say {word}.", "output": f"{word.capitalize()}!"}) + "\n"
               for word in ["hello", "yes", "blue", "green"])
FINISHED = {"succeeded", "failed", "cancelled"}


def succeeded(stack, session, job_id, timeout=300) -> dict:
    state = stack.wait_for_status(session, job_id, FINISHED, timeout=timeout)
    failures = [e["data"] for e in state["events"] if e["kind"] == "status" and e["data"].get("message")]
    assert state["status"] == "succeeded", failures
    return state


def artifact_of(state) -> int:
    return next(e for e in state["events"] if e["kind"] == "artifact")["data"]["artifact_id"]


def test_a_folded_model_is_published_then_added_back_as_a_base_model_from_the_same_hub(stack):
    admin = stack.login()
    stack.hub.add_user("hf_team_write_token", "team-bot", orgs={"acme-shared": "write"})
    train_id = stack.start_job(admin, stack.upload(admin, "publish-words.jsonl", ROWS), max_steps=2)
    response = stack.post(admin, f"/jobs/{train_id}/chain/", data={"fold": "1"}, headers={"HX-Request": "true"})
    assert response.status_code == 200, response.text
    fold_id = int(re.findall(r'href="/jobs/(\d+)/"', response.text)[0])
    succeeded(stack, admin, train_id)
    folded = artifact_of(succeeded(stack, admin, fold_id))

    response = stack.post(admin, f"/artifacts/{folded}/publish/", allow_redirects=False, data={
        "repo_id": "acme-shared/tiny-folded", "branch": "main", "token": "hf_team_write_token",
        "commit_message": "Folded tiny llama"})
    assert response.status_code == 302, response.text
    page = admin.get(f"{stack.base_url}/artifacts/{folded}/").text
    publish_id = int(re.search(r'data-publish-job="(\d+)"', page).group(1))
    state = succeeded(stack, admin, publish_id)
    assert any(e["kind"] == "progress" and e["data"].get("unit") == "bytes" for e in state["events"])

    repo = stack.hub.repos["acme-shared/tiny-folded"]
    assert {"config.json", "model.safetensors", "README.md", "tokenizer.json"} <= set(repo.files)
    meta, _ = split_front_matter(repo.files["README.md"].decode())
    assert meta["library_name"] == "transformers" and "tuning-studio" in meta["tags"]
    page = admin.get(f"{stack.base_url}/artifacts/{folded}/").text
    assert "acme-shared/tiny-folded" in page and repo.sha[:12] in page

    response = stack.post(admin, "/models/", data={"add": "hub", "repo_id": "acme-shared/tiny-folded",
                                                   "token": "hf_team_write_token"}, allow_redirects=False)
    assert response.status_code == 302, response.text
    succeeded(stack, admin, int(response.headers["Location"].rstrip("/").split("/")[-1]))
    models = admin.get(f"{stack.base_url}/models/").text
    assert f"acme-shared/tiny-folded@{repo.sha[:12]}" in models
