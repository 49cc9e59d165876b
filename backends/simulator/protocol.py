"""The OpenAI wire format: request parsing, error bodies, response bodies and SSE chunks.

Pure functions and small classes, no I/O. Chunks are built from pre-encoded byte
templates (only the token text changes between two chunks of one stream), because the
simulator is also the upstream of the gateway's overhead benchmark: a `json.dumps` per
token would cost more than everything else it does at time scale 0.
"""

from __future__ import annotations

import itertools
import json
import math
import zlib
from dataclasses import dataclass
from typing import Any

SYSTEM_FINGERPRINT = "tesseract-simulator"
DEFAULT_MAX_TOKENS = 16
#: The most choices a request may ask for (OpenAI's bound on `n`).
MAX_CHOICES = 128
#: Approximate tokenizer: one token per 4 characters of text (rounded up), the usual
#: rule of thumb for English with a BPE vocabulary. Real token counting is not needed.
CHARS_PER_TOKEN = 4

#: The filler vocabulary. Every word is one token, with its leading space.
_FILLER = """
simulated tokens flow from a modelled chip through the mesh while the router measures
latency queue depth and cost for every request it places on a backend in some region
near the user this text is filler and means nothing
"""
WORDS = tuple(" " + w for w in _FILLER.split())
_WORDS_JSON = tuple(json.dumps(w).encode() for w in WORDS)

_ids = itertools.count(1)


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


# --------------------------------------------------------------------------- errors


class ApiError(Exception):
    """An error rendered as OpenAI's `{"error": {"message", "type", "param", "code"}}`."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.retry_after = retry_after

    def body(self) -> bytes:
        return error_body(self.message, type=self.type, code=self.code, param=self.param)


def error_body(
    message: str, *, type: str, code: str | None = None, param: str | None = None
) -> bytes:
    return _dumps({"error": {"message": message, "type": type, "param": param, "code": code}})


def invalid(message: str, *, param: str | None = None, code: str = "invalid_value") -> ApiError:
    return ApiError(400, message, param=param, code=code)


def unavailable(message: str, *, code: str, retry_after: float | None = None) -> ApiError:
    return ApiError(
        503, message, type="service_unavailable_error", code=code, retry_after=retry_after
    )


# --------------------------------------------------------------------------- requests


@dataclass(slots=True)
class GenerationRequest:
    """What the simulator needs from a chat or text completion request."""

    chat: bool
    model: str
    prompt_tokens: int
    max_tokens: int
    #: True when the client set a limit: the output then ends with finish_reason
    #: "length"; without one the filler "stops naturally" after the default.
    limited: bool
    stream: bool
    include_usage: bool
    seed: int
    #: how many choices to generate, one sequence (and slot) each (OpenAI's `n`)
    n: int = 1
    #: its place in the queue (vLLM's `priority`: lower first, ties in arrival order)
    priority: int = 0


def _token_ids(value: Any) -> bool:
    """A non-empty list of ints (OpenAI's prompt of token ids; a bool is not one)."""
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(p, int) and not isinstance(p, bool) for p in value)
    )


def _text_of(content: Any, param: str) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list):  # content parts: only the text parts count
        parts = []
        for part in content:
            if not isinstance(part, dict):
                raise invalid(f"{param} parts must be objects", param=param, code="invalid_type")
            if part.get("type") == "text":
                text = part.get("text")
                if not isinstance(text, str):
                    raise invalid(
                        f"{param} text parts need a string 'text'", param=param, code="invalid_type"
                    )
                parts.append(text)
        return "".join(parts)
    raise invalid(f"{param} must be a string or a list of parts", param=param, code="invalid_type")


def count_tokens(text_chars: int) -> int:
    return max(1, math.ceil(text_chars / CHARS_PER_TOKEN))


def _int_field(body: dict, name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid(f"'{name}' must be an integer", param=name, code="invalid_type")
    if value < 1:
        raise invalid(f"'{name}' must be at least 1", param=name)
    return value


def _number_field(body: dict, name: str) -> float | None:
    """A sampling parameter, read only to be checked against vLLM's `SamplingParams`."""
    value = body.get(name)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
        raise invalid(f"'{name}' must be a number", param=name, code="invalid_type")
    return value


def parse_request(raw: bytes, *, chat: bool, context_length: int) -> GenerationRequest:
    """Validate a request body. Model availability is checked by the caller."""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(
            400, "We could not parse the JSON body of your request.", code="invalid_json"
        ) from None
    if not isinstance(body, dict):
        raise invalid("The request body must be a JSON object.", code="invalid_type")

    model = body.get("model")
    if model is None:
        raise invalid(
            "you must provide a model parameter", param="model", code="missing_required_parameter"
        )
    if not isinstance(model, str):
        raise invalid("'model' must be a string", param="model", code="invalid_type")

    if chat:
        messages = body.get("messages")
        if messages is None:
            raise invalid(
                "'messages' is a required property",
                param="messages",
                code="missing_required_parameter",
            )
        if not isinstance(messages, list) or not messages:
            raise invalid(
                "'messages' must be a non-empty array", param="messages", code="invalid_type"
            )
        chars = 0
        texts = []
        for i, message in enumerate(messages):
            if not isinstance(message, dict) or not isinstance(message.get("role"), str):
                raise invalid(
                    f"messages[{i}] must be an object with a string 'role'",
                    param=f"messages[{i}]",
                    code="invalid_type",
                )
            text = _text_of(message.get("content"), f"messages[{i}].content")
            chars += len(text)
            texts.append(text)
    else:
        prompt = body.get("prompt")
        if prompt is None:
            raise invalid(
                "'prompt' is a required property", param="prompt", code="missing_required_parameter"
            )
        if isinstance(prompt, str):
            texts = [prompt]
        elif isinstance(prompt, list) and all(isinstance(p, str) for p in prompt):
            if len(prompt) != 1:
                raise invalid("the simulator takes exactly one prompt", param="prompt")
            texts = prompt
        elif _token_ids(prompt):
            texts = ["x" * (CHARS_PER_TOKEN * len(prompt))]  # already token ids
        elif isinstance(prompt, list) and all(_token_ids(p) for p in prompt):
            if len(prompt) != 1:
                raise invalid("the simulator takes exactly one prompt", param="prompt")
            texts = ["x" * (CHARS_PER_TOKEN * len(prompt[0]))]
        else:
            raise invalid(
                "'prompt' must be a string, a list of strings, a list of token ids or a "
                "list of such lists",
                param="prompt",
                code="invalid_type",
            )
        chars = sum(len(t) for t in texts)

    max_tokens = _int_field(body, "max_completion_tokens")
    if max_tokens is None:
        max_tokens = _int_field(body, "max_tokens")
    limited = max_tokens is not None
    if max_tokens is None:
        max_tokens = DEFAULT_MAX_TOKENS

    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise invalid("'stream' must be a boolean", param="stream", code="invalid_type")
    options = body.get("stream_options")
    include_usage = False
    if options is not None:
        if not isinstance(options, dict):
            raise invalid(
                "'stream_options' must be an object", param="stream_options", code="invalid_type"
            )
        if not stream:
            raise invalid(
                "'stream_options' is only allowed when 'stream' is true", param="stream_options"
            )
        include_usage = bool(options.get("include_usage", False))
    n = _int_field(body, "n") or 1
    if n > MAX_CHOICES:
        raise invalid(f"'n' must be at most {MAX_CHOICES}", param="n")
    temperature = _number_field(body, "temperature")
    if temperature is not None and not temperature >= 0:  # NaN fails too
        raise invalid("'temperature' must be at least 0", param="temperature")
    top_p = _number_field(body, "top_p")
    if top_p is not None and not 0 < top_p <= 1:
        raise invalid("'top_p' must be in (0, 1]", param="top_p")

    prompt_tokens = count_tokens(chars)
    if prompt_tokens + max_tokens > context_length:
        raise invalid(
            f"This model's maximum context length is {context_length} tokens; the request "
            f"asks for {prompt_tokens} prompt tokens plus {max_tokens} output tokens.",
            param="messages" if chat else "prompt",
            code="context_length_exceeded",
        )
    priority = body.get("priority", 0)
    if priority is None:
        priority = 0
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise invalid("'priority' must be an integer", param="priority", code="invalid_type")
    seed = body.get("seed")
    seed = seed if isinstance(seed, int) else 0
    seed = zlib.crc32("\x00".join(texts).encode(), seed & 0xFFFFFFFF)
    return GenerationRequest(
        chat=chat,
        model=model,
        prompt_tokens=prompt_tokens,
        max_tokens=max_tokens,
        limited=limited,
        stream=stream,
        include_usage=include_usage,
        seed=seed,
        n=n,
        priority=priority,
    )


# --------------------------------------------------------------------------- responses


def token_index(seed: int, i: int) -> int:
    """The i-th filler word of a request: deterministic in the request's text and seed."""
    return (seed + 7 * i) % len(WORDS)


def choice_seed(req: GenerationRequest, index: int) -> int:
    """Choice `index`'s seed: the request's, moved by the index, so that the first is
    the answer n=1 gets and no two of the first len(WORDS) say the same words."""
    return req.seed + index


def usage(req: GenerationRequest, tokens_each: int) -> dict[str, int]:
    """The usage of `tokens_each` tokens generated for each of the request's choices."""
    completion_tokens = tokens_each * req.n
    return {
        "prompt_tokens": req.prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": req.prompt_tokens + completion_tokens,
    }


def finish_reason(req: GenerationRequest) -> str:
    return "length" if req.limited else "stop"


def new_id(chat: bool) -> str:
    return f"{'chatcmpl' if chat else 'cmpl'}-sim{next(_ids):x}"


def completion_body(req: GenerationRequest, *, model: str, created: int) -> bytes:
    """A whole non-streamed `chat.completion` or `text_completion`."""
    choices = []
    for index in range(req.n):
        seed = choice_seed(req, index)
        text = "".join(WORDS[token_index(seed, i)] for i in range(req.max_tokens))
        choice: dict[str, Any] = {"index": index}
        if req.chat:
            choice["message"] = {"role": "assistant", "content": text, "refusal": None}
        else:
            choice["text"] = text
        choice |= {"logprobs": None, "finish_reason": finish_reason(req)}
        choices.append(choice)
    obj = "chat.completion" if req.chat else "text_completion"
    return _dumps(
        {
            "id": new_id(req.chat),
            "object": obj,
            "created": created,
            "model": model,
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "choices": choices,
            "usage": usage(req, req.max_tokens),
        }
    )


class ChunkWriter:
    """Encodes the SSE events of one streamed response.

    Every event is `data: {json}\\n\\n`; the stream ends with `data: [DONE]\\n\\n`. With
    `include_usage`, every chunk carries `"usage": null` and a last chunk with empty
    `choices` carries the usage, as OpenAI does. With n choices, each chunk carries one
    choice, and each step has a chunk for every choice in order of index, as vLLM sends.
    `sent` counts the steps, the tokens of each choice.
    """

    __slots__ = ("_head", "_seeds", "_tail", "req", "sent")

    def __init__(self, req: GenerationRequest, *, model: str, created: int) -> None:
        self.req = req
        self.sent = 0
        self._seeds = [choice_seed(req, index) for index in range(req.n)]
        head = {
            "id": new_id(req.chat),
            "object": "chat.completion.chunk" if req.chat else "text_completion",
            "created": created,
            "model": model,
            "system_fingerprint": SYSTEM_FINGERPRINT,
        }
        # `{"id":...,"system_fingerprint":"..."` then `,"choices":[...]` then the tail.
        self._head = b"data: " + _dumps(head)[:-1]
        self._tail = b"}\n\n" if not req.include_usage else b',"usage":null}\n\n'

    def _choice(self, index: int, inner: bytes, reason: bytes = b"null") -> bytes:
        return (
            self._head
            + b',"choices":[{"index":%d,' % index
            + inner
            + b',"logprobs":null,"finish_reason":'
            + reason
            + b"}]"
            + self._tail
        )

    def start(self) -> bytes:
        """The opening chunk: chat streams announce the assistant role first."""
        if self.req.chat:
            role = b'"delta":{"role":"assistant","content":""}'
            return b"".join(self._choice(index, role) for index in range(self.req.n))
        return b""

    def tokens(self, count: int) -> bytes:
        """The next `count` tokens of every choice, one chunk each."""
        key = b'"delta":{"content":' if self.req.chat else b'"text":'
        close = b"}" if self.req.chat else b""
        start = self.sent
        self.sent += count
        return b"".join(
            self._choice(index, key + _WORDS_JSON[token_index(seed, i)] + close)
            for i in range(start, start + count)
            for index, seed in enumerate(self._seeds)
        )

    def finish(self) -> bytes:
        """The closing chunk(s) and `[DONE]`."""
        reason = b'"' + finish_reason(self.req).encode() + b'"'
        inner = b'"delta":{}' if self.req.chat else b'"text":""'
        out = b"".join(self._choice(index, inner, reason) for index in range(self.req.n))
        if self.req.include_usage:
            out += (
                self._head
                + b',"choices":[],"usage":'
                + _dumps(usage(self.req, self.sent))
                + b"}\n\n"
            )
        return out + b"data: [DONE]\n\n"
