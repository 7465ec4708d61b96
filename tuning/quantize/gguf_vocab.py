"""The tokenizer part of a GGUF file, from a model directory's tokenizer.json.

Two kinds, as llama.cpp's converter writes them:

- byte-level BPE (GPT-2 style: Llama 3, Qwen, SmolLM): ``tokenizer.ggml.model``
  "gpt2", the merges, and a pre-tokenizer name that tells llama.cpp which
  split regex the merges were learned with;
- SentencePiece-style BPE (Llama 2, Mistral, Gemma, Phi-3: "▁" word starts,
  byte fallback to <0xNN> tokens): model "llama", a score per token (its
  merge rank, which is how SentencePiece orders merges), BYTE and UNKNOWN
  token types, and the leading-space flag. The merges are written too:
  llama.cpp ignores them for this model, while transformers' GGUF loader
  rebuilds the tokenizer from them exactly.

Both carry the token list in id order, token types, special token ids,
whether BOS/EOS are added, and the chat template.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from tuning.errors import ModelError

# Split regexes of byte-level BPE families, by the name llama.cpp gives them.
PRE_TOKENIZER_SPLITS = {
    "llama-bpe": (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+"),
    "qwen2": (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
              r"|\s*[\r\n]+|\s+(?!\S)|\s+"),
}


def pre_tokenizer_name(tokenizer_json: dict) -> str:
    """llama.cpp picks its pre-tokenizer regex by name. Byte-level BPE with
    GPT-2's regex is "gpt-2"; with digits split one by one first (SmolLM,
    StarCoder-style) it is "smollm"; a split by Llama 3's or Qwen2's regex
    before a regex-less ByteLevel is "llama-bpe" or "qwen2"."""
    pre = tokenizer_json.get("pre_tokenizer") or {}
    parts = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    kinds = [part.get("type") for part in parts]
    if kinds == ["ByteLevel"] and parts[0].get("use_regex", True):
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and parts[0].get("individual_digits"):
        return "smollm"
    if kinds == ["Split", "ByteLevel"] and not parts[1].get("use_regex", True):
        pattern = (parts[0].get("pattern") or {}).get("Regex")
        for name, split in PRE_TOKENIZER_SPLITS.items():
            if pattern == split:
                return name
    return "default"


def is_sentencepiece_style(tokenizer_json: dict) -> bool:
    model = tokenizer_json.get("model", {})
    return model.get("type") == "BPE" and bool(model.get("byte_fallback"))


def _adds_space_prefix(tokenizer_json: dict) -> bool:
    """Whether a word start is marked on the first word too (Metaspace with a
    prepend scheme, or a normalizer that prepends "▁")."""
    pre = tokenizer_json.get("pre_tokenizer") or {}
    parts = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    for part in parts:
        if part.get("type") == "Metaspace":
            return part.get("prepend_scheme", "always") != "never" and part.get("add_prefix_space", True)
    normalizer = json.dumps(tokenizer_json.get("normalizer") or {})
    return '"Prepend"' in normalizer


def add_tokenizer(writer, model_dir: Path, vocab_size: int, log: Callable[[str], None]) -> None:
    import gguf
    from transformers import AutoTokenizer

    tokenizer_file = model_dir / "tokenizer.json"
    if not tokenizer_file.exists():
        raise ModelError(f"GGUF export needs a fast tokenizer file (tokenizer.json) in {model_dir}")
    data = json.loads(tokenizer_file.read_text())
    if data.get("model", {}).get("type") != "BPE":
        raise ModelError(f"GGUF export handles BPE tokenizers (byte-level, or SentencePiece-style with byte "
                         f"fallback); this one is {data.get('model', {}).get('type')}")
    sentencepiece = is_sentencepiece_style(data)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    by_id = {index: token for token, index in tokenizer.get_vocab().items()}
    added = tokenizer.added_tokens_decoder  # id -> AddedToken
    tokens, types, scores = [], [], []
    for index in range(vocab_size):  # the embedding may have more rows than the tokenizer has tokens
        token = by_id.get(index)
        if token is None:
            kind, token = gguf.TokenType.UNUSED, f"[PAD{index}]"
        elif index == tokenizer.unk_token_id and sentencepiece:
            kind = gguf.TokenType.UNKNOWN
        elif index in added:
            kind = gguf.TokenType.CONTROL if added[index].special else gguf.TokenType.USER_DEFINED
        elif sentencepiece and len(token) == 6 and token.startswith("<0x") and token.endswith(">"):
            kind = gguf.TokenType.BYTE
        else:
            kind = gguf.TokenType.NORMAL
        tokens.append(token)
        types.append(kind)
        # SentencePiece merges the pair whose result scores highest; its pieces are stored in merge order
        scores.append(-float(index) if kind == gguf.TokenType.NORMAL else 0.0)
    merges = [merge if isinstance(merge, str) else " ".join(merge) for merge in data["model"].get("merges", [])]
    if sentencepiece:
        writer.add_tokenizer_model("llama")
        writer.add_tokenizer_pre("default")
        writer.add_token_scores(scores)
        writer.add_add_space_prefix(_adds_space_prefix(data))
    else:
        pre = pre_tokenizer_name(data)
        if pre == "default":
            log("GGUF: unrecognised pre-tokenizer; llama.cpp will use its default regex, which may split text "
                "differently from the original tokenizer")
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(pre)
        writer.add_add_space_prefix(False)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    for name, add in (("bos", writer.add_bos_token_id), ("eos", writer.add_eos_token_id),
                      ("unk", writer.add_unk_token_id), ("pad", writer.add_pad_token_id)):
        token_id = getattr(tokenizer, f"{name}_token_id")
        if token_id is not None:
            add(token_id)
    probe = tokenizer("a").input_ids
    writer.add_add_bos_token(bool(probe) and probe[0] == tokenizer.bos_token_id)
    writer.add_add_eos_token(bool(probe) and probe[-1] == tokenizer.eos_token_id)
    if tokenizer.chat_template:
        writer.add_chat_template(tokenizer.chat_template)
