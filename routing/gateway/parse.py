"""Read an inference request: the OpenAI body, Tesseract's requirements, key defaults.

The body is decoded once into a dict (what is forwarded upstream) and validated by
converting it to a typed struct (msgspec: microseconds, and an error that names the
field). Tesseract's requirements ride in a `tesseract` object in the body (the
OpenAI SDK's `extra_body`) or in `X-Tesseract-*` headers (`extra_headers`); the body
wins where both speak. A key's defaults apply where the request is silent.

Everything a request can put in its usage record is held at the door to what the
record's columns can store: the same lengths as `billing.UsageEvent` (and
`backends.SessionMove` for `session_id`), and no NUL character, which PostgreSQL
refuses in text and in JSON. Numbers are finite, and JSON nests at most
`MAX_JSON_DEPTH` deep, so nothing later (re-encoding the body for the backend, the
usage row) can fail on what the door let in.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Annotated, Any

import msgspec
import numpy as np

from accounts.keycache import ResolvedKey
from backends.models import Certification, unknown_certifications
from billing.models import UsageEvent
from routing.engine import Request as RouteRequest
from routing.engine import Snapshot
from routing.errors import InvalidRequest, PayloadTooLarge

MAX_BODY_BYTES = 4 * 1024 * 1024
#: Deep enough for any real tool schema; far below the recursion limit of the JSON
#: codec, so a body the door accepts can always be encoded again.
MAX_JSON_DEPTH = 64
#: The asked model is stored with the usage (served or not: `fallback_models`).
MODEL_MAX_LENGTH = UsageEvent._meta.get_field("model").max_length or 80
SESSION_ID_MAX_LENGTH = 200  # backends.SessionMove.session_id
#: The longest deadline a request may ask for (a day): finite, so it can be stored.
MAX_MS = 86_400_000
#: The most output tokens a request may ask for, and the most prompt tokens a dry run
#: may name without a prompt (`RouteBody.input_tokens`).
MAX_TOKENS = 1_000_000
MAX_INPUT_TOKENS = 100_000_000
DEFAULT_MAX_TOKENS = 256
#: Prompt tokens are estimated at ~4 characters a token (the usual rule of thumb for
#: English with BPE tokenizers), for routing and for what limits and budgets reserve;
#: billing uses the backend's own count. Text outside ASCII tokenizes denser (CJK runs
#: about a token a character), so each of its UTF-8 bytes past the first weighs 1.5
#: characters more (`_weight`): a 3-byte CJK character weighs 4, a token; a 2-byte
#: accented or Cyrillic one 2.5. ASCII text costs nothing extra to weigh.
CHARS_PER_TOKEN = 4
PER_MESSAGE_TOKENS = 4

Millis = Annotated[float, msgspec.Meta(gt=0, le=MAX_MS)]
Price = Annotated[float, msgspec.Meta(ge=0, le=1_000_000)]
Tokens = Annotated[int, msgspec.Meta(ge=1, le=MAX_TOKENS)]
Tag = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
Model = Annotated[str, msgspec.Meta(min_length=1, max_length=MODEL_MAX_LENGTH)]
SessionId = Annotated[str, msgspec.Meta(min_length=1, max_length=SESSION_ID_MAX_LENGTH)]
TokenId = Annotated[int, msgspec.Meta(ge=0, le=2**31 - 1)]
#: OpenAI's four shapes of a completion's prompt: a string, a list of strings, a list
#: of token ids, a list of such lists; one shape at a time (`_check_prompt`): msgspec's
#: unions take one array type, so the list's items are typed as any of the three.
Prompt = (
    str
    | Annotated[
        list[str | TokenId | Annotated[list[TokenId], msgspec.Meta(min_length=1)]],
        msgspec.Meta(min_length=1),
    ]
)


class TesseractOptions(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """The requirements a request may carry. Unknown names are an error, not ignored."""

    max_ttft_ms: Millis | None = None
    max_latency_ms: Millis | None = None
    compliance: list[Tag] | None = None
    regions: list[Tag] | None = None
    countries: list[Tag] | None = None
    jurisdictions: list[Tag] | None = None
    priority: Annotated[int, msgspec.Meta(ge=1, le=5)] | None = None
    prefer_cost_over_latency: bool | None = None
    max_price: Price | None = None
    session_id: SessionId | None = None
    client_region: Tag | None = None
    client_lat: Annotated[float, msgspec.Meta(ge=-90, le=90)] | None = None
    client_lon: Annotated[float, msgspec.Meta(ge=-180, le=180)] | None = None
    fallback_models: list[Model] | None = None
    allow_relaxed_deadline: bool | None = None
    strategy: Tag | None = None


class Message(msgspec.Struct):
    role: Annotated[str, msgspec.Meta(min_length=1)]
    content: str | list[dict[str, Any]] | None = None


class StreamOptions(msgspec.Struct):
    include_usage: bool = False


class _Common(msgspec.Struct):
    model: Model
    stream: bool = False
    max_tokens: Tokens | None = None
    max_completion_tokens: Tokens | None = None
    n: Annotated[int, msgspec.Meta(ge=1, le=128)] | None = None  # OpenAI's bounds
    stream_options: StreamOptions | None = None
    tesseract: TesseractOptions | None = None


class ChatBody(_Common):
    messages: Annotated[list[Message], msgspec.Meta(min_length=1)] = msgspec.field(
        default_factory=list
    )


class CompletionBody(_Common):
    prompt: Prompt = ""
    best_of: Annotated[int, msgspec.Meta(ge=1, le=20)] | None = None


class RouteBody(_Common):
    """`/v1/route` takes either shape; `input_tokens` may replace the prompt."""

    messages: list[Message] | None = None
    prompt: Prompt | None = None
    input_tokens: Annotated[int, msgspec.Meta(ge=0, le=MAX_INPUT_TOKENS)] | None = None


#: How JSON writes a NUL character (the only way: a raw control byte is invalid JSON).
NUL_ESCAPE = b"\\u0000"
#: The options that are stored with the usage (`constraints`) or a session move.
_STORED_TEXT = ("session_id", "client_region", "strategy")
_STORED_LISTS = ("compliance", "regions", "countries", "jurisdictions", "fallback_models")

_BODY_TYPES: dict[str, type[_Common]] = {
    "chat.completions": ChatBody,
    "completions": CompletionBody,
    "route": RouteBody,
}

_PATH_RE = re.compile(r"\$\.?([A-Za-z_][\w.]*)")
#: +1 for an opening bracket, -1 for a closing one, by byte.
_BRACKET_STEP = np.zeros(256, dtype=np.int32)
_BRACKET_STEP[[ord("["), ord("{")]] = 1
_BRACKET_STEP[[ord("]"), ord("}")]] = -1


@dataclass(frozen=True, slots=True)
class Parsed:
    endpoint: str
    body: dict[str, Any]  # what goes upstream: the client's body less `tesseract`
    model: str
    stream: bool
    include_usage: bool  # the client asked for usage in the stream
    route: RouteRequest
    strategy: str | None
    #: the regions the request itself names (`regions`, `client_region`), not its key's
    #: defaults: what the gateway holds to the catalog's regions (`Gateway._route`)
    named_regions: frozenset[str] = frozenset()
    #: how many completions of up to max_tokens it may generate: n (or best_of, all
    #: generated and billed) for each prompt of a batch; what limits and budgets reserve
    #: output for (routing predicts one: they decode side by side)
    completions: int = 1
    #: the client set max_tokens (or max_completion_tokens); else the route's
    #: max_output_tokens is the default, and the backend may generate to its context
    max_tokens_given: bool = True


def decode_json(raw: bytes) -> dict[str, Any]:
    if len(raw) > MAX_BODY_BYTES:
        raise PayloadTooLarge(f"The request body is larger than {MAX_BODY_BYTES} bytes.")
    try:
        body = msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        raise InvalidRequest(f"The body is not valid JSON: {exc}", code="invalid_json") from None
    except UnicodeDecodeError as exc:
        raise InvalidRequest(
            f"The body is not valid UTF-8 (byte {exc.start}).", code="invalid_json"
        ) from None
    except RecursionError:  # nested past the codec's own limit, so far past ours
        raise _too_deep() from None
    if _nesting_exceeds(raw, MAX_JSON_DEPTH):
        raise _too_deep()
    if not isinstance(body, dict):
        raise InvalidRequest("The body must be a JSON object.", code="invalid_json")
    return body


def _too_deep() -> InvalidRequest:
    return InvalidRequest(
        f"The body nests JSON more than {MAX_JSON_DEPTH} levels deep.", code="invalid_json"
    )


def _nesting_exceeds(raw: bytes, limit: int) -> bool:
    """Whether valid JSON nests arrays/objects deeper than `limit`.

    Free for the usual request (fewer brackets than the limit cannot nest past it);
    otherwise vectorised (~25 ms for a 4 MB body of brackets): drop escaped
    backslashes and quotes, mask what lies inside strings, and take the running
    depth's maximum.
    """
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return False
    codes = np.frombuffer(raw.replace(b"\\\\", b"").replace(b'\\"', b""), dtype=np.uint8)
    step = _BRACKET_STEP[codes]
    step[np.bitwise_xor.accumulate(codes == ord('"'))] = 0  # inside a string
    return int(np.cumsum(step, dtype=np.int32).max()) > limit


def _validation_error(exc: msgspec.ValidationError) -> InvalidRequest:
    text = str(exc)
    match = _PATH_RE.search(text)
    param = match.group(1) if match else None
    return InvalidRequest(f"Invalid request: {text}", param=param, code="invalid_value")


def _check_no_nul(typed: _Common) -> None:
    """PostgreSQL stores no NUL in text or JSON: refuse it in every string that is stored.

    Called only when the body can hold one (JSON writes NUL as `\\u0000`, a scan in
    C); the prompt is not stored and goes upstream as sent.
    """
    bad: str | None = "model" if "\x00" in typed.model else None
    opts = typed.tesseract
    if bad is None and opts is not None:
        for name in _STORED_TEXT:
            value = getattr(opts, name)
            if value is not None and "\x00" in value:
                bad = f"tesseract.{name}"
        for name in _STORED_LISTS:
            if any("\x00" in item for item in getattr(opts, name) or ()):
                bad = f"tesseract.{name}"
    if bad is not None:
        raise InvalidRequest(
            f"{bad} may not contain a NUL character (\\u0000).", param=bad, code="invalid_value"
        )


def _header_options(headers: Iterable[tuple[bytes, bytes]]) -> dict[str, Any]:
    """`X-Tesseract-Max-Ttft-Ms: 50` → {"max_ttft_ms": "50"}; lists are comma-separated."""
    options: dict[str, Any] = {}
    for name, value in headers:
        if name[:12].lower() != b"x-tesseract-":
            continue
        key = name[12:].decode("latin-1").lower().replace("-", "_")
        text = value.decode("latin-1").strip()
        field = TesseractOptions.__struct_fields__
        if key not in field:
            header = _header_name(key)
            raise InvalidRequest(
                f"Unknown header {header}.", param=header, code="unknown_parameter"
            )
        if "\x00" in text:
            header = _header_name(key)
            raise InvalidRequest(
                f"{header} may not contain a NUL character.", param=header, code="invalid_value"
            )
        options[key] = text
    return options


def _coerce_header_values(options: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    list_fields = {"compliance", "regions", "countries", "jurisdictions", "fallback_models"}
    for key, text in options.items():
        if key in list_fields:
            out[key] = [item.strip() for item in text.split(",") if item.strip()]
        elif key in {"prefer_cost_over_latency", "allow_relaxed_deadline"}:
            lowered = text.lower()
            if lowered not in {"true", "false", "1", "0"}:
                header = _header_name(key)
                raise InvalidRequest(
                    f"{header} must be true or false.", param=header, code="invalid_value"
                )
            out[key] = lowered in {"true", "1"}
        elif key in {"session_id", "client_region", "strategy"}:
            out[key] = text
        elif key == "priority":
            out[key] = _number(key, text, int)
        else:
            out[key] = _number(key, text, float)
    return out


def _header_name(key: str) -> str:
    """`max_ttft_ms` → `X-Tesseract-Max-Ttft-Ms`, as the client wrote it."""
    return "X-Tesseract-" + "-".join(part.capitalize() for part in key.split("_"))


def _number(key: str, text: str, kind: type) -> Any:
    try:
        return kind(text)
    except ValueError:
        header = _header_name(key)
        raise InvalidRequest(
            f"{header} must be a number, not {text!r}.", param=header, code="invalid_value"
        ) from None


def _weight(text: str) -> int:
    """`text`'s length in ASCII characters' worth of tokens (`CHARS_PER_TOKEN`)."""
    if text.isascii():  # a flag on the string: free
        return len(text)
    extra = len(text.encode()) - len(text)  # JSON decoding refused lone surrogates
    return len(text) + 3 * extra // 2


def _prompt_tokens(prompt: Any) -> tuple[int, int]:
    """(characters weighed as text, token ids counted) of a completion's prompt."""
    if isinstance(prompt, list) and prompt:
        if isinstance(prompt[0], int):
            return 0, len(prompt)
        if isinstance(prompt[0], list):
            return 0, sum(len(ids) for ids in prompt)
    return _text_tokens(prompt), 0


def _check_prompt(prompt: Any) -> None:
    if isinstance(prompt, list) and len({type(p) for p in prompt}) > 1:
        raise InvalidRequest(
            "prompt takes a string, a list of strings, a list of token ids or a list of "
            "such lists, one shape at a time.",
            param="prompt",
            code="invalid_value",
        )


def _text_tokens(value: Any) -> int:
    if value is None:
        return 0
    if isinstance(value, str):
        return _weight(value)
    if isinstance(value, list):
        total = 0
        for part in value:
            if isinstance(part, str):
                total += _weight(part)
            elif isinstance(part, dict):
                total += _weight(str(part.get("text", "")))
        return total
    return 0


def estimate_input_tokens(body: _Common) -> int:
    """Estimated from text (`CHARS_PER_TOKEN`); a prompt of token ids is counted."""
    chars, messages, ids = 0, 0, 0
    if isinstance(body, (ChatBody, RouteBody)) and body.messages:
        messages = len(body.messages)
        chars += sum(_text_tokens(m.content) for m in body.messages)
    if isinstance(body, (CompletionBody, RouteBody)):
        text, ids = _prompt_tokens(body.prompt)
        chars += text
    return chars // CHARS_PER_TOKEN + PER_MESSAGE_TOKENS * messages + ids


_COUNTRY = re.compile(r"[A-Za-z]{2}")
_JURISDICTION = re.compile(r"[A-Za-z]{2}|(?i:eea)")


def _check_compliance(tags: list[str] | None) -> None:
    """A compliance tag Tesseract has no word for (clusters and regions hold only
    `Certification`'s) can never be met: a typo or a wish, said as such, not as a policy
    the mesh fails. A key's defaults were checked when they were set."""
    if not tags or not (unknown := unknown_certifications(t.lower() for t in tags)):
        return
    tag = next(t for t in tags if t.lower() in unknown)
    raise InvalidRequest(
        f"Unknown compliance tag {tag!r}: Tesseract's are "
        f"{', '.join(sorted(Certification.values))}.",
        param="tesseract.compliance",
        code="invalid_value",
    )


def _check_codes(name: str, codes: list[str] | None, form: re.Pattern[str], takes: str) -> None:
    """A country or jurisdiction not written as a code matches no site: it is a mistake
    (`Germany` for `DE`), said here rather than as a policy nothing satisfies."""
    for code in codes or ():
        if form.fullmatch(code) is None:
            raise InvalidRequest(
                f"tesseract.{name} takes {takes} (such as 'DE'), not {code!r}.",
                param=f"tesseract.{name}",
                code="invalid_value",
            )


def _lowered(items: list[str] | tuple[str, ...] | None) -> frozenset[str] | None:
    return None if not items else frozenset(i.lower() for i in items)


def parse(
    endpoint: str, raw: bytes, headers: Iterable[tuple[bytes, bytes]], key: ResolvedKey
) -> Parsed:
    """Validate a request and turn it into the upstream body and the engine's request."""
    return parse_body(endpoint, decode_json(raw), headers, key, may_hold_nul=NUL_ESCAPE in raw)


def parse_body(
    endpoint: str,
    body: dict[str, Any],
    headers: Iterable[tuple[bytes, bytes]],
    key: ResolvedKey,
    *,
    may_hold_nul: bool = True,
) -> Parsed:
    """`parse` for a body already decoded by `decode_json` (the WebSocket's frames).

    `may_hold_nul`: False when the raw JSON has no `NUL_ESCAPE`, so no string holds NUL.
    """
    header_options = _coerce_header_values(_header_options(headers))
    if header_options:
        given = body.get("tesseract")
        if given is not None and not isinstance(given, dict):
            raise InvalidRequest(
                f"tesseract must be an object, not {type(given).__name__}.",
                param="tesseract",
                code="invalid_value",
            )
        body["tesseract"] = {**header_options, **(given or {})}
    try:
        typed = msgspec.convert(body, _BODY_TYPES[endpoint])
    except msgspec.ValidationError as exc:
        raise _validation_error(exc) from None
    if may_hold_nul:
        _check_no_nul(typed)
    if isinstance(typed, (CompletionBody, RouteBody)):
        _check_prompt(typed.prompt)
    opts = typed.tesseract or TesseractOptions()
    _check_compliance(opts.compliance)
    _check_codes("countries", opts.countries, _COUNTRY, "ISO 3166-1 alpha-2 country codes")
    _check_codes("jurisdictions", opts.jurisdictions, _JURISDICTION, "EU, EEA or country codes")
    if (opts.client_lat is None) != (opts.client_lon is None):
        raise InvalidRequest(
            "Give both client_lat and client_lon, or neither.", param="tesseract.client_lat"
        )

    input_tokens = estimate_input_tokens(typed)
    if isinstance(typed, RouteBody) and typed.input_tokens is not None:
        input_tokens = typed.input_tokens
    max_output = typed.max_completion_tokens or typed.max_tokens or DEFAULT_MAX_TOKENS

    regions = _lowered(opts.regions)
    client_region = opts.client_region.lower() if opts.client_region else None
    route_request = RouteRequest(
        model=typed.model,
        input_tokens=input_tokens,
        max_output_tokens=max_output,
        max_ttft_ms=opts.max_ttft_ms if opts.max_ttft_ms is not None else key.default_max_ttft_ms,
        max_latency_ms=(
            opts.max_latency_ms if opts.max_latency_ms is not None else key.default_max_latency_ms
        ),
        compliance=_lowered(
            opts.compliance if opts.compliance is not None else key.default_compliance
        )
        or frozenset(),
        allowed_jurisdictions=(
            None if not opts.jurisdictions else frozenset(j.upper() for j in opts.jurisdictions)
        ),
        allowed_countries=None
        if not opts.countries
        else frozenset(c.upper() for c in opts.countries),
        allowed_regions=regions if opts.regions is not None else _lowered(key.default_regions),
        priority=opts.priority or 3,
        prefer_cost_over_latency=bool(opts.prefer_cost_over_latency),
        max_price_per_mtok=opts.max_price,
        session_id=opts.session_id,
        client_region=client_region,
        client_lat=opts.client_lat,
        client_lon=opts.client_lon,
        fallback_models=tuple(opts.fallback_models or ()),
        allow_relaxed_deadline=bool(opts.allow_relaxed_deadline),
        org_id=key.org_id,  # its private clusters join the candidates; no one else's
    )
    body.pop("tesseract", None)
    include_usage = bool(typed.stream_options and typed.stream_options.include_usage)
    return Parsed(
        endpoint=endpoint,
        body=body,
        model=typed.model,
        stream=typed.stream,
        include_usage=include_usage,
        route=route_request,
        strategy=opts.strategy,
        named_regions=(regions or frozenset()) | ({client_region} if client_region else set()),
        completions=_completions(typed),
        max_tokens_given=typed.max_completion_tokens is not None or typed.max_tokens is not None,
    )


def _completions(typed: _Common) -> int:
    """`Parsed.completions`: n or best_of, whichever is more, for each prompt."""
    each = typed.n or 1
    if not isinstance(typed, CompletionBody):
        return each  # a chat has one conversation; the dry run reserves nothing
    each = max(each, typed.best_of or 1)
    prompt = typed.prompt
    batch = len(prompt) if isinstance(prompt, list) and not isinstance(prompt[0], int) else 1
    return each * batch


def check_regions(parsed: Parsed, snapshot: Snapshot) -> None:
    """A region the world has never heard of, named by the request, is a typo, not a
    policy nothing meets: a 400 that names it, alone or beside known ones (a 422 would
    blame the mesh, and beside a known region it would be ignored without a word). A
    key's default regions were checked when they were set."""
    unknown = parsed.named_regions - snapshot.known_regions
    if unknown:
        name = min(unknown)
        field = "client_region" if name == parsed.route.client_region else "regions"
        raise _unknown_region(f"tesseract.{field}", name, snapshot.known_regions)


def _unknown_region(param: str, name: str, known: frozenset[str]) -> InvalidRequest:
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.8)  # a typo, not a guess
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return InvalidRequest(
        f"Unknown region {name!r} in {param}{hint}. "
        "GET /v1/models lists the regions serving each model.",
        param=param,
        code="unknown_region",
    )
