"""Read request traces: CSV (like the Azure LLM inference traces) or JSONL (like Mooncake).

One request per row/line. Columns / keys, first match wins (case-insensitive):

* arrival: `TIMESTAMP` / `timestamp` / `arrival_time` / `time` — an ISO date-time, or a
  number; numbers are seconds unless the column is `timestamp_ms` or the key is
  Mooncake's `timestamp` in a JSONL file (milliseconds). Arrivals are made relative to
  the first request and sorted.
* input tokens: `ContextTokens` / `input_tokens` / `input_length` / `prompt_tokens`
* output tokens: `GeneratedTokens` / `output_tokens` / `output_length` / `completion_tokens`
* optional prefix blocks: `hash_ids` (a list of block hashes, Mooncake: 512 tokens a
  block) — used for the session/prefix-reuse (affinity) scenario.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

ARRIVAL = ("timestamp", "arrival_time", "time", "timestamp_ms", "arrival_s")
INPUT = ("contexttokens", "input_tokens", "input_length", "prompt_tokens")
OUTPUT = ("generatedtokens", "output_tokens", "output_length", "completion_tokens")


class TraceError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class TraceRequest:
    t: float  # seconds since the first request
    input_tokens: int
    output_tokens: int
    blocks: tuple[int, ...] = ()


def _pick(keys, wanted, path) -> str:
    lower = {k.lower().strip(): k for k in keys}
    for w in wanted:
        if w in lower:
            return lower[w]
    raise TraceError(f"{path.name}: no column among {wanted}")


def _seconds(value, key: str, jsonl: bool) -> float:
    if isinstance(value, (int, float)):
        num = float(value)
    else:
        text = str(value).strip()
        try:
            num = float(text)
        except ValueError:
            # Azure writes 7 fractional digits; Python's parser takes at most 6.
            if "." in text:
                head, frac = text.split(".", 1)
                text = f"{head}.{frac[:6]}"
            return datetime.fromisoformat(text).timestamp()
    if key.lower() == "timestamp_ms" or (jsonl and key.lower() == "timestamp"):
        return num / 1000.0
    return num


def load_trace(path: Path, limit: int | None = None) -> list[TraceRequest]:
    path = Path(path)
    rows: list[dict] = []
    jsonl = path.suffix.lower() in (".jsonl", ".ndjson")
    with open(path, encoding="utf-8", newline="") as fh:
        if jsonl:
            for line in fh:
                if line.strip():
                    rows.append(json.loads(line))
        else:
            rows = list(csv.DictReader(fh))
    if not rows:
        raise TraceError(f"{path.name}: empty trace")
    keys = rows[0].keys()
    ka, ki, ko = _pick(keys, ARRIVAL, path), _pick(keys, INPUT, path), _pick(keys, OUTPUT, path)
    kb = next((k for k in keys if k.lower() == "hash_ids"), None)
    out = []
    for r in rows:
        blocks = r.get(kb) if kb else ()
        if isinstance(blocks, str):
            blocks = json.loads(blocks) if blocks.strip() else ()
        out.append(
            TraceRequest(
                _seconds(r[ka], ka, jsonl),
                int(float(r[ki])),
                max(int(float(r[ko])), 1),
                tuple(blocks or ()),
            )
        )
    out.sort(key=lambda x: x.t)
    t0 = out[0].t
    out = [TraceRequest(x.t - t0, x.input_tokens, x.output_tokens, x.blocks) for x in out]
    return out[:limit] if limit else out


def looped(trace: list[TraceRequest], n: int) -> list[TraceRequest]:
    """The first n requests of the trace played back to back as often as needed."""
    if n <= len(trace):
        return trace[:n]
    span = trace[-1].t + (trace[-1].t / max(len(trace) - 1, 1))
    out, k = [], 0
    while len(out) < n:
        off = k * span
        out.extend(
            TraceRequest(x.t + off, x.input_tokens, x.output_tokens, x.blocks) for x in trace
        )
        k += 1
    return out[:n]
