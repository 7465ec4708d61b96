"""The system prompt a job trains with, for rows that bring none of their own.

Many chat templates write a default system prompt when a conversation has
none (SmolLM2: "You are a helpful AI assistant named SmolLM, trained by
Hugging Face"; Qwen 2.5: "You are Qwen, created by Alibaba Cloud …"), so
every training row carries text the user never wrote. A job's
``system_prompt`` setting says what such rows get:

- ``template``: whatever the chat template writes (its default, or nothing);
- ``custom``: ``system_prompt_text``;
- ``none``: no system prompt: where the template has a default, an empty
  system turn replaces it (the template's own way to write "no system
  prompt"); where it has none, nothing changes.

Rows with their own system message keep it. The choice is written into the
tokenizer's chat template (a few lines of Jinja before the model's own), like
``chat_templates.use_chat_template``: the preview, tokenizing, golden prompts,
the saved tokenizer and so the playground and GGUF exports then all agree,
and stock ``apply_chat_template`` reproduces it.
"""

from __future__ import annotations

import json

TEMPLATE, CUSTOM, NONE = "template", "custom", "none"
SYSTEM_PROMPT_CHOICES = (TEMPLATE, CUSTOM, NONE)
MAX_SYSTEM_PROMPT = 4000  # characters

# A marker no template writes by itself, to find where a system message lands in the rendered text.
_MARKER = "\u27e6system prompt\u27e7"
_PROBE_USER = [{"role": "user", "content": "\u27e6user\u27e7"}]


def _render(tokenizer, messages: list[dict]) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)


def accepts_system_messages(tokenizer) -> bool:
    """Whether the chat template writes a system message's text at all."""
    return _MARKER in _render(tokenizer, [{"role": "system", "content": _MARKER}, *_PROBE_USER])


def default_system_prompt(tokenizer) -> str | None:
    """The system prompt the chat template writes when a conversation has none (None: it writes none).

    Found by rendering a user turn alone and again after a system message
    holding a marker: where the first rendering equals the second with
    something in the marker's place, that something is the default."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    with_marker = _render(tokenizer, [{"role": "system", "content": _MARKER}, *_PROBE_USER])
    if _MARKER not in with_marker:
        return None
    before, after = with_marker.split(_MARKER, 1)
    alone = _render(tokenizer, _PROBE_USER)
    if len(alone) < len(before) + len(after) or not (alone.startswith(before) and alone.endswith(after)):
        return None
    return alone[len(before):len(alone) - len(after)] or None


def _prepend_system(template: str, content: str) -> str:
    # json.dumps(ensure_ascii=False) gives a string literal Jinja reads back exactly (quotes, backslashes and
    # newlines escaped; other characters kept as they are).
    literal = json.dumps(content, ensure_ascii=False)
    return ("{%- if messages|length == 0 or messages[0]['role'] != 'system' %}"
            "{%- set messages = [{'role': 'system', 'content': " + literal + "}] + messages %}"
            "{%- endif %}" + template)


def _quoted(text: str, limit: int = 80) -> str:
    shown = text if len(text) <= limit else text[:limit - 1] + "…"
    return "“" + shown.replace("\n", " ") + "”"


def use_system_prompt(tokenizer, choice: str = TEMPLATE, text: str = "") -> str:
    """Set the system-prompt ``choice`` on ``tokenizer``'s chat template (call
    after ``use_chat_template``). Returns what is in effect, in words, for
    logs and the preview. A custom prompt on a template that drops system
    messages is refused (ValueError): training would silently ignore it."""
    if choice not in SYSTEM_PROMPT_CHOICES:
        raise ValueError(f"unknown system prompt choice {choice!r}; known: {', '.join(SYSTEM_PROMPT_CHOICES)}")
    default = default_system_prompt(tokenizer)
    if choice == CUSTOM:
        if not text.strip():
            raise ValueError("a custom system prompt needs its text")
        if not accepts_system_messages(tokenizer):
            raise ValueError("this chat template drops system messages, so a custom system prompt would never "
                             "reach the model; choose a chat template with a system turn")
        tokenizer.chat_template = _prepend_system(tokenizer.chat_template, text)
        return f"system prompt {_quoted(text)} for rows without one"
    if choice == NONE:
        if default is None:
            return "no system prompt for rows without one"
        tokenizer.chat_template = _prepend_system(tokenizer.chat_template, "")
        return f"no system prompt for rows without one (the template's default {_quoted(default)} is cleared)"
    if default is None:
        return "no system prompt for rows without one (the template writes none)"
    return f"the template's default system prompt {_quoted(default)} for rows without one"



def describe_system_prompt(tokenizer) -> str:
    """What the chat template writes into rows without a system prompt, in words (at most about 140
    characters), for the dataset preview; changes nothing."""
    return use_system_prompt(tokenizer, TEMPLATE)
