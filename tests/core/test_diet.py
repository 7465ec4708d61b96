import json

import numpy as np
import pytest

from tests.tiny_model import CACHE
from tuning.data.diet import (DIET_OPERATIONS, dedupe, diverse_subsample, length_filter, merge, random_subsample,
                              run_operation, split)
from tuning.data.embed import SentenceEncoder, kmeans, lsh_parameters, near_duplicate_groups, row_text
from tuning.data.splits import split_validation
from tuning.data.versioning import Lineage, content_hash, write_jsonl
from tuning.errors import ConfigError, DatasetError, ModelError
from tuning.models import load_tokenizer, prepare_bundled_encoder

STORY = ("the old fisherman rowed out before dawn every morning to check his nets near the rocky point where "
         "the gulls gathered and the water ran cold and deep, then he rowed home again to mend the torn nets on "
         "the harbour wall while his grandson sold the catch to the cooks from the inns along the quay")


def pairs(*texts):
    return [{"instruction": t, "output": "ok"} for t in texts]


# ---------------------------------------------------------------- dedupe


def test_dedupe_exact_ignores_key_order_case_and_spacing_and_keeps_distinct_rows():
    rows = [{"instruction": "Say hi.", "output": "Hi!"}, {"output": "Hi!", "instruction": "Say hi."},
            {"instruction": "say   HI.", "output": "hi!"}, {"instruction": "Say bye.", "output": "Bye!"}]
    kept, report = dedupe(rows)
    assert kept == [rows[0], rows[3]]
    assert report["exact_removed"] == 2 and report["exact_removed_rows"] == [2, 3] and report["near_removed"] == 0


def test_dedupe_near_removes_near_copies_only_when_asked():
    near_copy = STORY.replace("torn", "broken")
    rows = pairs(STORY, "How do I bake bread?", near_copy, "Name three rivers in Africa.")
    assert dedupe(rows)[0] == rows  # no exact duplicates
    kept, report = dedupe(rows, near=True, threshold=0.8)
    assert kept == [rows[0], rows[1], rows[3]]
    assert report["near_removed_rows"] == [3] and "MinHash" in report["method"]
    assert dedupe(rows, near=True, threshold=0.99)[0] == rows  # stricter threshold: not similar enough


def test_near_duplicate_groups_are_connected_and_deterministic():
    texts = [STORY, "unrelated words about cooking pasta with garlic and oil", STORY.replace("cold", "icy"), "", ""]
    groups = near_duplicate_groups(texts, threshold=0.8)
    assert groups == [[0, 2]] == near_duplicate_groups(texts, threshold=0.8)  # empty texts never match
    bands, rows = lsh_parameters(0.8)
    assert bands * rows <= 128 and 1 - (1 - 0.8 ** rows) ** bands >= 0.99


# ---------------------------------------------------------------- length, subsampling


def test_length_filter_in_chars_and_tokens(tiny_model):
    rows = pairs("a", "abcdef", "abcdefghijklmnop")
    kept, report = length_filter(rows, field="instruction", unit="chars", min=2, max=10)
    assert kept == [rows[1]] and report["too_short_rows"] == [1] and report["too_long_rows"] == [3]
    tokenizer = load_tokenizer(str(tiny_model))
    words = [{"text": "one " * n} for n in (1, 5, 50)]
    kept, _ = length_filter(words, field="text", unit="tokens", max=10, tokenizer=tokenizer)
    assert kept == words[:2]
    chat = [{"messages": [{"role": "user", "content": "x" * 30}, {"role": "assistant", "content": "y"}]}]
    assert length_filter(chat, field="messages", min=31)[0] == chat  # the turns' text, joined
    with pytest.raises(ConfigError, match="tokenizer"):
        length_filter(rows, field="instruction", unit="tokens", max=3)
    with pytest.raises(DatasetError, match="no 'prompt' column"):
        length_filter(rows, field="prompt", max=3)


def test_random_subsample_is_deterministic_and_keeps_order():
    rows = [{"text": str(i)} for i in range(50)]
    first, report = random_subsample(rows, n=10, seed=3)
    assert first == random_subsample(rows, n=10, seed=3)[0] != random_subsample(rows, n=10, seed=4)[0]
    assert len(first) == 10 == report["rows_after"] and first == sorted(first, key=lambda r: int(r["text"]))
    assert random_subsample(rows, n=500, seed=0)[0] == rows


def topic_vectors(texts):
    """Embeddings with three obvious topics: the row's topic index picks the direction."""
    rng = np.random.default_rng(0)
    vectors = []
    for text in texts:
        base = np.zeros(8)
        base[int(text.split()[1])] = 5.0
        vectors.append(base + rng.normal(scale=0.3, size=8))
    return np.array(vectors)


def test_diverse_subsample_takes_from_every_topic_and_is_deterministic():
    # topic sizes 20, 6, 4: a random 6 would often miss the small topics
    rows = [{"text": f"topic {t} row {i}"} for t, count in ((0, 20), (1, 6), (2, 4)) for i in range(count)]
    kept, report = diverse_subsample(rows, n=6, seed=1, embed_fn=topic_vectors, clusters=3)
    topics = [r["text"].split()[1] for r in kept]
    assert sorted(report["cluster_sizes"]) == [4, 6, 20] and sum(report["taken_per_cluster"]) == 6
    assert [topics.count(t) for t in "012"] == [4, 1, 1]  # 6 x (20, 6, 4)/30, every topic present
    assert kept == diverse_subsample(rows, n=6, seed=1, embed_fn=topic_vectors, clusters=3)[0]
    assert kept == sorted(kept, key=rows.index)  # original order


def test_kmeans_finds_separated_clusters():
    points = np.concatenate([np.random.default_rng(s).normal(loc=c, scale=0.1, size=(10, 2))
                             for s, c in enumerate((0.0, 5.0, 10.0))])
    labels, centres = kmeans(points, 3, seed=0)
    assert len({tuple(labels[i:i + 10]) for i in (0, 10, 20)}) == 3
    assert all(len(set(labels[i:i + 10])) == 1 for i in (0, 10, 20))


@pytest.fixture(scope="module")
def encoder():
    return SentenceEncoder(prepare_bundled_encoder(CACHE / "all-minilm-l6-v2"))


def test_sentence_encoder_puts_similar_sentences_closer(encoder):
    calls = []
    vectors = encoder.encode(["A cat sits on the mat.", "A kitten is sitting on a rug.",
                              "Stock markets fell sharply on Tuesday."], batch_size=2,
                             progress=lambda done, total: calls.append((done, total)))
    assert vectors.shape == (3, 384) and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    similar, unrelated = vectors[0] @ vectors[1], vectors[0] @ vectors[2]
    assert similar > unrelated + 0.3
    assert calls == [(2, 3), (3, 3)]


def test_diverse_subsample_with_the_real_encoder(encoder):
    topics = {"cooking": ["How long should I boil pasta?", "What spices go well in a curry?",
                          "How do I make bread rise?", "Best way to roast vegetables in the oven?"],
              "space": ["How far away is the Moon?", "Why is Mars red?", "What is a black hole?",
                        "How many moons does Jupiter have?"],
              "football": ["How many players are on a football team?", "What is the offside rule?",
                           "Who won the last World Cup?", "How long is a football match?"]}
    rows = [{"instruction": q, "output": "..."} for questions in topics.values() for q in questions]
    kept, _ = diverse_subsample(rows, n=3, seed=0, embed_fn=encoder, clusters=3)
    chosen = {topic for row in kept for topic, qs in topics.items() if row["instruction"] in qs}
    assert chosen == set(topics)


def test_encoder_errors_and_row_text(tmp_path):
    with pytest.raises(ModelError, match="prepare_bundled_encoder"):
        SentenceEncoder(tmp_path)
    chat = {"id": "x1", "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]}
    assert row_text(chat) == "Hi\nYo"
    assert row_text({"prompt": "P", "chosen": "C", "rejected": "R", "score": 3}) == "P\nC\nR"
    assert row_text({"conversations": [{"from": "human", "value": "Q"}]}) == "Q"


# ---------------------------------------------------------------- split, merge


def test_split_by_column_keeps_groups_together():
    rows = [{"conversation": f"c{i % 7}", "text": f"turn {i}"} for i in range(70)]
    (train, validation), report = split(rows, validation_ratio=0.3, seed=5, by_column="conversation")
    assert len(train) + len(validation) == 70 and validation and train
    assert not {r["conversation"] for r in train} & {r["conversation"] for r in validation}
    assert len(validation) == 20 and report["groups"] == 7  # two of seven groups: the closest to 30 %
    assert split(rows, validation_ratio=0.3, seed=5, by_column="conversation")[0] == (train, validation)
    with pytest.raises(ConfigError, match="same"):
        split([{"c": 1, "t": 1}, {"c": 1, "t": 2}], validation_ratio=0.5, seed=0, by_column="c")
    with pytest.raises(DatasetError, match="no 'missing' column"):
        split(rows, validation_ratio=0.3, seed=0, by_column="missing")


def test_split_without_column_matches_the_trainer_split():
    rows = [{"text": str(i)} for i in range(20)]
    (train, validation), _ = split(rows, validation_ratio=0.25, seed=2)
    assert (train, validation) == split_validation(rows, 0.25, 2)


def test_merge_refuses_different_schemas():
    a, b = pairs("one", "two"), pairs("three")
    merged, report = merge([a, b], ["alpaca", "alpaca"])
    assert merged == a + b and report["sources"] == [2, 1]
    with pytest.raises(DatasetError, match="different schemas.*alpaca.*chat"):
        merge([a, [{"messages": []}]], ["alpaca", "chat"])


# ---------------------------------------------------------------- versions, the table


def test_content_hash_is_stable_under_key_order_and_changes_with_content(tmp_path):
    rows = [{"instruction": "Say hi.", "output": "Hi!"}, {"instruction": "Café?", "output": "Oui."}]
    swapped = [{"output": r["output"], "instruction": r["instruction"]} for r in rows]
    assert content_hash(rows) == content_hash(swapped)
    assert content_hash(rows) != content_hash([rows[0], {**rows[1], "output": "Non."}])
    assert content_hash(rows) != content_hash(rows[::-1])
    path = tmp_path / "v.jsonl"
    assert write_jsonl(swapped, path) == content_hash(rows)
    assert [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] == swapped


def test_run_operation_checks_parameters_and_records_lineage():
    rows = pairs("a", "a", "b", "c")
    with pytest.raises(ConfigError) as caught:
        run_operation("dedupe", rows, {"threshold": 2.0, "bogus": 1})
    assert set(caught.value.errors) == {"threshold", "bogus"}
    output, report, [lineage] = run_operation("dedupe", rows, {}, parents=(content_hash(rows),))
    assert len(output) == 3 and lineage.rows_before == 4 and lineage.rows_after == 3
    assert lineage.result == content_hash(output) and lineage.parameters == {"near": False, "threshold": 0.8}
    assert Lineage.from_dict(json.loads(json.dumps(lineage.to_dict()))) == lineage
    (train, validation), _, lineages = run_operation("split", rows, {"validation_ratio": 0.25, "seed": 1})
    assert [l.part for l in lineages] == ["train", "validation"]
    assert [l.rows_after for l in lineages] == [len(train), len(validation)] == [3, 1]
    with pytest.raises(ConfigError, match="sentence encoder"):
        run_operation("diverse_subsample", rows, {"n": 2})
    json.dumps([op.to_dict() for op in DIET_OPERATIONS.values()])
    assert all(op.reference for name, op in DIET_OPERATIONS.items() if name != "merge")
