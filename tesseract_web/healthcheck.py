"""Container health checks for deploy/compose.yaml and deploy/k8s, standard library only.

    python tesseract_web/healthcheck.py http http://localhost:8000/health
    python tesseract_web/healthcheck.py beat /var/lib/tesseract/beat

`http` passes when the URL answers 200 (the gateway's and the web's `/health` check the
database and Redis). `beat` passes when beat has written its schedule file lately:
Celery beat syncs it at least every three minutes while it sends tasks (the usage
drain is due every second), so a file older than `--max-age` (600 s) means beat is
stuck. Run as a file, not with `-m`: the package's `__init__` loads Celery and Django,
and a probe should cost milliseconds, not a start-up (nor need the settings to load).
"""

from __future__ import annotations

import argparse
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

BEAT_MAX_AGE_S = 600.0


def http_ok(url: str, timeout_s: float = 5.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as answer:  # noqa: S310
            return answer.status == 200
    except (urllib.error.URLError, OSError):
        return False


def beat_alive(
    directory: Path, max_age_s: float = BEAT_MAX_AGE_S, now: float | None = None
) -> bool:
    """Whether a schedule file in `directory` was written within `max_age_s`."""
    written = [path.stat().st_mtime for path in directory.glob("celerybeat-schedule*")]
    return bool(written) and (time.time() if now is None else now) - max(written) <= max_age_s


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="healthcheck.py")
    sub = parser.add_subparsers(dest="what", required=True)
    http = sub.add_parser("http", help="pass when the URL answers 200")
    http.add_argument("url")
    http.add_argument("--timeout", type=float, default=5.0)
    beat = sub.add_parser("beat", help="pass when beat wrote its schedule file lately")
    beat.add_argument("directory", type=Path)
    beat.add_argument("--max-age", type=float, default=BEAT_MAX_AGE_S)
    args = parser.parse_args(argv)
    if args.what == "http":
        ok = http_ok(args.url, args.timeout)
    else:
        ok = beat_alive(args.directory, args.max_age)
    if not ok:
        print(f"unhealthy: {args.what}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
