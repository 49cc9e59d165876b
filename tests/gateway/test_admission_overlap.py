"""When the gateway calls a backend in the same round trip as the admission: only while
what this process last heard of the key leaves every limit and cap room to spare."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
import uuid
from decimal import Decimal as D
from typing import Any

import pytest
import redis.asyncio as aioredis
from django.conf import settings
from redis import exceptions as redis_errors

from billing import limits, metering
from routing.errors import BackendUnavailable, BudgetExceeded, RateLimited
from routing.gateway.admission import Admission, Ask, Pending
from routing.gateway.attempt import Attempt
from routing.gateway.core import Gateway
from routing.gateway.upstream import UpstreamRejected
from tests.clock import Clock

NO_LIMIT = -1
FREE = limits.Limits("free", 60, 100_000, None, None, D("5.00"), None, D("0"))
UNLIMITED = limits.UNLIMITED


@pytest.fixture
def admission() -> Any:
    admission = Admission(aioredis.Redis.from_url(settings.REDIS_URL), enabled=True)
    admission.overlapping = True
    admission.clock = Clock()
    return admission


def ask(lim: limits.Limits = FREE, *, tokens: int = 100, reserve_usd: str = "0.01") -> Ask:
    reserve = limits.to_nano(D(reserve_usd))
    return Ask(
        keys=("rl:org", "rl:key", "spend:org", "spend:key"),
        args=limits.admit_args(lim, tokens=tokens, reserve_nano=reserve),
        limits=lim,
        tokens=tokens,
        reserve_nano=reserve,
        month="2026-11",
        org_id=1,
        key_id=2,
        world=None,  # type: ignore[arg-type]
    )


def admitted(**answer: int) -> limits.Verdict:
    """The script's answer to an admission, admitted (fields overridden by `answer`)."""
    fields: dict[str, Any] = {
        "status": limits.OK, "window": 0, "requests_limit": 60, "requests_remaining": 59,
        "tokens_limit": 100_000, "tokens_remaining": 99_900, "reset_ms": 30_000,
        "org_spend_nano": 0, "key_spend_nano": 0, "reserved_org": True, "reserved_key": False,
    }  # fmt: skip
    return limits.Verdict(**{**fields, **answer})


def hear(admission: Admission, request: Ask, **answer: int) -> None:
    """This process hears the script's answer to an admission of this key."""
    asyncio.run(admission._ticket(request, admitted(**answer)))


def claims(admission: Admission, request: Ask, most: int = 1000) -> int:
    """How many requests like `request` the room takes before it says no."""
    n = 0
    while n < most and admission.claim_room(request):
        n += 1
    return n


def test_a_key_this_process_has_not_heard_of_waits_for_its_answer(admission):
    assert not admission.claim_room(ask())


def test_the_room_takes_requests_until_a_tenth_of_the_minute_s_requests_would_be_left(admission):
    request = ask()
    hear(admission, request, requests_remaining=59)
    assert claims(admission, request) == 53  # 59 - 53 = 6 left: a tenth of 60


def test_tokens_per_minute_keep_a_tenth_spare(admission):
    request = ask(tokens=150)
    hear(admission, request, tokens_limit=1000, tokens_remaining=300)
    assert claims(admission, request) == 1  # 150 left after it; one more would leave 0


def test_a_budget_keeps_a_tenth_of_its_cap_spare_counting_the_reservation(admission):
    request = ask(reserve_usd="0.05")
    hear(admission, request, org_spend_nano=limits.to_nano(D("4.40")))  # cap $5.00
    assert claims(admission, request) == 2  # to 4.50 spent, $0.50 left; 4.55 would leave less
    hear(admission, request, org_spend_nano=limits.to_nano(D("4.46")))
    assert not admission.claim_room(request)


def test_a_key_without_limits_always_has_room(admission):
    request = ask(UNLIMITED)
    hear(admission, request, requests_limit=NO_LIMIT, tokens_limit=NO_LIMIT)
    assert claims(admission, request) == 1000


def test_what_was_heard_more_than_two_seconds_ago_does_not_count(admission):
    request = ask()
    hear(admission, request)
    admission.clock.now += 2.5
    assert not admission.claim_room(request)


def test_a_refusal_leaves_no_room(admission):
    request = ask()
    with pytest.raises(Exception, match="Rate limit reached"):
        hear(admission, request, status=limits.RPM_KEY, requests_remaining=0)
    assert not admission.claim_room(request)


def test_overlapping_switched_off_never_overlaps(admission, settings):
    settings.TESSERACT_ADMISSION_OVERLAP = False
    off = Admission(admission.redis, enabled=True)
    request = ask()
    hear(off, request)
    assert off.overlap(request) is None


def test_a_deferred_request_s_claim_is_held_until_it_is_admitted_whatever_is_heard_meanwhile(
    admission,
):
    request = ask()
    hear(admission, request, requests_remaining=59)
    assert admission.defer(request)
    # Another request's answer: Redis has not heard of the deferred one, still in flight.
    hear(admission, request, requests_remaining=59)
    assert claims(admission, request) == 52  # 59 - 1 held - 52 = 6 left: a tenth of 60
    admission.release(request)  # admitted (or refused, or gone): Redis knows
    hear(admission, request, requests_remaining=59)
    assert claims(admission, request) == 53


def test_deferring_switched_off_never_defers(admission, settings):
    settings.TESSERACT_ADMISSION_DEFER = False
    off = Admission(admission.redis, enabled=True)
    request = ask()
    hear(off, request)
    assert not off.defer(request)
    assert off.claim_room(request)  # the room is there: only deferring is off


def _record_of(org_id: int) -> metering.UsageRecord:
    return metering.UsageRecord(
        request_id=uuid.uuid4().hex, org_id=org_id, api_key_id=2, created_at=time.time(),
        endpoint="chat.completions", model="m", served_model="m", deployment="d", region="r",
        cluster="c", chip="x", stream=False, status="ok", input_tokens=10, output_tokens=20,
        usage_source="upstream", cost_usd="0",
    )  # fmt: skip


@pytest.mark.django_db(transaction=True)
def test_a_served_request_whose_client_leaves_while_its_admission_is_answered_is_still_metered(
    admission, monkeypatch
):
    """The month's spend counter is missing too (a new month): the admission is seeded
    from the stored charges and sent again, with nobody waiting for it."""
    stream = f"test:usage:{uuid.uuid4().hex}"
    monkeypatch.setattr(metering, "STREAM", stream)
    org_id = 10**9 + uuid.uuid4().int % 10**6  # counters of its own: none yet
    request = dataclasses.replace(
        ask(), keys=limits.redis_keys(org_id=org_id, key_id=2, month="2026-11"), org_id=org_id
    )
    hear(admission, request)
    assert admission.defer(request)

    async def scenario() -> tuple[bool, list[Any]]:
        admitting = asyncio.ensure_future(
            admission.admit_served(request, _record_of(org_id), None, None)
        )
        await asyncio.sleep(0)  # sent with this turn's write
        admitting.cancel()  # the client hangs up
        with contextlib.suppress(asyncio.CancelledError):
            await admitting
        while admission._finishing:  # seen through by a task of its own
            await asyncio.gather(*admission._finishing, return_exceptions=True)
        redis = aioredis.Redis.from_url(settings.REDIS_URL)
        try:
            return admitting.cancelled(), await redis.xrange(stream)
        finally:
            await redis.delete(stream, *request.keys)
            await redis.aclose()

    cancelled, records = asyncio.run(scenario())
    assert cancelled
    assert len(records) == 1  # metered once: not lost, not sent twice
    assert not admission._held  # and its claim released


class Pipe:
    """A pipe that only counts: how many submissions are unanswered, and what was sent."""

    def __init__(self, unanswered: int) -> None:
        self.waiting = unanswered
        self.sent: list[Any] = []  # queued: they leave with the turn's write

    def unanswered(self) -> int:
        return self.waiting + len(self.sent)

    def submit(self, commands: Any, *, orphan: Any = None) -> Any:
        self.sent.append(commands)
        return object()


def test_a_busy_process_waits_for_its_answer_and_a_quiet_one_sends_it_beside_the_call(admission):
    request = ask()
    hear(admission, request)
    admission.scripts.pipe = busy = Pipe(unanswered=3)
    assert admission.overlap(request) is None
    assert busy.sent == []
    for unanswered in (2, 0):  # quiet, and alone on the connection
        admission.scripts.pipe = quiet = Pipe(unanswered)  # no way to write it at once
        pending = admission.overlap(request)
        assert pending is not None
        [[command]] = quiet.sent  # it leaves with the turn's write
        assert command[0] == "EVALSHA"


def answered(status: int) -> Pending:
    """An admission sent beside the backend call whose answer is already in."""
    reply = asyncio.get_running_loop().create_future()
    reply.set_result([[status, 0, 10, 0 if status else 5, 1000, 900, 30_000, 0, 0, 1, 0]])
    return Pending(ask(), reply)


def beside(status: int, backend: Any) -> tuple[Attempt, BaseException | None]:
    """Call `backend` beside an admission answered `status`: the attempt, and what the
    gateway raised (None: it handed the backend's answer on)."""

    async def scenario() -> tuple[Attempt, BaseException | None]:
        gateway = Gateway(
            holder=None, upstream=None, redis=aioredis.Redis.from_url(settings.REDIS_URL)
        )
        attempt = Attempt(call=None, plan=None, pending=answered(status))
        try:
            await gateway._beside_admission(backend, ("u", b"", {}), attempt, 5.0, None)
        except BaseException as exc:  # what the request would end with
            return attempt, exc
        return attempt, None

    return asyncio.run(scenario())


async def _refused_by_the_backend(*_: Any, **__: Any) -> bytes:
    raise UpstreamRejected(400, b'{"error": {"message": "bad"}}')


async def _served(*_: Any, **__: Any) -> bytes:
    return b"{}"


def test_a_backend_s_own_refusal_gives_way_to_the_admission_s():
    attempt, raised = beside(limits.RPM_KEY, _refused_by_the_backend)
    assert isinstance(raised, RateLimited)
    assert attempt.refused
    assert attempt.pending is None


def test_an_admitted_request_hands_on_the_backend_s_refusal_with_its_ticket():
    attempt, raised = beside(limits.OK, _refused_by_the_backend)
    assert isinstance(raised, UpstreamRejected)
    assert attempt.ticket is not None
    assert not attempt.refused


def test_an_answer_refused_after_the_backend_answered_is_not_handed_on():
    attempt, raised = beside(limits.BUDGET_ORG, _served)
    assert isinstance(raised, BudgetExceeded)
    assert attempt.refused
    attempt, raised = beside(limits.OK, _served)
    assert raised is None
    assert attempt.ticket is not None


def test_a_deferred_request_failing_over_to_a_provider_while_redis_is_gone_gets_a_503_unbilled(
    admission,
):
    """A request deferred on a backend we run is admitted before a provider's API is
    called; with Redis gone that answer cannot be had: the client gets
    `metering_unavailable` (not Redis's own error), its claim is let go, the publisher
    stops taking new work, and nothing is metered."""

    async def scenario() -> None:
        gateway = Gateway(
            holder=None, upstream=None, redis=aioredis.Redis.from_url(settings.REDIS_URL)
        )
        gateway.admission = admission
        request = ask()
        await admission._ticket(request, admitted())
        admission.deferring = True
        assert admission.defer(request)

        async def redis_gone(_: Ask) -> Any:
            raise redis_errors.ConnectionError("Error 111 connecting to Redis")

        admission.ask = redis_gone
        attempt = Attempt(call=None, plan=None, deferred=request)
        with pytest.raises(BackendUnavailable) as raised:
            await gateway._admitted_for_provider(attempt)
        assert raised.value.code == "metering_unavailable"
        assert attempt.refused
        assert attempt.deferred is None
        assert attempt.ticket is None
        assert admission._held == {}  # the claim no longer held
        assert not gateway.usage.available
        await gateway._publish(attempt, time.perf_counter())
        assert not attempt.published  # nothing metered
        async with asyncio.timeout(30):  # this Redis answers: the publisher reopens
            while not gateway.usage.available:
                await asyncio.sleep(0.01)

    asyncio.run(scenario())
