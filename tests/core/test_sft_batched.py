"""Batched counting (tuning.data.sft_batched) gives exactly what ``sft.tokenize_example`` gives row by row
(each row's length and which tokens carry loss), on the bundled tokenizer with its own template, every named
chat template and system-prompt choice, and the tiny byte-level and SentencePiece tokenizers of the model
families; refusals name the same row; and ``token_stats`` over the batches equals its row-by-row figures."""

import math
import statistics
import sys

import pytest

from tests.tiny_architectures import FAMILIES, build_tokenizer
from tuning.data.chat_templates import CHAT_TEMPLATES, use_chat_template
from tuning.data.readers import Example, Message
from tuning.data.sft import IGNORE_INDEX, has_labels, tokenize_example
from tuning.data.sft_batched import RowCount, count_batched
from tuning.data.stats import token_stats
from tuning.data.system_prompts import CUSTOM, NONE, use_system_prompt
from tuning.errors import DatasetError
from tuning.models import load_tokenizer


def chat(*turns, row) -> Example:
    return Example(tuple(Message(role, content, *train) for role, content, *train in turns), row)


ROWS = [
    Example.from_pair("What is 2+2?", "Four.", row=1),
    Example.from_pair("Say nothing.", "", row=2),  # an empty reply: only its end-of-turn token is trained
    Example.from_pair("Be brief.", "Ok.", system="You answer in one word.", row=3),
    chat(("system", "Be kind."), ("user", "What is 2+2?"), ("assistant", "Four."), ("user", "And 3+3?"),
         ("assistant", "Six, of course."), row=4),
    Example.from_pair("Héllo wörld 😀, 你好吗? naïve café", "Très bien 🙂 — 很好. Ünïcödé ẞ\u0301", row=5),
    chat(("user", "a"), ("assistant", "context only", False), ("user", "b"), ("assistant", "learn me"), row=6),
    Example.from_pair("  spaces around  ", "  trailing newline\n\n", row=7),
    Example.from_pair("word " * 150, "a long prompt the cut leaves without its reply", row=8),
    Example.from_pair("Count.", " ".join(str(n) for n in range(120)), row=9),
]


def bundled(tiny_model, template: str | None = None, system: str | None = None):
    tokenizer = load_tokenizer(str(tiny_model))
    if template:
        use_chat_template(tokenizer, template)
    if system:
        use_system_prompt(tokenizer, system, "Answer as a pirate." if system == CUSTOM else "")
    return tokenizer


TOKENIZERS = {
    "bundled": lambda tiny: bundled(tiny),
    **{f"bundled+{name}": (lambda tiny, name=name: bundled(tiny, name)) for name in CHAT_TEMPLATES},
    "bundled+custom system prompt": lambda tiny: bundled(tiny, system=CUSTOM),
    "bundled+no system prompt": lambda tiny: bundled(tiny, system=NONE),
    "bundled without a template (fallback)": lambda tiny: _without_template(bundled(tiny)),
    **{f"tiny {name}": (lambda tiny, name=name: build_tokenizer(FAMILIES[name]))
       for name in ("llama", "qwen2", "mistral", "gemma2", "phi3")},
}


def _without_template(tokenizer):
    tokenizer.chat_template = None
    return tokenizer


def flat(examples, tokenizer, **kwargs) -> list[RowCount]:
    return [row for batch in count_batched(examples, tokenizer, **kwargs) for row in batch]


def tokenized(examples, tokenizer, *, loss_on_prompt=False, file="") -> list:
    return [tokenize_example(e, tokenizer, max_length=sys.maxsize, loss_on_prompt=loss_on_prompt, file=file)
            for e in examples]


def one_by_one(examples, tokenizer, *, loss_on_prompt=False, file="") -> list[RowCount]:
    return [RowCount.of(t.labels) for t in tokenized(examples, tokenizer, loss_on_prompt=loss_on_prompt, file=file)]


@pytest.mark.parametrize("name", list(TOKENIZERS))
def test_batches_equal_row_by_row_on_every_template_and_tokenizer(tiny_model, name):
    tokenizer = TOKENIZERS[name](tiny_model)
    whole = tokenized(ROWS, tokenizer)
    assert whole[0].labels != whole[0].input_ids and has_labels(whole[1])  # the replies alone carry loss
    for loss_on_prompt in (False, True):
        expected = one_by_one(ROWS, tokenizer, loss_on_prompt=loss_on_prompt)
        assert [row.length for row in expected] == [len(t.input_ids) for t in whole]
        for batch_rows in (4, 1000):  # batches that split the rows, and one batch of all
            got = flat(ROWS, tokenizer, loss_on_prompt=loss_on_prompt, batch_rows=batch_rows)
            assert got == expected, (name, loss_on_prompt, batch_rows)


def test_a_row_count_reads_the_labels_and_cuts_them_as_training_does():
    labels = [IGNORE_INDEX, 5, 6, IGNORE_INDEX, IGNORE_INDEX, 7, 8, 9]
    row = RowCount.of(labels)
    assert row == RowCount(8, ((1, 3), (5, 8)))
    for max_length in range(1, 10):
        kept = labels[:max_length]
        assert row.within(max_length) == (sum(label != IGNORE_INDEX for label in kept),
                                          any(label != IGNORE_INDEX for label in kept[1:])), max_length
    assert RowCount.of([4, IGNORE_INDEX]).within(5) == (1, False)  # the first token is never predicted


def reference_stats(examples, tokenizer, *, max_length: int, loss_on_prompt: bool) -> dict:
    """token_stats' figures computed from ``tokenize_example`` row by row, as it counted before batching."""
    whole = tokenized(examples, tokenizer, loss_on_prompt=loss_on_prompt)
    lengths = [len(t.input_ids) for t in whole]
    kept = [t.labels[:max_length] for t in whole]
    trained = [k for k in kept if any(label != IGNORE_INDEX for label in k[1:])]
    ordered = sorted(lengths)
    return {"rows": len(lengths), "total_tokens": sum(lengths), "min_length": ordered[0],
            "median_length": float(statistics.median(ordered)), "max_length_seen": ordered[-1],
            "p95_length": ordered[math.ceil(0.95 * len(ordered)) - 1],
            "truncated_rows": sum(n > max_length for n in lengths), "skipped_rows": len(whole) - len(trained),
            "tokens_per_epoch": sum(len(k) for k in trained),
            "loss_tokens": sum(label != IGNORE_INDEX for k in trained for label in k)}


@pytest.mark.parametrize("name", ["bundled", "bundled+llama3", "tiny mistral"])
def test_token_stats_equal_their_row_by_row_figures(tiny_model, name):
    tokenizer = TOKENIZERS[name](tiny_model)
    examples = ROWS * 3
    lengths = sorted(row.length for row in one_by_one(ROWS, tokenizer))
    for max_length in (lengths[0] + 2, lengths[len(lengths) // 2], 4096):
        for loss_on_prompt in (False, True):
            stats = token_stats(examples, tokenizer, max_length=max_length, loss_on_prompt=loss_on_prompt, bins=7)
            expected = reference_stats(examples, tokenizer, max_length=max_length, loss_on_prompt=loss_on_prompt)
            assert {key: stats.to_dict()[key] for key in expected} == expected, (max_length, loss_on_prompt)
            assert sum(stats.histogram_counts) == len(examples)
    assert stats.truncated_rows == 0 and stats.skipped_rows == 0  # the last setting keeps every row whole


class CountingBackend:
    """A fast tokenizer's Rust backend, counting its batch calls."""

    def __init__(self, backend):
        self.inner, self.calls = backend, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def encode_batch(self, *args, **kwargs):
        self.calls += 1
        return self.inner.encode_batch(*args, **kwargs)


class Counting:
    """The bundled fast tokenizer, counting its template renders and tokenizer calls."""

    def __init__(self, tokenizer):
        self.inner, self.renders, self.encodes = tokenizer, 0, 0
        self.chat_template, self.split_special_tokens = tokenizer.chat_template, tokenizer.split_special_tokens
        self.backend_tokenizer = CountingBackend(tokenizer.backend_tokenizer)

    def apply_chat_template(self, *args, **kwargs):
        self.renders += 1
        return self.inner.apply_chat_template(*args, **kwargs)

    def __call__(self, *args, **kwargs):
        self.encodes += 1
        return self.inner(*args, **kwargs)


def test_a_batch_costs_one_render_per_part_and_one_tokenizer_call(tiny_model):
    tokenizer = Counting(load_tokenizer(str(tiny_model)))
    pairs = [Example.from_pair(f"Question {n}?", f"Answer {n}.", row=n + 1) for n in range(10)]
    batches = list(count_batched(pairs, tokenizer, loss_on_prompt=False, batch_rows=5))
    assert [len(b) for b in batches] == [5, 5]
    # per batch: the whole rows, and the prompts before the replies (single replies need no "through" render)
    assert (tokenizer.renders, tokenizer.backend_tokenizer.calls, tokenizer.encodes) == (4, 2, 0)
    assert [row for b in batches for row in b] == one_by_one(pairs, tokenizer.inner)


def test_rows_are_read_one_batch_at_a_time():
    """Only one batch of rows (and so of encodings) is held: the next rows are read when the next batch is."""
    pulled = []

    def rows():
        for n in range(10):
            pulled.append(n)
            yield Example.from_pair(f"q{n}", f"a{n}", row=n + 1)

    tokenizer = build_tokenizer(FAMILIES["qwen2"])
    batches = count_batched(rows(), tokenizer, loss_on_prompt=False, batch_rows=4)
    assert len(next(batches)) == 4 and len(pulled) == 4
    assert [len(b) for b in batches] == [4, 2] and len(pulled) == 10


def refusal(examples, tokenizer, batched: bool) -> DatasetError:
    with pytest.raises(DatasetError) as caught:
        if batched:
            flat(examples, tokenizer, loss_on_prompt=False, file="chat.jsonl", batch_rows=4)
        else:
            one_by_one(examples, tokenizer, file="chat.jsonl")
    return caught.value


REFUSES_SYSTEM = ("{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
                  "{% endif %}{% for m in messages %}{{ m['content'] }}|{% endfor %}")
# an earlier reply renders differently once a later turn follows (as templates that drop old reasoning do)
HIDES_EARLIER_REPLIES = ("{% for m in messages %}{{ m['role'] }}: {% if m['role'] == 'assistant' and not loop.last %}"
                         "(earlier){% else %}{{ m['content'] }}{% endif %}|{% endfor %}"
                         "{% if add_generation_prompt %}assistant: {% endif %}")
# the prompt render is not a prefix of the whole render even for a single reply: the generation prompt differs
# from how the template opens a written reply
OTHER_GENERATION_PROMPT = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</{{ m['role'] }}>{% endfor %}"
                           "{% if add_generation_prompt %}<assistant> {% endif %}")


@pytest.mark.parametrize("template", [REFUSES_SYSTEM, HIDES_EARLIER_REPLIES, OTHER_GENERATION_PROMPT])
def test_refusals_name_the_same_row_as_row_by_row(tiny_model, template):
    tokenizer = load_tokenizer(str(tiny_model))
    tokenizer.chat_template = template
    # a first batch every template accepts but the last, so most refusals come from a later batch
    examples = [Example.from_pair(f"q{n}", f"a{n}", row=101 + n) for n in range(4)] + ROWS
    expected, got = refusal(examples, tokenizer, False), refusal(examples, tokenizer, True)
    assert expected.row == {REFUSES_SYSTEM: 3, HIDES_EARLIER_REPLIES: 4, OTHER_GENERATION_PROMPT: 101}[template]
    assert (got.row, got.file, got.field, str(got)) == (expected.row, expected.file, expected.field, str(expected))
    if template != REFUSES_SYSTEM:  # loss on every token needs no reply boundaries: every row passes, as one by one
        assert flat(examples, tokenizer, loss_on_prompt=True, batch_rows=4) == one_by_one(examples, tokenizer,
                                                                                           loss_on_prompt=True)


def test_tokenizers_without_a_fast_backend_go_row_by_row_with_the_same_result(tiny_model):
    tokenizer = load_tokenizer(str(tiny_model))

    class NoBackend:
        """The fast tokenizer with its Rust backend hidden, as a slow (Python) tokenizer has none."""

        def __getattr__(self, name):
            if name == "backend_tokenizer":
                raise AttributeError(name)
            return getattr(tokenizer, name)

        def __call__(self, *args, **kwargs):
            return tokenizer(*args, **kwargs)

    assert flat(ROWS, NoBackend(), loss_on_prompt=False, batch_rows=4) == one_by_one(ROWS, tokenizer)
