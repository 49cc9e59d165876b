"""`make run` keeps going when a child dies: it restarts it, says so, and shouts when
a child keeps crashing. Real child processes, killed for real."""

from __future__ import annotations

import io
import os
import signal
import stat
import sys
import time

from tesseract_web.run import Supervisor, write_private

SLEEPER = [sys.executable, "-c", "import time; time.sleep(120)"]
CRASHER = [sys.executable, "-c", "import sys; sys.exit(3)"]


def poll_until(supervisor: Supervisor, condition, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "the supervisor did not get there in time"
        supervisor.poll()
        time.sleep(0.02)


def test_a_killed_child_is_restarted_and_the_others_keep_running():
    out = io.StringIO()
    supervisor = Supervisor({"simulator": SLEEPER, "web": SLEEPER}, out=out, backoff_initial_s=0.1)
    supervisor.start_all()
    try:
        simulator, web = supervisor.children["simulator"], supervisor.children["web"]
        first_pid, web_pid = simulator.proc.pid, web.proc.pid
        os.kill(first_pid, signal.SIGKILL)
        poll_until(supervisor, lambda: simulator.proc.pid != first_pid)
        assert simulator.proc.poll() is None
        assert web.proc.pid == web_pid
        assert web.proc.poll() is None
        log = out.getvalue()
        assert "simulator was killed by signal 9; restarting it in 0.1 s" in log
        assert "restarting simulator" in log
    finally:
        supervisor.stop(timeout_s=5)
    assert all(c.proc.poll() is not None for c in supervisor.children.values())


def test_a_child_that_keeps_crashing_backs_off_and_is_reported_loudly():
    out = io.StringIO()
    supervisor = Supervisor(
        {"worker": CRASHER, "web": SLEEPER}, out=out, backoff_initial_s=0.05,
        backoff_max_s=0.4, crash_window_s=60, crash_alarm=4,
    )  # fmt: skip
    supervisor.start_all()
    try:
        worker = supervisor.children["worker"]
        poll_until(supervisor, lambda: len(worker.crashes) >= 5)
        log = out.getvalue()
        delays = [line.rsplit(" in ", 1)[1] for line in log.splitlines() if "exited with 3" in line]
        assert delays[:5] == ["0.05 s", "0.1 s", "0.2 s", "0.4 s", "0.4 s"]
        assert "WORKER KEEPS CRASHING: 4 times" in log
        assert supervisor.children["web"].proc.poll() is None
    finally:
        supervisor.stop(timeout_s=5)


def test_nothing_is_restarted_once_stopping():
    supervisor = Supervisor({"beat": SLEEPER}, out=io.StringIO(), backoff_initial_s=0.01)
    supervisor.start_all()
    supervisor.stop(timeout_s=5)
    time.sleep(0.05)
    supervisor.poll()
    assert supervisor.children["beat"].proc.poll() is not None
    assert supervisor.children["beat"].restart_at is None


def test_the_logins_file_is_readable_by_its_owner_only(tmp_path):
    path = tmp_path / "make-run.txt"
    path.write_text("old")
    path.chmod(0o644)
    write_private(path, "API key tsk_…")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text() == "API key tsk_…"
