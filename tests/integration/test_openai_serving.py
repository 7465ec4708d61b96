"""The OpenAI-compatible endpoint on the real stack, driven by the official
``openai`` client: uvicorn relays the playground worker's pieces (a
separate Celery process) from Redis, streamed and whole, for a trained
adapter and a base model; a bad model name and another team's model are
OpenAI's 404."""

import json

import openai
import pytest

from tests.stack import OUTSIDER

pytestmark = pytest.mark.integration

PAIRS = "".join(json.dumps({"instruction": f"Say {word}.", "output": f"{word.capitalize()}!"}) + "\n"
                for word in ["hello", "yes", "blue", "green"])
TOKEN = """
from django.contrib.auth import get_user_model
from studio.accounts.services import api_token_create
print(api_token_create(user=get_user_model().objects.get(username={username!r}), name="openai client")[1])
"""


def _client(stack, username: str) -> openai.OpenAI:
    raw = stack.manage("shell", "-c", TOKEN.format(username=username)).strip().splitlines()[-1]
    return openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key=raw, max_retries=0, timeout=300)


@pytest.fixture(scope="module")
def adapter(stack):
    """A finished training job's adapter, as the model id /v1/models names it."""
    admin = stack.login()
    job_id = stack.start_job(admin, stack.upload(admin, "openai-pairs.jsonl", PAIRS), max_steps=2)
    state = stack.wait_for_status(admin, job_id, {"succeeded", "failed", "cancelled"}, timeout=300)
    assert state["status"] == "succeeded", state["events"][-3:]
    return "artifact-%d" % next(e for e in state["events"] if e["kind"] == "artifact")["data"]["artifact_id"]


@pytest.fixture(scope="module")
def client(stack):
    return _client(stack, "admin")


def test_models_lists_the_adapter_and_the_base_model(stack, client, adapter):
    ids = [model.id for model in client.models.list()]
    assert adapter in ids and f"base-{stack.tiny_model_id}" in ids
    assert client.models.retrieve(adapter).owned_by == "default"


def test_chat_whole_and_streamed_agree(client, adapter):
    messages = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Say hello."}]
    whole = client.chat.completions.create(model=adapter, messages=messages, max_tokens=6, temperature=0)
    assert whole.object == "chat.completion" and whole.model == adapter
    assert whole.choices[0].message.role == "assistant"
    assert whole.usage.completion_tokens <= 6 and whole.usage.prompt_tokens > 5
    assert whole.choices[0].finish_reason in ("stop", "length")

    stream = client.chat.completions.create(model=adapter, messages=messages, max_tokens=6, temperature=0,
                                            stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(pieces) >= 1 and "".join(pieces) == whole.choices[0].message.content  # greedy: the same reply
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def _plain_generate(stack, inputs_of, tokens: int) -> str:
    """What plain transformers ``generate`` answers on the stack's tiny model (greedy)."""
    import torch

    from tuning.loading import load_artifact

    model, tokenizer = load_artifact(stack.tiny_model_path)
    inputs = inputs_of(tokenizer)
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=tokens, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    return tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)


def test_plain_completion_of_a_base_model_streams(stack, client):
    from tuning.generate import encode_text

    model = f"base-{stack.tiny_model_id}"
    whole = client.completions.create(model=model, prompt="Once upon a time", max_tokens=5, temperature=0)
    assert whole.object == "text_completion" and whole.usage.completion_tokens <= 5
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model=model, prompt="Once upon a time", max_tokens=5, temperature=0, stream=True))
    assert streamed == whole.choices[0].text and streamed
    assert streamed == _plain_generate(stack, lambda tokenizer: encode_text(tokenizer, "Once upon a time"), 5)


def test_a_streamed_chat_is_plain_generate_in_token_sized_pieces(stack, client):
    """Greedy: the served reply is the one plain ``generate`` gives; it arrives in several messages
    (tokens written while one is sent travel together, so there may be fewer than tokens)."""
    from tuning.generate import encode_messages

    messages = [{"role": "user", "content": "Write a short story about a dragon."}]
    chunks = list(client.chat.completions.create(model=f"base-{stack.tiny_model_id}", messages=messages,
                                                 max_tokens=16, temperature=0, stream=True,
                                                 stream_options={"include_usage": True}))
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert "".join(pieces) == _plain_generate(stack, lambda tokenizer: encode_messages(tokenizer, messages), 16)
    assert 1 < len(pieces) <= chunks[-1].usage.completion_tokens


def test_a_bad_model_name_and_another_teams_model_are_404(stack, client, adapter):
    with pytest.raises(openai.NotFoundError) as unknown:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "Hi"}])
    assert unknown.value.code == "model_not_found" and unknown.value.param == "model"
    rival = _client(stack, OUTSIDER[0])
    with pytest.raises(openai.NotFoundError) as theirs:
        rival.chat.completions.create(model=adapter, messages=[{"role": "user", "content": "Hi"}], stream=True)
    assert theirs.value.code == "model_not_found"
    assert adapter not in [model.id for model in rival.models.list()]
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key="ts_nope_nope", max_retries=0).models.list()
