"""Judged comparisons (tuning.judge) against a fake OpenAI-compatible judge over real HTTP, and the
forgetting check (tuning.forgetting) on a deliberately damaged model."""

import math

import pytest

from tests.judge_server import JudgeServer


def damaged_copy(tiny_model, dest, *, noise: float, seed: int = 1):
    """The tiny model with Gaussian noise added to every weight, saved as another model."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    torch.manual_seed(seed)
    with torch.no_grad():
        for weight in model.parameters():
            weight.add_(torch.randn_like(weight) * noise)
    model.save_pretrained(dest, safe_serialization=True)
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(dest)
    return dest


@pytest.fixture(scope="module")
def other_model(tiny_model, tmp_path_factory):
    return damaged_copy(tiny_model, tmp_path_factory.mktemp("other") / "model", noise=0.3)


PROMPTS = ["Name a colour.", "Say hello.", "Count to three.", "What is the capital of France?", "Write a word."]


def judged(tiny_model, other_model, server, **extra):
    from tuning.events import MemorySink
    from tuning.judge import JudgeConfig, run_judge

    config = JudgeConfig.from_dict({"model_a_base": str(tiny_model), "model_b_path": str(other_model),
                                    "model_b_base": str(tiny_model), "label_a": "base", "label_b": "tuned",
                                    "prompts": PROMPTS, "max_new_tokens": 6, "judge_url": server.url,
                                    "judge_model": "fake-judge", **extra})
    sink = MemorySink()
    return run_judge(config, sink, api_key="sk-test-key"), sink


def test_a_judge_that_always_prefers_the_first_position_gives_only_ties(tiny_model, other_model):
    with JudgeServer(policy="always_a") as server:
        result, sink = judged(tiny_model, other_model, server)
    assert result.status == "succeeded"
    assert [p["verdict_a_first"] for p in result.pairs] == ["A"] * 5
    assert [p["verdict_b_first"] for p in result.pairs] == ["A"] * 5
    assert result.summary["ties"] == 5 and result.summary["wins"] == result.summary["losses"] == 0
    # every pair judged twice, over HTTP, with the team's key and the named model
    assert len(server.requests) == 10
    assert {r["authorization"] for r in server.requests} == {"Bearer sk-test-key"}
    assert {r["model"] for r in server.requests} == {"fake-judge"}
    [event] = sink.of_kind("judged")
    assert event.summary == result.summary and len(event.pairs) == 5


def test_a_consistent_judge_gives_wins_and_losses_by_its_preference(tiny_model, other_model):
    with JudgeServer(policy="longer") as server:
        result, _ = judged(tiny_model, other_model, server)
    expected = ["b" if len(p["answer_b"]) > len(p["answer_a"]) else "a" if len(p["answer_a"]) > len(p["answer_b"])
                else "tie" for p in result.pairs]
    assert [p["outcome"] for p in result.pairs] == expected
    assert any(outcome != "tie" for outcome in expected), "the two models should answer differently"
    summary = result.summary
    assert (summary["wins"], summary["ties"], summary["losses"]) == (
        expected.count("b"), expected.count("tie"), expected.count("a"))
    low, high = summary["wins_interval"]
    assert low <= summary["wins_share"] <= high


def test_a_reply_that_names_no_verdict_counts_as_a_tie(tiny_model, other_model):
    with JudgeServer(policy="garbled") as server:
        result, _ = judged(tiny_model, other_model, server)
    assert {p["verdict_a_first"] for p in result.pairs} == {None}
    assert result.summary["ties"] == 5


def test_an_unreachable_judge_fails_with_the_url(tiny_model, other_model):
    from tuning.judge import JudgeError

    with JudgeServer() as server:
        url = server.url
    with pytest.raises(JudgeError, match="cannot reach the judge at http://127.0.0.1"):
        judged(tiny_model, other_model, type("Gone", (), {"url": url})())


def test_the_judge_can_be_a_model_of_the_studio(tiny_model, other_model):
    from tuning.events import MemorySink
    from tuning.judge import JudgeConfig, run_judge

    config = JudgeConfig.from_dict({"model_a_base": str(tiny_model), "model_b_path": str(other_model),
                                    "model_b_base": str(tiny_model), "prompts": PROMPTS[:2], "max_new_tokens": 4,
                                    "judge_base": str(tiny_model), "judge_path": str(other_model),
                                    "judge_max_tokens": 3})
    result = run_judge(config, MemorySink())
    # a random tiny model names no verdict: read as ties, its replies kept to read
    assert result.summary["pairs"] == 2 and all(isinstance(p["reply_a_first"], str) for p in result.pairs)


@pytest.mark.parametrize("reply, verdict", [
    ("A", "A"), ("b", "B"), ("Tie.", "tie"), ("Answer B", "B"), ("  [[A]] because it is clearer", "A"),
    ("After thinking: [[B]]", "B"), ("Neither", None), ("", None), ("Both are fine", None)])
def test_verdicts_are_read_from_the_judges_reply(reply, verdict):
    from tuning.judge import parse_verdict

    assert parse_verdict(reply) == verdict


def test_position_swap_and_wilson_interval():
    from tuning.judge import pair_outcome, summarize, wilson_interval

    assert pair_outcome("B", "A") == "b" and pair_outcome("A", "B") == "a"
    assert pair_outcome("A", "A") == "tie" and pair_outcome("B", "tie") == "tie" and pair_outcome(None, "A") == "tie"
    # 8 of 10: Wilson's 95% interval is (0.490, 0.943) (e.g. statsmodels proportion_confint(8, 10, method="wilson"))
    low, high = wilson_interval(8, 10)
    assert math.isclose(low, 0.4902, abs_tol=1e-4) and math.isclose(high, 0.9433, abs_tol=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    summary = summarize(["b"] * 8 + ["a", "tie"])
    assert (summary["wins"], summary["losses"], summary["ties"]) == (8, 1, 1)
    assert summary["wins_interval"] == [0.4902, 0.9433]


def test_judge_settings_are_checked_with_the_field_named():
    from tuning.errors import ConfigError
    from tuning.judge import JudgeConfig

    with pytest.raises(ConfigError) as caught:
        JudgeConfig.from_dict({"model_a_base": "m", "model_b_base": "m", "prompts": ["x"]})
    assert "judge_url" in caught.value.errors
    with pytest.raises(ConfigError) as caught:
        JudgeConfig.from_dict({"model_a_base": "m", "model_b_base": "m", "judge_url": "ftp://x", "judge_model": "j"})
    assert set(caught.value.errors) == {"judge_url", "prompts"}


def test_the_forgetting_warning_fires_on_a_damaged_model_and_not_on_the_base(tiny_model, tmp_path):
    from tuning.events import MemorySink
    from tuning.forgetting import ForgettingConfig, run_forgetting

    damaged = damaged_copy(tiny_model, tmp_path / "damaged", noise=0.3)
    sink = MemorySink()
    same = run_forgetting(ForgettingConfig.from_dict({"artifact_path": str(tiny_model),
                                                      "base_model": str(tiny_model)}), sink)
    assert same.status == "succeeded" and not same.regressed and abs(same.change_pct) < 1e-6
    [event] = sink.of_kind("forgetting")
    assert event.text == "general.txt" and event.tokens > 500 and not event.regressed

    sink = MemorySink()
    worse = run_forgetting(ForgettingConfig.from_dict({"artifact_path": str(damaged), "base_model": str(tiny_model),
                                                       "threshold_pct": 10}), sink)
    assert worse.regressed and worse.change_pct > 10
    [event] = sink.of_kind("forgetting")
    assert event.regressed and event.perplexity_tuned > event.perplexity_base * 1.1
    assert any(e.level == "warning" and "forgotten" in e.message for e in sink.of_kind("log"))
