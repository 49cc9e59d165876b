"""The in-process benchmark drives an ASGI app as a server would and reports per round."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import pytest

from bench.inprocess import _load, _one, report


def test_an_exchange_hands_over_the_body_and_says_the_client_left_only_once_answered():
    seen: list[dict[str, Any]] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append(await receive())
        waiting = asyncio.ensure_future(receive())  # as the gateway's hang-up watcher
        await asyncio.sleep(0)
        assert not waiting.done()  # nobody left while the answer is being written
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})
        seen.append(await asyncio.wait_for(waiting, timeout=30))

    status = asyncio.run(_one(app, "/v1/chat/completions", [], b'{"a": 1}'))
    assert status == 201
    assert seen == [
        {"type": "http.request", "body": b'{"a": 1}', "more_body": False},
        {"type": "http.disconnect"},
    ]


def test_a_load_serves_exactly_the_requests_asked_for_and_refuses_to_hide_failures():
    served = 0

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        nonlocal served
        served += 1
        await receive()
        status = 500 if scope["path"] == "/fail" else 200
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    cpu, wall = asyncio.run(_load(app, "/ok", [], b"", 100, 8))
    assert served == 100
    assert cpu >= 0
    assert wall > 0
    with pytest.raises(RuntimeError, match=r"10 requests failed, e\.g\. HTTP 500"):
        asyncio.run(_load(app, "/fail", [], b"", 10, 4))


def test_the_report_gives_each_targets_median_and_the_median_of_the_rounds_ratios():
    args = argparse.Namespace(stream=False, concurrency=32, rounds=3, requests=1000)
    result = {
        "ceiling": [[100.0, 9000.0], [200.0, 4000.0], [110.0, 8000.0]],
        "tesseract": [[300.0, 3000.0], [800.0, 1000.0], [330.0, 2500.0]],
    }
    text = report(result, args)
    assert "| ceiling | 110.0 | 100 200 110 | 8000 |" in text
    assert "| tesseract | 330.0 | 300 800 330 | 2500 |" in text
    # Rounds' ratios 3.0, 4.0, 3.0: the median pairs each round's moment, not the
    # medians of two columns taken at different moments (330 / 110 would say 3.0 too,
    # but 800 / 110 would not be a reading of anything).
    assert "**3.00×**" in text
    assert "## " not in text  # the hand-written sections under it are kept (bench.notes)
