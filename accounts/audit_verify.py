"""Verify a Tesseract proof-of-residency file with nothing but Python's standard library.

    python3 audit_verify.py proof.jsonl [more.jsonl ...] [--within month.jsonl]

A proof file (a month's, or one request's) is JSON Lines: a header, then the audit
entries of one organization's chain in order. This script checks, offline:

* the chain: every entry's hash is the SHA-256 of its canonical JSON (which includes
  the previous entry's hash), the entries follow each other (sequence numbers and
  hashes link, starting from the header's `anchor`), and the header's `head` matches
  when the file reaches it;
* the policy: every routed request ran on a backend that satisfied its constraints at
  that moment (the certifications it required are among the backend's, and its region,
  country and jurisdictions were allowed), and that backend was in the request's plan,
  whose hash matches.

With `--within`, every entry of the files given must also be in that (sound) file,
unchanged: a request's proof shown to be a link of its month's chain.

It prints what it checked and every problem (naming the line, the entry's sequence
number and its request id), and exits 0 when the file is sound, 1 when it is not, 2
when it cannot be read. Tesseract itself uses the same functions (`manage.py
audit_verify`), so this file must import nothing outside the standard library.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

FORMAT = "tesseract-audit-proof/1"
GENESIS = "0" * 64
#: The fields of an entry its hash covers (all of them but the hash itself).
HASHED = (
    "chain", "seq", "at", "kind", "action", "actor", "reason", "request_id", "payload",
    "prev_hash",
)  # fmt: skip
ROUTE = "route"


def canonical(value: Any) -> bytes:
    """The one byte string a JSON value hashes as: sorted keys, no spaces, UTF-8.

    Floats are refused: their text is ambiguous between writers. Numbers that are not
    integers travel as strings (a Decimal's text)."""
    _no_floats(value)
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def _no_floats(value: Any) -> None:
    if isinstance(value, float):
        raise ValueError(f"a float ({value!r}) has no canonical form: write it as a string")
    if isinstance(value, Mapping):
        for v in value.values():
            _no_floats(v)
    elif isinstance(value, list | tuple):
        for v in value:
            _no_floats(v)


def entry_hash(entry: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of the entry's hashed fields, the previous entry's hash among them."""
    return hashlib.sha256(canonical({k: entry.get(k) for k in HASHED})).hexdigest()


def plan_hash(plan: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of a plan's summary: its strategy, the catalog snapshot it was
    made on, and the backends it ranked, in order (what the gateway could try)."""
    return hashlib.sha256(canonical(plan)).hexdigest()


def plan_violations(payload: Mapping[str, Any]) -> list[str]:
    """A route's plan against its hash, and its backend against the plan's ranking."""
    plan = payload.get("plan")
    if plan is None:
        return []
    problems = []
    try:
        if plan_hash(plan) != payload.get("plan_hash"):
            problems.append("its plan does not match the plan's hash")
    except (TypeError, ValueError) as exc:
        problems.append(f"its plan cannot be hashed: {exc}")
    backend = payload.get("backend") or {}
    ranked = plan.get("ranked") if isinstance(plan, Mapping) else None
    if backend.get("deployment") and backend.get("deployment") not in (ranked or ()):
        problems.append(f"backend {backend.get('deployment')} is not in its plan")
    return problems


def policy_violations(payload: Mapping[str, Any]) -> list[str]:
    """What a routed request's backend did not satisfy of its constraints (empty: none).

    The same rules as the router's hard filters (`routing.engine`): every required
    certification held; the backend's region among `regions`, its country among
    `countries`, and at least one of its jurisdictions among `jurisdictions`, each only
    when the request named any. A request that reached no backend ran nowhere."""
    backend = payload.get("backend")
    if not backend:
        return []
    constraints = payload.get("constraints") or {}
    problems = []
    held = {str(c).lower() for c in backend.get("certifications") or ()}
    missing = sorted({str(c).lower() for c in constraints.get("compliance") or ()} - held)
    if missing:
        problems.append(
            f"backend {backend.get('deployment')} lacks the certification(s) {', '.join(missing)}"
        )
    allowed = constraints.get("jurisdictions")
    if allowed is not None:
        theirs = set(backend.get("jurisdictions") or ())
        if not theirs & set(allowed):
            problems.append(
                f"region {backend.get('region')} (jurisdictions {'/'.join(sorted(theirs)) or '-'})"
                f" is not in {'/'.join(sorted(allowed))}"
            )
    allowed = constraints.get("countries")
    if allowed is not None and backend.get("country") not in set(allowed):
        problems.append(
            f"country {backend.get('country') or '?'} is not in {'/'.join(sorted(allowed))}"
        )
    allowed = constraints.get("regions")
    if allowed is not None and backend.get("region") not in set(allowed):
        problems.append(f"region {backend.get('region')} is not in {'/'.join(sorted(allowed))}")
    return problems


@dataclass
class Report:
    """What a verification found: `problems` empty means sound."""

    entries: int = 0
    routes: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    last_hash: str | None = None
    problems: list[str] = field(default_factory=list)
    #: (chain, seq) → (hash, where): every entry seen
    seen: dict[tuple[str, int], tuple[str, str]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_entries(
    entries: Iterable[tuple[str, Mapping[str, Any]]],
    *,
    chain: str | None = None,
    anchor: str | None = GENESIS,
    first_seq: int | None = 1,
    report: Report | None = None,
) -> Report:
    """Check a run of one chain's entries, in order: each `(where, entry)`, `where`
    naming the entry in the problems (a line number, a row id).

    `anchor`: the hash the first entry must follow (GENESIS for a chain's start; None
    to take the first entry's `prev_hash` as given). `first_seq` likewise."""
    report = report or Report()
    prev_hash, expect_seq = anchor, first_seq
    for where, entry in entries:
        report.entries += 1
        name = f"{where} (seq {entry.get('seq')}"
        if entry.get("request_id"):
            name += f", request {entry.get('request_id')}"
        name += ")"
        try:
            computed = entry_hash(entry)
        except (TypeError, ValueError) as exc:
            report.problems.append(f"{name}: cannot be hashed: {exc}")
            computed = None
        if computed is not None and computed != entry.get("hash"):
            report.problems.append(f"{name}: its hash does not match its content (altered)")
        if chain is not None and entry.get("chain") != chain:
            report.problems.append(f"{name}: belongs to chain {entry.get('chain')!r}, not {chain}")
        if expect_seq is not None and entry.get("seq") != expect_seq:
            report.problems.append(f"{name}: expected sequence number {expect_seq} (a gap)")
        if prev_hash is not None and entry.get("prev_hash") != prev_hash:
            report.problems.append(
                f"{name}: does not follow the entry before it (previous hash differs)"
            )
        if entry.get("kind") == ROUTE:
            report.routes += 1
            payload = entry.get("payload")
            if not isinstance(payload, Mapping):
                report.problems.append(f"{name}: a route entry without its facts")
            else:
                for problem in policy_violations(payload):
                    report.problems.append(f"{name}: policy not met: {problem}")
                for problem in plan_violations(payload):
                    report.problems.append(f"{name}: {problem}")
        if isinstance(seq := entry.get("seq"), int):
            report.seen[(str(entry.get("chain")), seq)] = (str(entry.get("hash")), name)
        if report.first_seq is None:
            report.first_seq = entry.get("seq")
        report.last_seq, report.last_hash = entry.get("seq"), entry.get("hash")
        prev_hash = entry.get("hash")
        seq = entry.get("seq")
        expect_seq = seq + 1 if isinstance(seq, int) else None
    return report


def _lines(text: str) -> Iterator[tuple[int, Any]]:
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            yield number, json.loads(line)


def verify_text(text: str) -> Report:
    """Check one proof file's content (its header, its entries, its head)."""
    report = Report()
    try:
        lines = list(_lines(text))
    except ValueError as exc:
        report.problems.append(f"not JSON Lines: {exc}")
        return report
    if not lines or not isinstance(lines[0][1], dict) or lines[0][1].get("format") != FORMAT:
        report.problems.append(f"line 1: not a header of format {FORMAT!r}")
        return report
    header = lines[0][1]
    entries = []
    for number, entry in lines[1:]:
        if not isinstance(entry, dict):
            report.problems.append(f"line {number}: not a JSON object")
            continue
        entries.append((f"line {number}", entry))
    verify_entries(
        entries,
        chain=header.get("chain"),
        anchor=header.get("anchor"),
        first_seq=header.get("first_seq"),
        report=report,
    )
    if header.get("last_seq") != report.last_seq:
        report.problems.append(
            f"the header announces entries up to seq {header.get('last_seq')}, the file has"
            f" {report.last_seq} (entries missing or added)"
        )
    head = header.get("head") or {}
    at_head = report.last_seq is not None and head.get("seq") == report.last_seq
    if at_head and head.get("hash") != report.last_hash:
        report.problems.append("the last entry is not the chain's head the header names")
    return report


def _read(path: str) -> Report | None:
    try:
        with open(path, encoding="utf-8") as f:
            return verify_text(f.read())
    except (OSError, UnicodeDecodeError) as exc:
        print(f"{path}: cannot be read: {exc}", file=sys.stderr)
        return None


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    within: Report | None = None
    within_path = ""
    if "--within" in args:
        at = args.index("--within")
        if at + 1 >= len(args):
            print("--within needs a file", file=sys.stderr)
            return 2
        within_path = args.pop(at + 1)
        args.pop(at)
        within = _read(within_path)
        if within is None:
            return 2
        if not within.ok:
            print(f"{within_path}: FAILED — it cannot vouch for anything:", *within.problems,
                  sep="\n  ")  # fmt: skip
            return 1
    if not args:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    status = 0
    for path in args:
        report = _read(path)
        if report is None:
            return 2
        if within is not None:
            for key, (digest, name) in report.seen.items():
                if within.seen.get(key, ("",))[0] != digest:
                    report.problems.append(f"{name}: not in {within_path} as it is here")
        for problem in report.problems:
            print(f"{path}: {problem}")
        if report.ok:
            print(
                f"{path}: OK — {report.entries} entries (seq {report.first_seq}–"
                f"{report.last_seq}) chained, {report.routes} routes met their policy"
            )
        else:
            print(f"{path}: FAILED — {len(report.problems)} problem(s)")
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
