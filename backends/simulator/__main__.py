"""`python -m backends.simulator`: serve the demo world's deployments (see the package doc)."""

from __future__ import annotations

import argparse
import fnmatch
import logging
import sys

from backends.world import demo_world

from .app import MidStreamAbort, Simulator


class _QuietAborts(logging.Filter):
    """Injected mid-stream aborts are the point, not a crash: log one line, no traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, MidStreamAbort):
            record.msg, record.args, record.exc_info = f"simulator: {exc}", (), None
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


def _select(pattern: str, slugs: list[str]) -> list[str]:
    if pattern == "all":
        return slugs
    chosen: list[str] = []
    for part in filter(None, (p.strip() for p in pattern.split(","))):
        matches = fnmatch.filter(slugs, part)
        if not matches:
            raise SystemExit(f"--deployments: {part!r} matches no deployment")
        chosen += [m for m in matches if m not in chosen]
    return chosen


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m backends.simulator",
        description="Tesseract backend SIMULATOR: OpenAI-compatible fake inference backends.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8100)
    parser.add_argument("--gateway-region", default="westeurope")
    parser.add_argument(
        "--time-scale", type=float, default=1.0, help="multiplies every delay; 0 = none"
    )
    parser.add_argument(
        "--deployments",
        default="all",
        help="'all' or comma-separated slugs or glob patterns (e.g. '*groq*')",
    )
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args(argv)

    import uvicorn

    world = demo_world()
    try:
        app = Simulator(
            world,
            gateway_region=args.gateway_region,
            time_scale=args.time_scale,
            deployments=_select(args.deployments, list(world.deployments)),
        )
    except ValueError as exc:
        raise SystemExit(f"simulator: {exc}") from exc
    logging.getLogger("uvicorn.error").addFilter(_QuietAborts())
    print(
        f"Tesseract backend SIMULATOR: {len(app.deployments)} deployments on "
        f"http://{args.host}:{args.port}/d/<slug>/v1 (gateway region {args.gateway_region}, "
        f"time scale {args.time_scale})",
        file=sys.stderr,
    )
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level=args.log_level,
        timeout_graceful_shutdown=1,
    )


if __name__ == "__main__":
    main()
