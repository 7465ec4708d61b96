"""Tiny random-weight models of every family the studio supports, each built
from its architecture's transformers config class, with a tokenizer of the
kind that family ships, trained here offline on a few sentences:

- byte-level BPE (GPT-2 style, as Llama 3, Qwen and SmolLM use), with the
  family's own split regex;
- SentencePiece-style BPE (Metaspace "▁" word starts, byte fallback to
  <0xNN> tokens, as Llama 2, Mistral, Gemma and Phi-3 use).

Each gets its family's chat template. Built once per recipe into the test
cache, like tests/tiny_model.py's tiny Llama (which carries the bundled
SmolLM2's real tokenizer and stands for the bundled model here).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from tests.tiny_model import CACHE, save_once
from tuning.quantize.gguf_vocab import PRE_TOKENIZER_SPLITS

VERSION = "v1"  # bump when a recipe below changes
CORPUS = [
    "Say hello. Hello! Say yes. Yes. Name a colour. Blue. The sky is blue and the grass is green.",
    "Count to three: one, two, three. What is 17 + 25? 42. Write a short, friendly email.",
    "A neural network learns weights from examples; training lowers the loss step by step.",
    "The quick brown fox jumps over the lazy dog. Paris is the capital of France.",
    "Tokenizers split text into pieces: words, parts of words, digits 0123456789 and bytes.",
] * 4
LLAMA3_SPLIT, QWEN2_SPLIT = PRE_TOKENIZER_SPLITS["llama-bpe"], PRE_TOKENIZER_SPLITS["qwen2"]

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
LLAMA3 = ("{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
          "{{ m['content'] }}<|eot_id|>{% endfor %}"
          "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")
MISTRAL = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]"
           "{% elif m['role'] == 'assistant' %}{{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}")
GEMMA = ("{{ bos_token }}{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' "
         "else m['role'] }}\n{{ m['content'] }}<end_of_turn>\n{% endfor %}"
         "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")
PHI3 = ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")


@dataclass(frozen=True)
class Family:
    name: str
    config_class: str  # in transformers
    tokenizer: str  # "bpe" (byte-level) or "spm" (SentencePiece-style)
    specials: tuple[str, ...]  # bos, eos, pad first, then the chat tokens
    chat_template: str
    end_of_turn: str  # the token a reply ends with
    split: str | None = None  # byte-level BPE: the family's pre-tokenizer regex
    prefix_space: bool = True  # SentencePiece-style: "▁" before the first word too (Gemma: no)
    config: dict = field(default_factory=dict)


SHAPE = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             max_position_embeddings=512, initializer_range=0.3)
FAMILIES = {family.name: family for family in (
    Family("llama", "LlamaConfig", "bpe", ("<|begin_of_text|>", "<|end_of_text|>", "<|finetune_pad|>",
                                           "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
           LLAMA3, "<|eot_id|>", split=LLAMA3_SPLIT, config=dict(tie_word_embeddings=True)),
    Family("mistral", "MistralConfig", "spm", ("<s>", "</s>", "<unk>", "[INST]", "[/INST]"), MISTRAL, "</s>",
           config=dict(sliding_window=None)),
    Family("qwen2", "Qwen2Config", "bpe", ("<|endoftext|>", "<|im_end|>", "<|endoftext|>", "<|im_start|>"),
           CHATML, "<|im_end|>", split=QWEN2_SPLIT, config=dict(tie_word_embeddings=True)),
    Family("qwen3", "Qwen3Config", "bpe", ("<|endoftext|>", "<|im_end|>", "<|endoftext|>", "<|im_start|>"),
           # head_dim 128, as every Qwen3 has: transformers' GGUF loader assumes it (it reads no key_length)
           CHATML, "<|im_end|>", split=QWEN2_SPLIT, config=dict(head_dim=128, tie_word_embeddings=True)),
    Family("gemma2", "Gemma2Config", "spm", ("<bos>", "<eos>", "<pad>", "<start_of_turn>", "<end_of_turn>"),
           GEMMA, "<end_of_turn>", prefix_space=False,
           # head_dim = query_pre_attn_scalar = 256 as in Gemma 2 2B/9B: llama.cpp scales queries by
           # 1/sqrt(head_dim), and transformers' GGUF loader reads neither (it takes the defaults, 256)
           config=dict(head_dim=256, query_pre_attn_scalar=256, sliding_window=64)),
    Family("gemma3", "Gemma3TextConfig", "spm", ("<bos>", "<eos>", "<pad>", "<start_of_turn>", "<end_of_turn>"),
           GEMMA, "<end_of_turn>", prefix_space=False,
           # the default layer types (every sixth layer global), which llama.cpp assumes for Gemma 3
           config=dict(head_dim=256, query_pre_attn_scalar=256, sliding_window=64)),
    Family("phi3", "Phi3Config", "spm", ("<s>", "<|endoftext|>", "<|endoftext|>", "<|user|>", "<|assistant|>",
                                        "<|system|>", "<|end|>"), PHI3, "<|end|>"),
)}


def _byte_level_bpe(family: Family):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(family.split), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tokenizer.decoder = decoders.ByteLevel()
    specials = list(dict.fromkeys(family.specials))
    tokenizer.train_from_iterator(CORPUS, trainers.BpeTrainer(
        vocab_size=420, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return tokenizer


def _sentencepiece_bpe(family: Family):
    """SentencePiece's layout as Hugging Face stores it: <unk>, the specials
    and the 256 byte tokens first, then the learned pieces in merge order."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

    metaspace = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first" if family.prefix_space else "never",
                                         split=False)
    learner = Tokenizer(models.BPE())
    learner.pre_tokenizer = metaspace
    learner.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=300, special_tokens=[]))
    learned = json.loads(learner.to_str())["model"]
    specials = list(dict.fromkeys(("<unk>",) + family.specials))
    pieces = specials + [f"<0x{byte:02X}>" for byte in range(256)]
    pieces += [piece for piece in sorted(learned["vocab"], key=learned["vocab"].get) if piece not in pieces]
    merges = [tuple(merge) if isinstance(merge, list) else tuple(merge.split(" ")) for merge in learned["merges"]]
    tokenizer = Tokenizer(models.BPE(vocab={piece: i for i, piece in enumerate(pieces)}, merges=merges,
                                     byte_fallback=True, unk_token="<unk>", fuse_unk=True))
    tokenizer.pre_tokenizer = metaspace
    tokenizer.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                           decoders.Strip(" ", 1, 0)])
    tokenizer.add_special_tokens([AddedToken(token, special=True, normalized=False) for token in specials])
    return tokenizer


def build_tokenizer(family: Family):
    from transformers import PreTrainedTokenizerFast

    backend = _byte_level_bpe(family) if family.tokenizer == "bpe" else _sentencepiece_bpe(family)
    bos, eos, pad = family.specials[:3]
    extra = {"unk_token": "<unk>"} if family.tokenizer == "spm" else {}
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=bos, eos_token=eos, pad_token=pad,
                                        **extra)
    # SentencePiece families start every text with BOS; byte-level ones leave it to the template
    tokenizer.add_bos_token = family.tokenizer == "spm"
    tokenizer.chat_template = family.chat_template
    return tokenizer


def build_model(family: Family, tokenizer):
    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    ids = {name: tokenizer.convert_tokens_to_ids(token) for name, token in zip(("bos", "eos", "pad"), family.specials)}
    config = getattr(transformers, family.config_class)(
        vocab_size=len(tokenizer), bos_token_id=ids["bos"], eos_token_id=ids["eos"], pad_token_id=ids["pad"],
        **SHAPE, **family.config)
    model = AutoModelForCausalLM.from_config(config)
    # a reply ends at the family's end-of-turn token as well as at EOS, as the real models' settings say
    model.generation_config.eos_token_id = sorted({ids["eos"], tokenizer.convert_tokens_to_ids(family.end_of_turn)})
    model.generation_config.pad_token_id = ids["pad"]
    return model


def tiny_family_dir(name: str) -> Path:
    """The tiny model of family ``name`` (a key of FAMILIES), built once."""
    family = FAMILIES[name]
    dest = CACHE / f"tiny-family-{name}-{VERSION}"  # not tiny-llama-*: that is tests/tiny_model.py's
    if (dest / "model.safetensors").exists():
        return dest
    tokenizer = build_tokenizer(family)
    return save_once(build_model(family, tokenizer), tokenizer, dest)

if __name__ == "__main__":
    for family_name in FAMILIES:
        print(tiny_family_dir(family_name))
