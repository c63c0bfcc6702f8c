"""Requests and errors of the service, in OpenAI's JSON shapes.

Bodies are parsed here (not by FastAPI) so that every bad request, malformed JSON included, gets OpenAI's error
object ``{"error": {"message", "type", "param", "code"}}`` with a 400 / 413, never FastAPI's 422 shape. Types
are strict: ``"max_tokens": "16"`` is an error naming ``max_tokens``, not a silent conversion.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any, Union

from pydantic import BaseModel, ConfigDict, ValidationError


class APIError(Exception):
    """An error answered as OpenAI's error JSON with ``status``."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None, kind: str = ""):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.kind = kind or {401: "authentication_error", 404: "invalid_request_error", 429: "rate_limit_error"}.get(
            status, "invalid_request_error" if status < 500 else "server_error"
        )

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


class Strict(BaseModel):
    # unknown fields are ignored (clients send fields of newer API versions), known ones are type-checked strictly
    model_config = ConfigDict(strict=True, extra="ignore")


Prompt = Union[str, list[str], list[int], list[list[int]]]


class CompletionRequest(Strict):
    model: str | None = None
    prompt: Prompt | None = None  # None or "": the end-of-text token (the start of a document), as OpenAI
    max_tokens: int | None = 16
    temperature: float | None = 1.0
    top_p: float | None = 1.0
    top_k: int | None = None  # ours (as vLLM's)
    n: int | None = 1
    stop: str | list[str] | None = None
    seed: int | None = None
    echo: bool | None = False
    logprobs: int | None = None
    stream: bool | None = False
    stream_options: dict[str, Any] | None = None
    # OpenAI fields this server does not implement: accepted only at their neutral values
    suffix: str | None = None
    best_of: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    user: str | None = None


class ImageRequest(Strict):
    model: str | None = None
    prompt: str
    n: int | None = 1
    size: str | None = None
    response_format: str | None = "b64_json"
    seed: int | None = None
    # ours
    guidance: float | None = None
    rerank: bool | str | None = None  # True / a CLIP's name: score with CLIP, best first; None: when a CLIP is served
    candidates: int | None = None  # drawn per prompt (≥ n); the n best by CLIP are returned
    temperature: float | None = 1.0
    top_k: int | None = None
    top_p: float | None = None
    quality: str | None = None
    style: str | None = None
    user: str | None = None


class EmbeddingRequest(Strict):
    model: str | None = None
    input: str | list[str]
    encoding_format: str | None = "float"
    dimensions: int | None = None
    user: str | None = None


class ClassificationRequest(Strict):
    model: str | None = None
    image: str | list[str]
    labels: list[str]
    templates: list[str] | None = None  # None: OpenAI's 80 ImageNet templates, as clip.zeroshot


class ChatRequest(Strict):
    model: str | None = None
    messages: list[dict[str, Any]]
    max_tokens: int | None = None  # None: up to the context (and --max-tokens)
    max_completion_tokens: int | None = None  # OpenAI's newer name for max_tokens
    temperature: float | None = 1.0
    top_p: float | None = 1.0
    top_k: int | None = None  # ours (as vLLM's)
    n: int | None = 1
    stop: str | list[str] | None = None
    seed: int | None = None
    logprobs: bool | None = False
    top_logprobs: int | None = None
    stream: bool | None = False
    stream_options: dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None
    # OpenAI fields this server does not implement: accepted only at their neutral values
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    user: str | None = None


def parse_body(raw: bytes, model: type[Strict], max_values: int = 2**18) -> Strict:
    """JSON bytes → ``model``, or an ``APIError`` 400 naming the offending field. Cheap checks come first, so a
    hostile body costs little: at most ``max_values`` JSON values (counted by commas before parsing), no
    nesting deeper than Python's recursion limit, and no lone UTF-16 surrogate (``"\\ud800"``) in any string,
    which no tokenizer can encode."""
    if raw.count(b",") >= max_values:
        raise APIError(400, f"the request body holds more than {max_values} JSON values; this is a limit per request")
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise APIError(400, f"malformed JSON in the request body: {e}") from None
    except RecursionError:
        raise APIError(400, "the request body's JSON is nested too deeply") from None
    if not isinstance(data, dict):
        raise APIError(400, f"the request body must be a JSON object, got {type(data).__name__}")
    if b"\\ud" in raw.lower():  # only escapes can carry a lone surrogate into a str
        _check_text(data, "")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        param = ".".join(str(x) for x in err["loc"] if not _is_union_tag(x)) or None
        if err["type"] == "missing":
            raise APIError(400, f"missing required parameter: {param}", param) from None
        # a union reports one error per member; say what the field may be instead
        expected = _EXPECTED.get(param.split(".")[0] if param else "", err["msg"])
        raise APIError(400, f"invalid type for '{param}': {expected}", param) from None


def _check_text(value: Any, where: str) -> None:
    """Raise a 400 naming the field if a string below ``value`` is not valid Unicode (a lone surrogate)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            field = where.split("[")[0].split(".")[0] or None
            raise APIError(400, f"'{where}' holds a lone UTF-16 surrogate: not valid Unicode text", field) from None
    elif isinstance(value, dict):
        for k, v in value.items():
            _check_text(k, where or "body")
            _check_text(v, f"{where}.{k}" if where else str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            if isinstance(v, (str, list, dict)):
                _check_text(v, f"{where}[{i}]")


def _is_union_tag(x: Any) -> bool:
    return isinstance(x, str) and ("[" in x or x in ("str", "int", "float", "bool"))


_EXPECTED = {
    "prompt": "a string, a list of strings, a list of token ids or a list of lists of token ids",
    "stop": "a string or a list of strings",
    "input": "a string or a list of strings",
    "image": "a base64 string (or data URL), or a list of them",
    "labels": "a list of strings",
    "templates": "a list of strings",
    "rerank": "true, false or the name of a served CLIP",
    "messages": "a list of message objects ({'role': ..., 'content': ...})",
}


def decode_image(data: str, max_bytes: int, param: str) -> bytes:
    """A base64 string or ``data:image/...;base64,`` URL → bytes (413 over ``max_bytes``; 400 if not base64)."""
    if data.startswith("data:"):
        head, _, data = data.partition(",")
        if ";base64" not in head:
            raise APIError(400, f"{param}: only base64 data URLs are supported (data:image/png;base64,...)", param)
    if len(data) * 3 // 4 > max_bytes:
        raise APIError(413, f"{param}: image of about {len(data) * 3 // 4} bytes; the limit is {max_bytes}", param)
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise APIError(400, f"{param}: not valid base64", param) from None


def is_image_url(text: str) -> bool:
    return text.startswith("data:image/")
