"""What limits cost is read from the rounds' differences, with an interval over rounds."""

from __future__ import annotations

import statistics

from bench.limits import median_interval

#: The nine rounds' throughput lost (%) of a noisy run: one round far off the others.
ROUNDS = [9.1, 3.0, 6.4, 4.2, 37.0, -4.0, 7.7, 5.5, 2.1]


def test_the_interval_holds_the_median_and_stays_inside_the_rounds():
    low, high = median_interval(ROUNDS)
    assert min(ROUNDS) <= low <= statistics.median(ROUNDS) <= high <= max(ROUNDS)


def test_one_wild_round_does_not_carry_the_interval_with_it():
    _, high = median_interval(ROUNDS)
    assert high < 10.0
    # The same rounds with the wild one far wilder: the median's interval barely moves.
    assert median_interval([*ROUNDS[:4], 370.0, *ROUNDS[5:]]) == median_interval(ROUNDS)


def test_rounds_that_agree_give_an_interval_of_no_width():
    assert median_interval([5.0] * 9) == (5.0, 5.0)


def test_a_wider_level_gives_a_wider_interval():
    narrow = median_interval(ROUNDS, level=0.5)
    wide = median_interval(ROUNDS, level=0.95)
    assert wide[0] <= narrow[0]
    assert narrow[1] <= wide[1]
    assert wide != narrow


def test_the_same_rounds_always_give_the_same_interval():
    assert median_interval(ROUNDS) == median_interval(list(ROUNDS))


def test_the_in_process_admission_path_runs_against_the_gateway_as_it_is():
    """The micro-benchmark hands `Admission` a stand-in for a parsed request: it must
    keep up with what `Admission.prepare` reads (it once lacked `completions`)."""
    import asyncio

    from bench.limits import python_path

    # Redis's answers are given at once (`_Answered`); the URL is never dialled.
    assert asyncio.run(python_path("redis://127.0.0.1:1/0", n=3, rounds=1)) > 0
