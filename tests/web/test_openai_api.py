"""/v1/, the OpenAI-compatible endpoint, up to the worker: tokens, which
models a team may use, OpenAI's error shape and the checks of a body; and
the worker's side (worker/serving.py) over a real in-memory channel layer.
The whole path through a running worker, with the official client, is
tests/integration/test_openai_serving.py."""

import json
import socket

import pytest
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

from studio.accounts.services import api_token_create
from worker.playground import WARM
from worker.serving import StopCutter, serve_completion

# Fixtures: an adapter of the member's team (artifact, dataset, job) and the member's token.
from tests.web.test_api import artifact, bearer, dataset, job, token  # noqa: F401


@pytest.fixture
def outsider_token(outsider):
    return api_token_create(user=outsider, name="rival script")[1]


def chat(client, raw_token, **body):
    return client.post("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}], **body},
                       content_type="application/json", **bearer(raw_token))


def test_models_lists_the_teams_artifacts_and_the_shared_base_models(client, token, outsider_token, artifact,
                                                                      tiny_base_model):
    listed = client.get("/v1/models", **bearer(token)).json()
    assert listed["object"] == "list"
    ids = [m["id"] for m in listed["data"]]
    assert ids == [f"artifact-{artifact.pk}", f"base-{tiny_base_model.pk}"]
    assert {m["owned_by"] for m in listed["data"]} == {artifact.team.slug, "studio"}
    assert client.get(f"/v1/models/artifact-{artifact.pk}", **bearer(token)).json()["id"] == ids[0]
    # Another team sees the shared base model, never the member's artifact.
    theirs = [m["id"] for m in client.get("/v1/models", **bearer(outsider_token)).json()["data"]]
    assert theirs == [f"base-{tiny_base_model.pk}"]


def test_the_bundled_encoder_is_not_served(client, token, tiny_model):
    from studio.catalog.services import base_model_register
    from tuning.models import BUNDLED_ENCODER_ID

    encoder = base_model_register(name="encoder", source="bundled", ref=str(tiny_model),
                                  upstream_id=BUNDLED_ENCODER_ID)
    assert f"base-{encoder.pk}" not in [m["id"] for m in client.get("/v1/models", **bearer(token)).json()["data"]]
    assert chat(client, token, model=f"base-{encoder.pk}").json()["error"]["code"] == "model_not_found"


def test_without_a_token_the_answer_is_openais_401(client, db):
    response = client.get("/v1/models")
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "invalid_request_error"
    bad = client.get("/v1/models", **bearer("ts_nope_nope"))
    assert bad.status_code == 401 and bad.json()["error"]["code"] == "invalid_api_key"


def test_unknown_and_another_teams_model_are_the_same_404(client, token, outsider_token, artifact):
    unknown = chat(client, token, model="artifact-999999")
    theirs = chat(client, outsider_token, model=f"artifact-{artifact.pk}")
    for response, name in ((unknown, "artifact-999999"), (theirs, f"artifact-{artifact.pk}")):
        assert response.status_code == 404
        error = response.json()["error"]
        assert error["code"] == "model_not_found" and error["param"] == "model"
        assert error["message"].startswith(f"The model '{name}' does not exist or you do not have access to it")
    assert client.get(f"/v1/models/artifact-{artifact.pk}", **bearer(outsider_token)).status_code == 404
    assert chat(client, token, model="gpt-4o").json()["error"]["code"] == "model_not_found"


@pytest.mark.parametrize("body, param, words", [
    ({"messages": []}, "messages", "non-empty list"),
    ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role", "must be one of"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "messages[0].content", "text only"),
    ({"temperature": 5}, "temperature", "from 0.0 to 2.0"),
    ({"max_tokens": 0}, "max_tokens", "from 1 to 1024"),
    ({"max_tokens": "ten"}, "max_tokens", "whole number"),
    ({"n": 3}, "n", "n must be 1"),
    ({"stop": ["", "x"]}, "stop", "non-empty strings"),
    ({"stream": "yes"}, "stream", "true or false"),
])
def test_a_bad_body_names_the_field(client, token, tiny_base_model, body, param, words):
    response = chat(client, token, model=f"base-{tiny_base_model.pk}", **body)
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["param"] == param and words in error["message"] and error["type"] == "invalid_request_error"


def test_completions_take_one_text_prompt(client, token, tiny_base_model):
    response = client.post("/v1/completions", {"model": f"base-{tiny_base_model.pk}", "prompt": [1, 2, 3]},
                           content_type="application/json", **bearer(token))
    assert response.status_code == 400 and response.json()["error"]["param"] == "prompt"
    assert client.get("/v1/completions", **bearer(token)).status_code == 405
    assert client.get("/v1/embeddings", **bearer(token)).json()["error"]["message"].startswith(
        "No endpoint /v1/embeddings")


def test_a_browser_session_cannot_generate(member_client, tiny_base_model):
    response = member_client.post("/v1/chat/completions", {"model": f"base-{tiny_base_model.pk}",
                                                           "messages": [{"role": "user", "content": "x"}]},
                                  content_type="application/json")
    assert response.status_code == 401 and "API token" in response.json()["error"]["message"]


# ---- the worker's side ------------------------------------------------------

def _serve(request: dict) -> list[dict]:
    layer = get_channel_layer()
    channel = async_to_sync(layer.new_channel)()
    serve_completion(channel, {"base_model": "", "temperature": 0.0, "top_p": 1.0, "stop": [], **request})
    messages = []
    while True:
        messages.append(async_to_sync(layer.receive)(channel))
        if messages[-1]["type"] != "serving.piece":
            return messages


@pytest.fixture
def served(tiny_model):
    yield str(tiny_model)
    WARM.unload_idle(0)


def test_the_worker_streams_a_chat_reply_with_its_token_counts(served):
    *pieces, done = _serve({"path": served, "max_tokens": 5,
                            "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                                         {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "?"}]})
    assert pieces and all(p["type"] == "serving.piece" and p["text"] for p in pieces)
    assert done == {"type": "serving.done", "finish_reason": "length", "prompt_tokens": done["prompt_tokens"],
                    "completion_tokens": 5}
    assert done["prompt_tokens"] > 10  # the whole conversation went through the chat template


def test_the_worker_cuts_a_completion_at_a_stop_string(served):
    *pieces, done = _serve({"path": served, "max_tokens": 12, "prompt": "Once upon a time"})
    text = "".join(p["text"] for p in pieces)
    stop = text[len(text) // 2:len(text) // 2 + 2]  # a string the greedy reply is known to contain
    *cut, stopped = _serve({"path": served, "max_tokens": 12, "prompt": "Once upon a time", "stop": [stop]})
    assert "".join(p["text"] for p in cut) == text[:text.index(stop)]
    assert stopped["finish_reason"] == "stop" and stopped["completion_tokens"] <= done["completion_tokens"]


def test_a_missing_model_folder_is_an_error_message_not_a_hang(tmp_path):
    [error] = _serve({"path": str(tmp_path / "gone"), "max_tokens": 4, "prompt": "x"})
    assert error["type"] == "serving.error" and error["message"]


def test_stop_cutter_holds_back_what_may_begin_a_stop_string():
    cutter = StopCutter(["END"])
    assert [cutter.feed(p) for p in ("abc E", "N", "D tail")] == ["abc", " ", ""]
    assert cutter.stopped and cutter.rest() == ""
    open_ended = StopCutter(["###"])
    assert open_ended.feed("one #") == "one" and open_ended.feed("two") == " #t" and open_ended.rest() == "wo"


@pytest.fixture
def redis_down(settings):
    """The channel layer the replies come back on is a Redis on a loopback port where nothing listens (Redis
    stopped): a real refused connection."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    hosts = [{"address": f"redis://127.0.0.1:{port}", "socket_connect_timeout": 2}]
    settings.CHANNEL_LAYERS = {**settings.CHANNEL_LAYERS,
                               "default": {"BACKEND": "channels_redis.core.RedisChannelLayer",
                                           "CONFIG": {"hosts": hosts}}}


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_redis_down_is_a_503_in_openais_shape_not_a_500(client, token, tiny_base_model, redis_down, stream):
    response = chat(client, token, model=f"base-{tiny_base_model.pk}", stream=stream)
    if stream:  # the stream began before the reply was awaited: the error is its event
        assert response.status_code == 200

        async def read():
            return b"".join([part async for part in response.streaming_content])

        events = async_to_sync(read)().decode().split("\n\n")
        error = json.loads(events[1].removeprefix("data: "))["error"]
    else:
        assert response.status_code == 503
        error = response.json()["error"]
    assert error["type"] == "server_error" and "cannot reach Redis" in error["message"], error
