"""Downloads through huggingface_hub from a hub on 127.0.0.1 (tests/hub_server.py):
what is refused before any weight is fetched, a dropped connection that
resumes, a cancel within a chunk, and the facts read from the files."""

import json

import pytest

from tests.hub_server import HubServer, Repo, model_repo_files
from tuning.errors import TuningError
from tuning.hub import DownloadCancelled, hub_download, hub_plan
from tuning.model_info import describe_model_dir


@pytest.fixture
def hub(tiny_model):
    server = HubServer(repos={"acme/tiny-llama": Repo(files=model_repo_files(tiny_model))})
    endpoint = server.start()
    server.endpoint = endpoint
    yield server
    server.stop()


def plan_for(hub, tmp_path, repo_id="acme/tiny-llama", **kwargs):
    return hub_plan(repo_id, endpoint=hub.endpoint, target_dir=tmp_path / "model", **kwargs)


def test_a_model_downloads_resuming_a_dropped_connection_and_describes_itself(hub, tmp_path, tiny_model,
                                                                             monkeypatch):
    from huggingface_hub import constants

    # The library keeps what it received in whole chunks (10 MB); the tiny model's weights are 6 MB.
    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 1 << 20)
    hub.drop_once.add("model.safetensors")
    plan = plan_for(hub, tmp_path)
    assert plan.sha == hub.repos["acme/tiny-llama"].sha and "model.safetensors" in plan.files
    assert plan.license == "apache-2.0"
    seen, finished = [], []
    target = hub_download(plan, target_dir=tmp_path / "model", endpoint=hub.endpoint, on_bytes=seen.append,
                          on_file=finished.append)
    assert (target / "model.safetensors").read_bytes() == (tiny_model / "model.safetensors").read_bytes()
    assert sorted(finished) == sorted(plan.files)
    ranged = [r for method, path, r in hub.requests if method == "GET" and path.endswith("model.safetensors") and r]
    assert ranged, "the second try asks for the rest only (a Range request)"
    assert sum(seen) >= plan.files["model.safetensors"]

    info = describe_model_dir(target)
    assert info["family"] == "Llama" and info["proven"] and info["architecture"] == "LlamaForCausalLM"
    assert info["parameters"] > 0 and info["context_length"] == 512 and info["dtype"] == "F32"
    assert info["chat_template"] is True and info["size_bytes"] >= (tiny_model / "model.safetensors").stat().st_size


def test_a_cancel_stops_within_a_chunk_and_the_next_try_continues(hub, tmp_path, tiny_model):
    plan = plan_for(hub, tmp_path)
    with pytest.raises(DownloadCancelled):
        hub_download(plan, target_dir=tmp_path / "model", endpoint=hub.endpoint, cancelled=lambda: True)
    assert not (tmp_path / "model" / "model.safetensors").exists()
    target = hub_download(plan, target_dir=tmp_path / "model", endpoint=hub.endpoint)
    assert (target / "model.safetensors").read_bytes() == (tiny_model / "model.safetensors").read_bytes()


@pytest.mark.parametrize("repo_id, revision, token, expected", [
    ("acme/nothing", "main", None, "no model 'acme/nothing'"),
    ("acme/tiny-llama", "v9", None, "has no revision 'v9'"),
    ("acme/gated", "main", None, "is gated: accept its conditions"),
    ("acme/gated", "main", "wrong", "this token has no access"),
])
def test_what_cannot_be_downloaded_is_refused_before_any_weight(hub, tmp_path, tiny_model, repo_id, revision,
                                                                token, expected):
    hub.repos["acme/gated"] = Repo(files=model_repo_files(tiny_model), gated_token="hf_right")
    with pytest.raises(TuningError, match=expected):
        plan_for(hub, tmp_path, repo_id=repo_id, revision=revision, token=token)
    assert not any(path.endswith(".safetensors") for _, path, _ in hub.requests)


def test_a_gated_repo_downloads_with_the_right_token(hub, tmp_path, tiny_model):
    hub.repos["acme/gated"] = Repo(files=model_repo_files(tiny_model), gated_token="hf_right")
    plan = plan_for(hub, tmp_path, repo_id="acme/gated", token="hf_right")
    assert plan.gated
    hub_download(plan, target_dir=tmp_path / "model", endpoint=hub.endpoint, token="hf_right")
    assert (tmp_path / "model" / "model.safetensors").is_file()


def _with_config(files: dict, **changes) -> dict:
    config = json.loads(files["config.json"])
    config.update(changes)
    return {**files, "config.json": json.dumps(config).encode()}


def test_remote_code_unknown_architectures_and_pickles_are_refused(hub, tmp_path, tiny_model):
    files = model_repo_files(tiny_model)
    hub.repos["acme/remote"] = Repo(files=_with_config(files, auto_map={"AutoModelForCausalLM": "m.Model"}))
    hub.repos["acme/vision"] = Repo(files=_with_config(files, model_type="vit", architectures=["ViTModel"]))
    pickled = {name: data for name, data in files.items() if not name.endswith(".safetensors")}
    hub.repos["acme/pickled"] = Repo(files={**pickled, "pytorch_model.bin": b"\x80\x04 not really"})
    with pytest.raises(TuningError, match="does not run a repository's code"):
        plan_for(hub, tmp_path, repo_id="acme/remote")
    with pytest.raises(TuningError, match="architecture 'vit'"):
        plan_for(hub, tmp_path / "b", repo_id="acme/vision")
    # Gemma 3 4B and up: transformers lists gemma3 among causal LMs, but the checkpoint is an image-text model
    hub.repos["acme/gemma3-4b"] = Repo(files=_with_config(files, model_type="gemma3", vision_config={
        "model_type": "siglip_vision_model"}, architectures=["Gemma3ForConditionalGeneration"]))
    with pytest.raises(TuningError, match="Gemma3ForConditionalGeneration is an image-text model .* gemma-3-1b"):
        plan_for(hub, tmp_path / "e", repo_id="acme/gemma3-4b")
    with pytest.raises(TuningError, match="only pickled weights"):
        plan_for(hub, tmp_path / "c", repo_id="acme/pickled")
    assert "pytorch_model.bin" in plan_for(hub, tmp_path / "d", repo_id="acme/pickled", allow_pickle=True).files


def test_a_disk_without_room_is_refused_before_downloading(hub, tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(TuningError, match="GiB free"):
        plan_for(hub, tmp_path)
