"""bench.misses: a missed request's cause, on hand-made outcomes whose answers are known."""

import pytest

from bench.misses import cause, in_time_without_wait, slack_ms
from bench.sim import Outcome
from bench.traces import TraceRequest
from bench.workload import Job
from routing.engine import Request


def missed(*, ttft_ms: float, wait_ms: float, max_ttft_ms=None, max_latency_ms=None, e2e_ms=0.0):
    request = Request(
        model="m",
        input_tokens=100,
        max_output_tokens=10,
        max_ttft_ms=max_ttft_ms,
        max_latency_ms=max_latency_ms,
    )
    job = Job(0, TraceRequest(0.0, 100, 10), "eastus", request)
    return Outcome(job, backend="b", ttft_ms=ttft_ms, e2e_ms=e2e_ms or ttft_ms + 50.0,
                   wait_ms=wait_ms)  # fmt: skip


def test_a_request_that_waited_and_was_in_time_without_the_wait_missed_for_the_queue():
    o = missed(ttft_ms=230.0, wait_ms=40.0, max_ttft_ms=200.0)
    assert in_time_without_wait(o)
    assert cause(o, backend_in_time=True) == "queue"
    assert slack_ms(o) == pytest.approx(10.0)  # 200 - (230 - 40)


def test_a_request_that_waited_and_was_late_anyway_missed_for_the_queue_and_its_compute():
    o = missed(ttft_ms=260.0, wait_ms=40.0, max_ttft_ms=200.0)
    assert not in_time_without_wait(o)
    assert cause(o, backend_in_time=False) == "queue and compute"


def test_a_request_that_did_not_wait_on_a_backend_too_slow_for_it_missed_for_the_compute():
    o = missed(ttft_ms=210.0, wait_ms=0.0, max_ttft_ms=200.0)
    assert cause(o, backend_in_time=False) == "compute"


def test_no_wait_on_a_backend_in_time_at_the_median_round_trip_misses_for_the_network():
    o = missed(ttft_ms=210.0, wait_ms=0.0, max_ttft_ms=200.0)
    assert cause(o, backend_in_time=True) == "network"


def test_an_end_to_end_deadline_is_judged_on_the_whole_answer():
    # The first token was early; the whole answer, less the wait, was 30 ms inside.
    o = missed(ttft_ms=100.0, wait_ms=100.0, max_latency_ms=1000.0, e2e_ms=1070.0)
    assert in_time_without_wait(o)
    assert slack_ms(o) == pytest.approx(30.0)
    both = missed(ttft_ms=300.0, wait_ms=100.0, max_ttft_ms=150.0, max_latency_ms=1000.0,
                  e2e_ms=900.0)  # fmt: skip
    assert not in_time_without_wait(both)  # its first token was late even without the wait
