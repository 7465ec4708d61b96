import json
import xml.etree.ElementTree as ET

import pytest

from tuning.data.preview import render_preview
from tuning.data.readers import Example, Message
from tuning.data.sft import tokenize_example
from tuning.data.stats import histogram_svg, sink_progress, token_stats
from tuning.errors import ConfigError
from tuning.events import MemorySink
from tuning.models import load_tokenizer

END = "<|im_end|>"  # the tiny model's ChatML end-of-turn token (also its EOS)


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    return load_tokenizer(str(tiny_model))


def chat(*turns, row=1) -> Example:
    return Example(tuple(Message(role, content) for role, content in turns), row)


MULTI = chat(("system", "Be kind."), ("user", "What is 2+2?"), ("assistant", "Four."), ("user", "And 3+3?"),
             ("assistant", "Six, of course."), row=3)


def rendered(tokenizer, example: Example) -> str:
    return tokenizer.apply_chat_template([{"role": m.role, "content": m.content} for m in example.messages],
                                         tokenize=False)


def test_preview_segments_reproduce_the_text_and_mark_the_replies_as_loss(tokenizer):
    pair = Example.from_pair("Héllo wörld 😀, what is 2+2?", "Four 🙂.", row=1)
    rows = render_preview([pair, MULTI], tokenizer, max_length=512)
    assert [r["row"] for r in rows] == [1, 3]
    for row, example in zip(rows, (pair, MULTI)):
        assert "".join(s["text"] for s in row["segments"]) == rendered(tokenizer, example)
        assert not row["truncated"] and not any(s["cut"] for s in row["segments"])
        assert row["tokens"] == row["trained_tokens"]
    assert [s["text"] for s in rows[0]["segments"] if s["loss"]] == ["Four 🙂." + END]
    loss = [s["text"] for s in rows[1]["segments"] if s["loss"]]
    assert loss == ["Four." + END, "Six, of course." + END]  # each reply and the end-of-turn token after it
    prompt = "".join(s["text"] for s in rows[1]["segments"] if not s["loss"])
    assert "What is 2+2?" in prompt and "And 3+3?" in prompt and "Be kind." in prompt
    # consecutive segments alternate: equal flags were merged
    flags = [s["loss"] for s in rows[1]["segments"]]
    assert all(a != b for a, b in zip(flags, flags[1:]))
    json.dumps(rows)  # the page renders it


def test_preview_marks_the_cut_and_loss_on_prompt(tokenizer):
    full = tokenize_example(MULTI, tokenizer, max_length=10_000, loss_on_prompt=False)
    limit = len(full.input_ids) - 5
    [row] = render_preview([MULTI], tokenizer, max_length=limit)
    assert row["truncated"] and row["tokens"] == len(full.input_ids) and row["trained_tokens"] == limit
    assert row["segments"][-1]["cut"] and not row["segments"][-1]["loss"]
    assert "".join(s["text"] for s in row["segments"]) == rendered(tokenizer, MULTI)
    kept = "".join(s["text"] for s in row["segments"] if not s["cut"])
    assert len(tokenizer(kept, add_special_tokens=False)["input_ids"]) == limit
    [everything] = render_preview([MULTI], tokenizer, max_length=512, loss_on_prompt=True)
    assert [s["loss"] for s in everything["segments"]] == [True]
    assert everything["loss_tokens"] == everything["tokens"]


def test_preview_shows_only_the_first_rows(tokenizer):
    examples = [Example.from_pair(f"Question {i}?", f"Answer {i}.", row=i + 1) for i in range(8)]
    assert [r["row"] for r in render_preview(examples, tokenizer, max_length=256, rows=3)] == [1, 2, 3]


def test_token_stats_counts_lengths_and_truncation(tokenizer):
    examples = [Example.from_pair("Hi " * n, "Ok.", row=i + 1) for i, n in enumerate((1, 2, 5, 10, 20, 40, 80))]
    lengths = [len(tokenize_example(e, tokenizer, max_length=10_000, loss_on_prompt=False).input_ids)
               for e in examples]
    max_length = sorted(lengths)[4]  # the two longest rows go over
    stats = token_stats(examples, tokenizer, max_length=max_length, epochs=3, bins=5)
    assert stats.rows == 7 and sum(stats.histogram_counts) == 7
    assert len(stats.histogram_edges) == len(stats.histogram_counts) + 1 <= 6
    assert stats.histogram_edges[0] == min(lengths) and stats.histogram_edges[-1] > max(lengths)
    assert stats.truncated_rows == 2
    assert (stats.min_length, stats.max_length_seen, stats.total_tokens) == (min(lengths), max(lengths), sum(lengths))
    assert stats.median_length == sorted(lengths)[3] and stats.p95_length == max(lengths)
    # the two cut rows lose their reply entirely: training skips them
    assert stats.skipped_rows == 2
    assert stats.tokens_per_epoch == sum(sorted(lengths)[:5])
    assert stats.total_training_tokens == 3 * stats.tokens_per_epoch
    assert stats.loss_tokens == 5 * 3  # "Ok." + <|im_end|> is 3 tokens
    json.dumps(stats.to_dict())


def test_token_stats_refuses_bad_settings(tokenizer):
    with pytest.raises(ConfigError, match="max_length"):
        token_stats([MULTI], tokenizer, max_length=0)


def test_histogram_svg_is_xml_with_a_max_length_marker(tokenizer):
    examples = [Example.from_pair("Hi " * n, "Ok.", row=n) for n in range(1, 30)]
    stats = token_stats(examples, tokenizer, max_length=50, bins=10)
    svg = histogram_svg(stats, width=400, height=160)
    root = ET.fromstring(svg)
    ns = "{http://www.w3.org/2000/svg}"
    assert root.tag == f"{ns}svg" and root.get("width") == "400"
    assert len(root.findall(f"{ns}rect")) == len(stats.histogram_counts)
    texts = [t.text for t in root.iter(f"{ns}text")]
    assert "max length 50" in texts and "tokens per row" in texts
    marker = [line for line in root.findall(f"{ns}line") if line.get("stroke") == "#c0392b"]
    assert len(marker) == 1
    # a max length beyond the data pins the marker to the right edge and says so
    beyond = ET.fromstring(histogram_svg(stats.to_dict() | {"max_length": 10_000}))
    assert "max length 10000 →" in [t.text for t in beyond.iter(f"{ns}text")]


def test_sink_progress_emits_progress_events():
    sink = MemorySink()
    progress = sink_progress(sink, phase="Counting tokens", every_s=3600)
    for done in range(1, 101):
        progress(done, 100)
    events = sink.of_kind("progress")
    assert [(e.done, e.total) for e in events] == [(1, 100), (100, 100)]  # throttled, but always the end
    assert events[-1].phase == "Counting tokens" and events[-1].unit == "rows"


def test_preference_pairs_preview_side_by_side_with_only_the_judged_reply_as_loss(tokenizer):
    """Chosen and rejected rendered as preference training renders them: the same masked prompt on
    both sides, the loss on each reply (and its end-of-turn token), the tokens the same as training's."""
    from tuning.data.preference import PreferencePair, tokenize_pair
    from tuning.data.preview import render_pair_preview

    pair = PreferencePair(prompt="What is two plus two?", chosen="Four.", rejected="Five, I think.", system="Brief.",
                          row=3)
    [row] = render_pair_preview([pair], tokenizer, max_length=512)
    chosen, rejected = row["sides"]["chosen"], row["sides"]["rejected"]
    assert row["row"] == 3 and chosen["row"] == rejected["row"] == 3

    def text(side, loss):
        return "".join(s["text"] for s in side["segments"] if s["loss"] == loss)

    assert text(chosen, True).startswith("Four.") and text(rejected, True).startswith("Five, I think.")
    assert "Five" not in text(chosen, True) + text(chosen, False)
    prompt = text(chosen, False)
    assert "What is two plus two?" in prompt and "Brief." in prompt and prompt == text(rejected, False)
    trained = tokenize_pair(pair, tokenizer, max_length=512)
    assert chosen["loss_tokens"] == sum(label != -100 for label in trained.chosen.labels)
    assert rejected["trained_tokens"] == len(trained.rejected.input_ids)
