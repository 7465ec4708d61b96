"""Named chat templates, for models that ship none (base models, folder
models) or whose owner wants another format.

``chat_template`` in a training config is "auto" (the model's own template,
or "instruction" when it has none) or a name here. The choice is set on the
tokenizer before anything renders a row (``use_chat_template``), so the
dataset preview, tokenizing, golden prompts and the saved output (whose
tokenizer carries the template into the playground) all agree.

The templates follow the families' published formats, reduced to what SFT
rows need (system, user and assistant turns). A template whose special tokens
are missing from the model's vocabulary still works: the markers are split
into ordinary tokens, which training then learns.
"""

from __future__ import annotations

from dataclasses import dataclass

AUTO = "auto"


@dataclass(frozen=True)
class ChatTemplate:
    label: str
    template: str  # Jinja, as tokenizer.chat_template


# Templates whose format has no system turn put a leading system message before the first user turn.
SYSTEM_FIRST = ("{% if messages and messages[0]['role'] == 'system' %}"
                "{% set system = messages[0]['content'] + '\n\n' %}{% set turns = messages[1:] %}"
                "{% else %}{% set system = '' %}{% set turns = messages %}{% endif %}")

CHAT_TEMPLATES: dict[str, ChatTemplate] = {
    # the studio's format for models without one: Alpaca-style headings, EOS after each reply
    "instruction": ChatTemplate("Instruction / Response (Alpaca-style)", (
        "{% for message in messages %}"
        "{% if message['role'] == 'system' %}{{ message['content'] }}\n\n"
        "{% elif message['role'] == 'user' %}### Instruction:\n{{ message['content'] }}\n\n### Response:\n"
        "{% else %}{{ message['content'] }}{{ eos_token }}{% endif %}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{% endif %}")),
    "chatml": ChatTemplate("ChatML (Qwen, SmolLM, Hermes)", (
        "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")),
    "llama3": ChatTemplate("Llama 3", (
        "{{ bos_token }}{% for message in messages %}<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n"
        "{{ message['content'] | trim }}<|eot_id|>{% endfor %}"
        "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")),
    "gemma": ChatTemplate("Gemma (a system prompt joins the first user turn)", (
        "{{ bos_token }}" + SYSTEM_FIRST +
        "{% for message in turns %}<start_of_turn>{{ 'model' if message['role'] == 'assistant' else 'user' }}\n"
        "{% if loop.first %}{{ system }}{% endif %}{{ message['content'] | trim }}<end_of_turn>\n{% endfor %}"
        "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")),
    "mistral": ChatTemplate("Mistral [INST] (a system prompt joins the first user turn)", (
        "{{ bos_token }}" + SYSTEM_FIRST +
        "{% for message in turns %}{% if message['role'] == 'user' %}[INST] {% if loop.first %}{{ system }}"
        "{% endif %}{{ message['content'] }} [/INST]{% else %}{{ message['content'] }}{{ eos_token }}{% endif %}"
        "{% endfor %}")),
    "phi3": ChatTemplate("Phi-3", (
        "{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}<|end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")),
}
CHAT_TEMPLATE_CHOICES = (AUTO, *CHAT_TEMPLATES)
FALLBACK = "instruction"


def use_chat_template(tokenizer, name: str = AUTO) -> str:
    """Set the template ``name`` on ``tokenizer`` ("auto": keep the model's
    own, or the fallback when it has none). Returns what is in effect, in
    words, for logs and the preview."""
    if name not in CHAT_TEMPLATE_CHOICES:
        raise ValueError(f"unknown chat template {name!r}; known: {', '.join(CHAT_TEMPLATE_CHOICES)}")
    if name == AUTO and tokenizer.chat_template:
        return "the model's own chat template"
    chosen = FALLBACK if name == AUTO else name
    # Set on the tokenizer (not passed per call) so generation later uses the same format.
    tokenizer.chat_template = CHAT_TEMPLATES[chosen].template
    reason = " (the model has none)" if name == AUTO else ""
    return f"the {CHAT_TEMPLATES[chosen].label} chat template{reason}"
