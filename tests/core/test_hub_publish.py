"""Publishing through huggingface_hub's upload API to a hub on 127.0.0.1
(tests/hub_server.py): the repo, its files and card as the hub stores them,
a re-publish as a new commit (or branch) that sends only what changed, every
refusal before a byte of a file moves, a cancel, and the round trip: the
adapter loads with PeftModel.from_pretrained(repo) with HF_ENDPOINT pointing
at the same hub."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.hub_server import HubServer, Repo
from tuning.errors import TuningError
from tuning.hub_card import CardFacts, hub_card, redistribution_refusal, split_front_matter
from tuning.hub_publish import PublishCancelled, folder_files, publish_folder, repo_files

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def hub():
    server = HubServer()
    server.endpoint = server.start()
    server.add_user("hf_alice_write", "alice", orgs={"acme": "write", "museum": "read"})
    server.add_user("hf_alice_read", "alice", role="read")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def adapter(tiny_model, tmp_path_factory) -> Path:
    """A LoRA adapter of the tiny Llama, saved as peft saves it, with a card like the studio's."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model),
                           LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    folder = tmp_path_factory.mktemp("adapter")
    model.save_pretrained(folder)
    (folder / "README.md").write_text("---\nbase_model: /srv/media/models/tiny\nlibrary_name: peft\ntags:\n- lora\n"
                                      "---\n\n# LoRA adapter for tiny\n\n```python\nmodel = PeftModel.from_pretrained("
                                      'base, "path/to/this/folder")\n```\n')
    return folder


FACTS = CardFacts(title="tiny lora", kind="adapter", base_model="acme/tiny-llama", license="apache-2.0",
                  datasets=[{"name": "support-chats", "sha256": "ab" * 32}],
                  evaluations=[{"dataset": "held-out", "eval_loss": 1.25, "perplexity": 3.49}],
                  lineage=["tiny lora: adapter, train job #7, method lora"])


def files_for(folder: Path, repo_id: str, facts: CardFacts = FACTS):
    return lambda resolved: repo_files(folder, facts=facts, repo_id=resolved)


def paths(hub, *methods) -> list[str]:
    return [path for method, path, _ in hub.requests if method in methods]


def test_an_adapter_is_published_with_its_card_and_loads_from_the_hub_with_peft(hub, adapter, tiny_model, tmp_path):
    progress, phases = [], []
    result = publish_folder(files_for(adapter, "alice/tiny-lora"), repo_id="tiny-lora", token="hf_alice_write",
                            endpoint=hub.endpoint, private=False, commit_message="Publish tiny lora",
                            on_bytes=lambda done, total: progress.append((done, total)), on_phase=phases.append)
    repo = hub.repos["alice/tiny-lora"]  # no owner given: the token's user
    assert result.repo_id == "alice/tiny-lora" and result.commit_sha == repo.sha
    assert repo.commits[-1]["summary"] == "Publish tiny lora"
    weights = (adapter / "adapter_model.safetensors").read_bytes()
    assert repo.files["adapter_model.safetensors"] == weights
    assert any(path.startswith("/lfs/") for path in paths(hub, "PUT")), "the weights went as a large file"
    assert progress[-1][0] == progress[-1][1] >= len(weights) and phases[-1] == "Committing"
    assert json.loads(repo.files["adapter_config.json"])["base_model_name_or_path"] == "acme/tiny-llama"

    meta, body = split_front_matter(repo.files["README.md"].decode())
    assert meta["base_model"] == "acme/tiny-llama" and meta["base_model_relation"] == "adapter"
    assert meta["library_name"] == "peft" and meta["license"] == "apache-2.0"
    assert {"tuning-studio", "lora"} <= set(meta["tags"]) and meta["pipeline_tag"] == "text-generation"
    assert 'PeftModel.from_pretrained(base, "alice/tiny-lora")' in body and "/srv/media" not in body
    assert "| held-out | 1.25 | 3.49 |" in body and "support-chats (sha256 `abab" in body
    assert "train job #7" in body and "apache-2.0, the base model's" in body

    check = textwrap.dedent(f"""
        import torch
        from peft import PeftModel
        from transformers import AutoModelForCausalLM
        ids = torch.tensor([[1, 5, 9, 14]])
        hub = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained({str(tiny_model)!r}), "alice/tiny-lora")
        local = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained({str(tiny_model)!r}), {str(adapter)!r})
        assert torch.equal(hub(ids).logits, local(ids).logits)
        print("same logits")
    """)
    env = {**os.environ, "HF_ENDPOINT": hub.endpoint, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "0"}
    done = subprocess.run([sys.executable, "-c", check], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "same logits" in done.stdout, done.stderr[-2000:]
    assert any(path.endswith("adapter_model.safetensors") for path in paths(hub, "GET")), "read from the hub"


def test_a_republish_commits_again_sending_only_what_changed_and_a_branch_leaves_main_alone(hub, adapter):
    first = publish_folder(files_for(adapter, "acme/tiny-lora"), repo_id="acme/tiny-lora", token="hf_alice_write",
                           endpoint=hub.endpoint, commit_message="v1")
    puts = len(paths(hub, "PUT"))
    newer = FACTS.__class__(**{**FACTS.__dict__, "evaluations": [{"dataset": "held-out", "eval_loss": 0.5}]})
    second = publish_folder(files_for(adapter, "acme/tiny-lora", newer), repo_id="acme/tiny-lora",
                            token="hf_alice_write", endpoint=hub.endpoint, commit_message="v2")
    repo = hub.repos["acme/tiny-lora"]
    assert second.commit_sha != first.commit_sha == repo.commits[0]["sha"] and repo.sha == second.commit_sha
    assert second.uploaded == ["README.md"] and "adapter_model.safetensors" in second.unchanged
    assert len(paths(hub, "PUT")) == puts, "the unchanged weights were not sent again"
    assert b"| held-out | 0.5 |" in repo.files["README.md"]

    branch = publish_folder(files_for(adapter, "acme/tiny-lora", FACTS), repo_id="acme/tiny-lora",
                            token="hf_alice_write", endpoint=hub.endpoint, branch="experiment", commit_message="v3")
    assert repo.sha == second.commit_sha, "main did not move"
    assert repo.refs["experiment"][0] == branch.commit_sha and branch.repo_url.endswith("/tree/experiment")
    assert b"| held-out | 1.25 |" in repo.refs["experiment"][1]["README.md"]


@pytest.mark.parametrize("token, repo_id, expected", [
    (None, "alice/x", "needs a hub access token"),
    ("hf_alice_read", "alice/x", "is read-only"),
    ("hf_unknown", "alice/x", "did not accept the access token"),
    ("hf_alice_write", "meta/x", "belongs to 'meta'.*alice's \\(member of acme, museum\\)"),
    ("hf_alice_write", "museum/x", "may only read in the organisation 'museum'"),
])
def test_refusals_come_before_anything_is_created_or_uploaded(hub, adapter, token, repo_id, expected):
    hub.repos["meta/x"] = Repo(files={"README.md": b"theirs"})
    with pytest.raises(TuningError, match=expected):
        publish_folder(files_for(adapter, repo_id), repo_id=repo_id, token=token, endpoint=hub.endpoint,
                       commit_message="m")
    assert not paths(hub, "POST", "PUT"), "nothing was created or sent"
    assert hub.repos["meta/x"].files == {"README.md": b"theirs"}


def test_a_file_the_hub_would_store_without_large_file_support_is_refused_before_uploading(hub, tmp_path):
    hub.lfs = False
    hub.repos["alice/big"] = Repo(files={})
    (tmp_path / "weights.safetensors").write_bytes(b"\1" * 11_000_000)
    with pytest.raises(TuningError, match="weights.safetensors is 11 MB .* without large-file \\(LFS\\) support"):
        publish_folder(folder_files(tmp_path), repo_id="alice/big", token="hf_alice_write", endpoint=hub.endpoint,
                       commit_message="m")
    assert paths(hub, "POST") == ["/api/models/alice/big/preupload/main"] and not paths(hub, "PUT")


def test_a_cancel_stops_the_upload_within_a_chunk_and_commits_nothing(hub, adapter):
    reads = []

    def cancelled() -> bool:
        return len(reads) > 2

    with pytest.raises(PublishCancelled):
        publish_folder(files_for(adapter, "alice/c"), repo_id="alice/c", token="hf_alice_write", endpoint=hub.endpoint,
                       commit_message="m", on_bytes=lambda done, total: reads.append(done), cancelled=cancelled)
    assert not any("/commit/" in path for path in paths(hub, "POST"))


def test_a_gguf_repo_holds_the_gguf_files_and_a_card_saying_how_llama_cpp_and_ollama_pull_it(tmp_path):
    facts = CardFacts(title="q8", kind="model", format="gguf", base_model="acme/tiny-llama", relation="quantized",
                      license="llama3.1", gated=True)
    (tmp_path / "README.md").write_text("---\nlibrary_name: gguf\nbase_model: ./local\n---\n# Q8_0 of tiny\n")
    for name in ("model-q8_0.gguf", "config.json", "quantize_report.json"):
        (tmp_path / name).write_bytes(b"GGUF" if name.endswith(".gguf") else b"{}")
    files = repo_files(tmp_path, facts=facts, repo_id="alice/tiny-GGUF")
    assert sorted(files) == ["README.md", "model-q8_0.gguf"]
    meta, body = split_front_matter(files["README.md"].decode())
    assert meta["library_name"] == "gguf" and {"gguf", "llama.cpp"} <= set(meta["tags"])
    assert meta["base_model"] == "acme/tiny-llama" and meta["base_model_relation"] == "quantized"
    assert "llama-cli -hf alice/tiny-GGUF" in body and "ollama run hf.co/alice/tiny-GGUF:Q8_0" in body
    assert "a gated model" in body


@pytest.mark.parametrize("licence, gated, kind, private, expected", [
    ("cc-by-nc-nd-4.0", False, "adapter", True, "allows no derivative works"),
    ("cc-by-nd-4.0", False, "model", False, "allows no derivative works"),
    ("llama3.1", True, "model", False, "the base model is gated"),
    ("llama3.1", True, "model", True, ""),
    ("llama3.1", True, "adapter", False, ""),
    ("apache-2.0", False, "model", False, ""),
])
def test_what_the_base_models_terms_forbid_sharing(licence, gated, kind, private, expected):
    facts = CardFacts(title="t", kind=kind, license=licence, gated=gated)
    refusal = redistribution_refusal(facts, private=private)
    assert (expected in refusal) if expected else refusal == ""


def test_the_card_keeps_a_readme_without_header_and_drops_a_local_base_path():
    meta, body = split_front_matter(hub_card("", facts=CardFacts(title="folder model", kind="model"),
                                             repo_id="alice/m", files=["model.safetensors"]))
    assert "base_model" not in meta and meta["library_name"] == "transformers"
    assert body.lstrip().startswith("# folder model") and json.dumps(meta)


def test_the_command_line_publishes_a_folder_with_the_token_from_the_environment(hub, adapter):
    def cli(token: str, *args: str) -> subprocess.CompletedProcess:
        env = {**os.environ, "HF_ENDPOINT": hub.endpoint, "HF_TOKEN": token}
        return subprocess.run([sys.executable, "-m", "tuning", "publish", str(adapter), *args], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=120)

    refused = cli("hf_alice_read", "alice/cli-lora")
    assert refused.returncode == 2 and "is read-only" in refused.stderr and "alice/cli-lora" not in hub.repos
    done = cli("hf_alice_write", "cli-lora", "--base-model", "acme/tiny-llama", "--license", "apache-2.0",
               "--message", "From the shell")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    repo = hub.repos["alice/cli-lora"]
    assert result["commit"] == repo.sha and repo.private and repo.commits[-1]["summary"] == "From the shell"
    meta, _ = split_front_matter(repo.files["README.md"].decode())
    assert meta["base_model"] == "acme/tiny-llama" and meta["license"] == "apache-2.0"


def test_a_bottleneck_adapters_card_names_the_studios_loader_not_peft(tmp_path):
    """Houlsby/Pfeiffer/Compacter adapters carry no adapter_config.json: the folder still reads as an adapter
    of the base its config names, and the Hub header says the studio loads it (no peft, no lora tag)."""
    from tuning.hub_card import facts_from_folder

    (tmp_path / "bottleneck_adapter.json").write_text(json.dumps({
        "method": "bottleneck", "settings": {}, "base_model_name_or_path": "acme/tiny-llama"}))
    (tmp_path / "adapter_model.safetensors").write_bytes(b"")
    facts = facts_from_folder(tmp_path)
    assert (facts.kind, facts.base_model, facts.relation) == ("adapter", "acme/tiny-llama", "adapter")
    meta, _ = split_front_matter(hub_card("", facts=facts, repo_id="alice/houlsby",
                                          files=["adapter_model.safetensors", "bottleneck_adapter.json"]))
    assert meta["library_name"] == "tuning-studio" and "lora" not in meta["tags"]
    assert meta["base_model"] == "acme/tiny-llama" and meta["base_model_relation"] == "adapter"
