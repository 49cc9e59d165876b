"""Streamed chunks that reach the gateway together leave it together.

A backend's events arrive in reads of whatever size the network gives; each read's
complete events become one list (`sse_batches`), and the HTTP transport writes one list
as one body message. A proxy that splits a read into a write per event pays a system
call per token for nothing; the stream the client reads is the same either way.
"""

import asyncio

from routing.gateway.app import GatewayApp
from routing.gateway.attempt import Head
from routing.gateway.upstream import sse_batches


class _Content:
    def __init__(self, pieces: list[bytes]) -> None:
        self.pieces = list(pieces)

    async def readany(self) -> bytes:
        return self.pieces.pop(0) if self.pieces else b""


class _Response:
    def __init__(self, pieces: list[bytes]) -> None:
        self.content = _Content(pieces)
        self.released = False

    def release(self) -> None:
        self.released = True


def batches_of(pieces: list[bytes]) -> tuple[list[list[bytes]], bool]:
    response = _Response(pieces)

    async def collect() -> list[list[bytes]]:
        return [batch async for batch in sse_batches(response)]  # type: ignore[arg-type]

    return asyncio.run(collect()), response.released


def test_the_events_of_one_read_come_out_as_one_batch():
    read = b'data: {"n":1}\n\ndata: {"n":2}\n\ndata: {"n":3}\n\n'
    batches, released = batches_of([read])
    assert batches == [[b'{"n":1}', b'{"n":2}', b'{"n":3}']]
    assert released


def test_an_event_cut_across_reads_is_held_until_it_is_whole():
    batches, _ = batches_of([b'data: {"n":1}\n\ndata: {"n', b'":2}\n', b"\ndata: [DONE]\n\n"])
    assert batches == [[b'{"n":1}'], [b'{"n":2}', b"[DONE]"]]


def test_a_read_without_a_whole_event_yields_nothing_and_comments_are_skipped():
    batches, _ = batches_of([b": keep-alive\n\n", b"data: {", b'"n":1}\n\n'])
    assert batches == [[b'{"n":1}']]


def test_one_batch_is_written_to_the_client_as_one_body_message():
    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    async def frames():
        yield Head(200, [(b"content-type", b"text/event-stream")])
        yield [b'{"n":1}', b'{"n":2}']
        yield [b'{"n":3}']

    asyncio.run(GatewayApp()._relay(frames(), send, stream=True))
    bodies = [m["body"] for m in sent if m["type"] == "http.response.body"]
    assert bodies == [
        b'data: {"n":1}\n\ndata: {"n":2}\n\n',
        b'data: {"n":3}\n\n',
        b"data: [DONE]\n\n",
    ]
