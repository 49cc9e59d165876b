"""The byte templates of a stream say exactly what the whole answer says."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from backends.simulator.protocol import ChunkWriter, completion_body, parse_request

from .helpers import sse_events


@settings(max_examples=60, deadline=None)
@given(
    content=st.text(max_size=200),
    max_tokens=st.integers(min_value=1, max_value=40),
    is_chat=st.booleans(),
    include_usage=st.booleans(),
    split=st.integers(min_value=0, max_value=40),
)
def test_a_stream_in_any_batches_equals_the_whole_answer(
    content, max_tokens, is_chat, include_usage, split
):
    body = {"model": "m", "max_tokens": max_tokens, "stream": True}
    if is_chat:
        body["messages"] = [{"role": "user", "content": content}]
    else:
        body["prompt"] = content
    if include_usage:
        body["stream_options"] = {"include_usage": True}
    req = parse_request(json.dumps(body).encode(), chat=is_chat, context_length=10_000)
    whole = json.loads(completion_body(req, model="m", created=1))

    writer = ChunkWriter(req, model="m", created=1)
    first = min(split, max_tokens)
    raw = writer.start() + writer.tokens(first) + writer.tokens(max_tokens - first)
    events = sse_events((raw + writer.finish()).decode())

    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    if is_chat:
        text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
        assert text == whole["choices"][0]["message"]["content"]
    else:
        text = "".join(c["choices"][0]["text"] for c in chunks if c["choices"])
        assert text == whole["choices"][0]["text"]
    assert whole["usage"]["prompt_tokens"] == max(1, -(-len(content) // 4))
    assert whole["usage"]["completion_tokens"] == max_tokens
    if include_usage:
        assert chunks[-1]["choices"] == []
        assert chunks[-1]["usage"] == whole["usage"]
    else:
        assert all("usage" not in c for c in chunks)
