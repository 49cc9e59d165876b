"""`Request.queue_priority`: a request's place in a deadline-ordered backend queue."""

from routing.engine import LATE_QUEUE_FACTOR, Request


def test_the_priority_is_the_first_token_deadline_on_the_arrival_clock():
    r = Request(model="m", input_tokens=10, max_output_tokens=10, max_ttft_ms=200.0,
                max_latency_ms=5000.0)  # fmt: skip
    assert r.queue_priority(1_700_000_000_000.0, 1000.0) == 1_700_000_000_200


def test_without_a_first_token_deadline_the_end_to_end_one_orders_it():
    r = Request(model="m", input_tokens=10, max_output_tokens=10, max_latency_ms=5000.0)
    assert r.queue_priority(1_000.0, 1000.0) == 6_000


def test_without_any_deadline_the_default_orders_it():
    r = Request(model="m", input_tokens=10, max_output_tokens=10)
    assert r.queue_priority(1_000.0, 750.0) == 1_750


def test_an_earlier_deadline_sorts_first_whenever_it_arrived():
    early = Request(model="m", input_tokens=1, max_output_tokens=1, max_ttft_ms=50.0)
    loose = Request(model="m", input_tokens=1, max_output_tokens=1, max_ttft_ms=1000.0)
    assert early.queue_priority(500.0, 0.0) < loose.queue_priority(0.0, 0.0)


def test_a_deadline_nothing_can_meet_queues_behind_its_best_first_token():
    # Served late (the client allowed it): it cannot jump every tenant's queue by
    # asking for a first token in a millisecond, nor take the place of a request
    # still in time whose deadline falls between its first token and its late place.
    r = Request(model="m", input_tokens=1, max_output_tokens=1, max_ttft_ms=1.0,
                allow_relaxed_deadline=True)  # fmt: skip
    assert r.queue_priority(1_000.0, 500.0, first_token_ms=180.0) == 1_180
    late = r.queue_priority(1_000.0, 500.0, first_token_ms=180.0, late=True)
    assert late == 1_000 + 180 * LATE_QUEUE_FACTOR
    in_time = Request(model="m", input_tokens=1, max_output_tokens=1, max_ttft_ms=230.0)
    assert in_time.queue_priority(1_000.0, first_token_ms=180.0) < late
    met = Request(model="m", input_tokens=1, max_output_tokens=1, max_ttft_ms=200.0)
    assert met.queue_priority(1_000.0, 500.0, first_token_ms=180.0) == 1_200


def test_a_request_the_gateway_held_keeps_the_deadline_it_arrived_with():
    r = Request(model="m", input_tokens=1, max_output_tokens=1, max_ttft_ms=1000.0)
    assert r.held_for(100).queue_priority(1_000.0, first_token_ms=150.0) == 2_000


def test_a_held_request_queues_no_earlier_than_its_first_token_after_the_hold():
    r = Request(model="m", input_tokens=1, max_output_tokens=1, max_ttft_ms=200.0)
    assert r.held_for(100).queue_priority(1_000.0, first_token_ms=180.0) == 1_280
    assert r.queue_priority(1_000.0, sent_ms=100.0, first_token_ms=180.0) == 1_280


def test_a_late_requests_place_stretches_its_first_token_not_the_time_before_it_was_sent():
    r = Request(model="m", input_tokens=1, max_output_tokens=1, max_ttft_ms=1.0)
    late = r.queue_priority(1_000.0, sent_ms=100.0, first_token_ms=200.0, late=True)
    assert late == 1_000 + 100 + 200 * LATE_QUEUE_FACTOR


def test_a_late_request_with_a_later_deadline_keeps_its_deadline():
    # Late on its end-to-end budget, its first-token deadline still orders it.
    r = Request(model="m", input_tokens=1, max_output_tokens=1, max_ttft_ms=900.0,
                max_latency_ms=1000.0)  # fmt: skip
    assert r.queue_priority(0.0, first_token_ms=180.0, late=True) == 900
