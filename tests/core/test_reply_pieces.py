"""The playground's and /v1/'s reply in pieces (tuning/generate.py:
PieceStreamer, ReplyStream): each token's text as soon as it decodes, a
character split across tokens held back until it is whole, and the same
reply as plain greedy ``generate``."""

import torch

from tuning.generate import PieceStreamer, encode_messages, stream_inputs
from tuning.loading import load_artifact

# ASCII words, a line end, accented letters and an emoji: byte-level BPE
# splits the last two into tokens that are not whole characters on their own.
TEXT = "Hello wonderful world\nnaïve café 🐉 done"


def test_pieces_come_token_by_token_and_join_to_the_decoded_text(tiny_model):
    _, tokenizer = load_artifact(tiny_model)
    ids = tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    pieces: list[str] = []
    streamer = PieceStreamer(tokenizer, pieces.append)
    streamer.put(torch.tensor([[1, 2, 3]]))  # the prompt: never shown
    assert pieces == []
    streamer.put(torch.tensor([ids[0]]))
    # the first token's text at once (transformers' TextStreamer waits for the end of the word)
    assert pieces == [tokenizer.decode(ids[:1])]
    split = False
    for token in ids[1:]:
        before = len(pieces)
        streamer.put(torch.tensor([token]))
        split |= len(pieces) == before  # a token that is part of a character sends nothing yet
    streamer.end()
    assert split, "the emoji should span several tokens"
    assert "".join(pieces) == tokenizer.decode(ids) == TEXT
    assert not any("\ufffd" in piece for piece in pieces)


def test_a_streamed_reply_is_plain_greedy_generate(tiny_model):
    model, tokenizer = load_artifact(tiny_model)
    inputs = encode_messages(tokenizer, [{"role": "user", "content": "Write a short story."}])
    with torch.no_grad():
        plain = model.generate(**inputs, max_new_tokens=12, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    expected = plain[0, inputs["input_ids"].shape[1]:].tolist()

    pieces: list[str] = []
    reply = stream_inputs(model, tokenizer, inputs, max_new_tokens=12)
    reply.run(pieces.append)  # in this thread, as the workers generate
    assert reply.new_token_ids == expected
    assert "".join(pieces) == reply.text == tokenizer.decode(expected, skip_special_tokens=True)
    assert len(pieces) > 1
    iterated = stream_inputs(model, tokenizer, inputs, max_new_tokens=12)
    assert list(iterated) == pieces and iterated.new_token_ids == expected  # in a thread, iterated
