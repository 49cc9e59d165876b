"""Run a command beside a CPU hog: `python -m tests.under_load [--hogs N] [--max-s S] -- CMD…`.

Every timed test must pass on a busy machine (a CI runner shared with other jobs, a
laptop compiling something). This makes one: `N` processes spin the CPU (default:
twice the cores, a load average of about 3 × cores with the suite itself), the command
runs, the hogs stop, and the command's exit status is ours. The hogs are bounded
three ways, so none can outlive the run: they are killed when the command ends, each
stops by itself after `--max-s` seconds, and each stops when its parent is gone.

`make test-under-load` runs the whole suite this way.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import signal
import subprocess
import sys
import time

#: How often a hog looks up from spinning to see whether it should stop (seconds).
CHECK_S = 0.5


def spin(parent: int, max_s: float) -> None:
    """Burn CPU until `max_s` has passed or `parent` is gone."""
    stop = time.monotonic() + max_s
    while time.monotonic() < stop and os.getppid() == parent:
        until = time.monotonic() + CHECK_S
        while time.monotonic() < until:
            pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").partition("\n")[0])
    parser.add_argument("--hogs", type=int, default=2 * (os.cpu_count() or 1))
    parser.add_argument("--max-s", type=float, default=3600.0, help="each hog stops after this")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command to run")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command to run (put it after --)")

    hogs = [
        multiprocessing.Process(target=spin, args=(os.getpid(), args.max_s), daemon=True)
        for _ in range(args.hogs)
    ]
    for hog in hogs:
        hog.start()
    print(f"under_load: {args.hogs} CPU hogs (at most {args.max_s:.0f} s) beside: "
          f"{' '.join(command)}", file=sys.stderr, flush=True)  # fmt: skip
    # Stopped by a signal, the command stops too (and the hogs, in `finally`).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    proc = subprocess.Popen(command)
    try:
        status = proc.wait()
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(30)
        load = os.getloadavg()
        for hog in hogs:
            hog.terminate()
        for hog in hogs:
            hog.join(5)
        print(f"under_load: load average at the end {load[0]:.1f} / {load[1]:.1f} / "
              f"{load[2]:.1f} on {os.cpu_count()} cores", file=sys.stderr, flush=True)  # fmt: skip
    return status


if __name__ == "__main__":
    sys.exit(main())
