"""Chat templates: OpenAI's ``messages`` → one prompt string for the GPT.

Which template a served GPT uses, first found wins:

1. ``--chat-template FILE`` (a Jinja template);
2. the Hugging Face tokenizer's own: ``chat_template`` in the checkpoint directory's ``tokenizer_config.json``,
   or its ``chat_template.jinja``;
3. the plain default below, for base models that were never taught a chat format::

       System: You are a helpful assistant.
       User: What is the capital of France?
       Assistant: Paris.
       User: And of Italy?
       Assistant:

   one ``Role: content`` line per message, then ``Assistant:`` to start the answer; generation also stops at
   ``\\nUser:`` (the model starting the next turn itself).

Templates are rendered as Hugging Face renders them: a sandboxed Jinja environment with ``messages``,
``add_generation_prompt``, ``bos_token``, ``eos_token`` and ``raise_exception``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ message['role'] | capitalize }}: {{ message['content'] }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)
DEFAULT_STOPS = ["\nUser:"]
ROLES = ("system", "developer", "user", "assistant")


class TemplateError(ValueError):
    """A template that cannot be read or rendered; one line for the user."""


@dataclass
class ChatTemplate:
    source: str  # where it came from: "default", a file path, "tokenizer_config.json"
    text: str
    bos_token: str = ""
    eos_token: str = ""
    stops: list[str] = field(default_factory=list)  # added to every request's stop strings

    def __post_init__(self) -> None:
        from jinja2.exceptions import TemplateError as JinjaError
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(message: str):
            raise TemplateError(message)

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = raise_exception
        try:
            self._template = env.from_string(self.text)
        except JinjaError as e:
            raise TemplateError(f"chat template {self.source}: {e}") from None

    def render(self, messages: list[dict]) -> str:
        from jinja2.exceptions import TemplateError as JinjaError

        try:
            return self._template.render(
                messages=messages, add_generation_prompt=True, bos_token=self.bos_token, eos_token=self.eos_token
            )
        except TemplateError:
            raise
        except (JinjaError, TypeError, ValueError, KeyError) as e:
            raise TemplateError(f"the chat template could not render these messages: {e}") from None


def _token(value) -> str:
    if isinstance(value, dict):  # {"content": "<|endoftext|>", ...}
        return str(value.get("content", ""))
    return value if isinstance(value, str) else ""


def load_template(file: str | None, checkpoint: str | None) -> ChatTemplate:
    """The template for a GPT served from ``checkpoint`` (see the module doc for the order)."""
    config: dict = {}
    directory = Path(checkpoint) if checkpoint else None
    if directory is not None and (directory / "tokenizer_config.json").is_file():
        try:
            config = json.loads((directory / "tokenizer_config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            config = {}
    tokens = {"bos_token": _token(config.get("bos_token")), "eos_token": _token(config.get("eos_token"))}
    if file is not None:
        try:
            return ChatTemplate(file, Path(file).read_text(encoding="utf-8"), **tokens)
        except (OSError, UnicodeDecodeError) as e:
            raise TemplateError(f"--chat-template {file}: {type(e).__name__}: {e}") from None
    own = config.get("chat_template")
    if isinstance(own, list):  # named templates: the default one
        own = next((t.get("template") for t in own if isinstance(t, dict) and t.get("name") == "default"), None)
    if isinstance(own, str) and own:
        return ChatTemplate(str(directory / "tokenizer_config.json"), own, **tokens)
    if directory is not None and (directory / "chat_template.jinja").is_file():
        return ChatTemplate(
            str(directory / "chat_template.jinja"), (directory / "chat_template.jinja").read_text(), **tokens
        )
    return ChatTemplate("default", DEFAULT_TEMPLATE, stops=list(DEFAULT_STOPS))


def message_text(content, index: int) -> str:
    """A message's ``content``: a string, or a list of ``{"type": "text", "text": ...}`` parts (joined)."""
    if isinstance(content, str):
        return content
    if content is None:
        return ""
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise ValueError(f"messages[{index}].content: only text parts are supported here, got {kind!r}")
            parts.append(part["text"])
        return "".join(parts)
    raise ValueError(f"messages[{index}].content must be a string or a list of text parts")


def normalise(messages: list[dict], max_chars: int) -> list[dict]:
    """OpenAI messages → ``[{"role", "content"}]`` with string contents; ``ValueError`` naming the message."""
    if not messages:
        raise ValueError("messages must not be empty")
    out = []
    for i, m in enumerate(messages):
        role = m.get("role")
        if role not in ROLES:
            raise ValueError(f"messages[{i}].role must be one of {', '.join(ROLES)}, got {role!r}")
        text = message_text(m.get("content"), i)
        if len(text) > max_chars:
            raise ValueError(f"messages[{i}] is {len(text)} characters; at most {max_chars}")
        out.append({"role": "system" if role == "developer" else role, "content": text})
    return out
