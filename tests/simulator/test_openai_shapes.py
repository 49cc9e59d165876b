"""Requests and responses in OpenAI's exact shapes, at time scale 0 (no delays)."""

from __future__ import annotations

import pytest

from backends.simulator import Simulator
from backends.simulator.protocol import DEFAULT_MAX_TOKENS

from .helpers import EASTUS_70B, MODEL_70B, asgi_client, chat, run, sse_events

URL = f"/d/{EASTUS_70B}/v1/chat/completions"


@pytest.fixture
def app(world):
    return Simulator(world, time_scale=0)


def post(app, url, body):
    async def go():
        async with asgi_client(app) as client:
            return await client.post(url, json=body)

    return run(go())


def test_a_chat_completion_has_the_openai_shape_and_usage(app):
    r = post(app, URL, chat(content="x" * 40, max_tokens=5))

    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert body["object"] == "chat.completion"
    assert body["id"].startswith("chatcmpl-")
    assert isinstance(body["created"], int)
    assert body["model"] == MODEL_70B
    assert body["system_fingerprint"] == "tesseract-simulator"
    [choice] = body["choices"]
    assert choice["index"] == 0
    assert choice["finish_reason"] == "length"
    assert choice["message"]["role"] == "assistant"
    assert len(choice["message"]["content"].split()) == 5
    assert body["usage"] == {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}


def test_a_streamed_chat_completion_sends_chunks_then_usage_then_done(app):
    r = post(app, URL, chat(max_tokens=3, stream=True, stream_options={"include_usage": True}))

    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r.text)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert len({c["id"] for c in chunks}) == 1
    assert all(c["system_fingerprint"] == "tesseract-simulator" for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    words = [c["choices"][0]["delta"]["content"] for c in chunks[1:4]]
    assert len(words) == 3
    assert all(w.startswith(" ") for w in words)
    assert chunks[4]["choices"][0] == {
        "index": 0,
        "delta": {},
        "logprobs": None,
        "finish_reason": "length",
    }
    # With include_usage every chunk says usage: null, and a last one has the usage.
    assert all(c["usage"] is None for c in chunks[:5])
    assert chunks[5]["choices"] == []
    assert chunks[5]["usage"] == {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}
    assert len(chunks) == 6


def test_a_stream_without_include_usage_has_no_usage_anywhere(app):
    r = post(app, URL, chat(max_tokens=2, stream=True))

    events = sse_events(r.text)
    assert events[-1] == "[DONE]"
    assert all("usage" not in c for c in events[:-1])
    assert all(c["choices"] for c in events[:-1])


def test_streamed_and_whole_answers_say_the_same_words(app):
    whole = post(app, URL, chat(max_tokens=6, seed=3)).json()
    streamed = sse_events(post(app, URL, chat(max_tokens=6, seed=3, stream=True)).text)

    text = "".join(c["choices"][0]["delta"].get("content", "") for c in streamed[:-1])
    assert text == whole["choices"][0]["message"]["content"]


def test_the_output_depends_only_on_the_request(app):
    a = post(app, URL, chat(content="same")).json()["choices"][0]["message"]["content"]
    b = post(app, URL, chat(content="same")).json()["choices"][0]["message"]["content"]
    c = post(app, URL, chat(content="other")).json()["choices"][0]["message"]["content"]

    assert a == b
    assert a != c


def test_without_a_limit_it_writes_the_default_and_stops(app):
    body = post(app, URL, chat()).json()

    assert body["usage"]["completion_tokens"] == DEFAULT_MAX_TOKENS
    assert body["choices"][0]["finish_reason"] == "stop"


def test_max_completion_tokens_is_honoured_like_max_tokens(app):
    body = post(app, URL, chat(max_completion_tokens=7, max_tokens=99)).json()

    assert body["usage"]["completion_tokens"] == 7


def test_prompt_tokens_count_four_characters_of_every_message(app):
    body = chat(max_tokens=1)
    body["messages"] = [
        {"role": "system", "content": "a" * 10},
        {"role": "user", "content": [{"type": "text", "text": "b" * 7}]},
        {"role": "assistant", "content": None},
    ]

    assert post(app, URL, body).json()["usage"]["prompt_tokens"] == 5  # ceil(17 / 4)


def test_a_prompt_of_token_ids_counts_them_and_a_batch_of_several_is_refused(app):
    url = f"/d/{EASTUS_70B}/v1/completions"

    def usage(prompt):
        return post(app, url, {"model": MODEL_70B, "prompt": prompt, "max_tokens": 1})

    assert usage([7] * 30).json()["usage"]["prompt_tokens"] == 30
    assert usage([[7] * 12]).json()["usage"]["prompt_tokens"] == 12
    batch = usage([[7], [8]])
    assert batch.status_code == 400
    assert batch.json()["error"]["message"] == "the simulator takes exactly one prompt"
    assert "token ids" in usage([True]).json()["error"]["message"]


def test_n_choices_are_generated_side_by_side_and_all_counted(app):
    body = post(app, URL, chat(max_tokens=4, n=3)).json()

    assert [c["index"] for c in body["choices"]] == [0, 1, 2]
    texts = [c["message"]["content"] for c in body["choices"]]
    assert len(set(texts)) == 3  # three samples, not one copied
    for content in ("a", "b", "c", "d", "e"):  # whatever the prompt
        many = post(app, URL, chat(content=content, max_tokens=3, n=40)).json()["choices"]
        assert len({c["message"]["content"] for c in many}) == 40
    assert all(len(t.split()) == 4 for t in texts)
    assert {c["finish_reason"] for c in body["choices"]} == {"length"}
    assert body["usage"]["completion_tokens"] == 12
    alone = post(app, URL, chat(max_tokens=4)).json()["choices"][0]["message"]["content"]
    assert texts[0] == alone  # the first choice is the answer n=1 gets


def test_a_stream_of_n_choices_interleaves_them_by_index_and_counts_them_all(app):
    options = {"include_usage": True}
    r = post(app, URL, chat(max_tokens=3, n=2, seed=5, stream=True, stream_options=options))
    chunks = sse_events(r.text)[:-1]
    whole = post(app, URL, chat(max_tokens=3, n=2, seed=5)).json()

    by_index: dict[int, list[dict]] = {0: [], 1: []}
    for chunk in chunks[:-1]:
        (choice,) = chunk["choices"]
        by_index[choice["index"]].append(choice)
    for index, choices in by_index.items():
        assert choices[0]["delta"] == {"role": "assistant", "content": ""}
        text = "".join(c["delta"].get("content", "") for c in choices)
        assert text == whole["choices"][index]["message"]["content"]
        assert [c["finish_reason"] for c in choices][-1] == "length"
        assert len(choices) == 5  # the role, three tokens, the finish
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] == 6


def test_text_completions_are_served_streamed_and_not(app):
    url = f"/d/{EASTUS_70B}/v1/completions"
    whole = post(app, url, {"model": MODEL_70B, "prompt": "abcdefgh", "max_tokens": 2}).json()
    streamed = post(app, url, {"model": MODEL_70B, "prompt": "abcdefgh", "stream": True}).text

    assert whole["object"] == "text_completion"
    assert whole["id"].startswith("cmpl-")
    assert len(whole["choices"][0]["text"].split()) == 2
    assert whole["usage"] == {"prompt_tokens": 2, "completion_tokens": 2, "total_tokens": 4}
    events = sse_events(streamed)
    assert events[-1] == "[DONE]"
    assert {c["object"] for c in events[:-1]} == {"text_completion"}
    assert len(events) == DEFAULT_MAX_TOKENS + 2  # tokens, the finish chunk, [DONE]
    assert events[-2]["choices"][0]["finish_reason"] == "stop"
    two = post(app, url, {"model": MODEL_70B, "prompt": "abcdefgh", "max_tokens": 2, "n": 2})
    assert [c["index"] for c in two.json()["choices"]] == [0, 1]
    assert two.json()["usage"]["completion_tokens"] == 4


def test_models_lists_the_model_the_deployment_serves(app):
    async def go():
        async with asgi_client(app) as client:
            return await client.get(f"/d/{EASTUS_70B}/v1/models")

    body = run(go()).json()
    assert body["object"] == "list"
    assert [m["id"] for m in body["data"]] == [MODEL_70B]
    assert body["data"][0]["object"] == "model"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/health"),
        ("GET", "/deployments"),
        ("GET", f"/d/{EASTUS_70B}/v1/models"),
        ("GET", f"/d/{EASTUS_70B}/health"),
        ("GET", f"/d/{EASTUS_70B}/metrics"),
        ("GET", f"/d/{EASTUS_70B}/control"),
        ("POST", f"/d/{EASTUS_70B}/v1/chat/completions"),
        ("GET", "/d/nope/v1/models"),
        ("GET", "/nowhere"),
    ],
)
def test_every_response_is_labelled_as_a_simulator(app, method, path):
    async def go():
        async with asgi_client(app) as client:
            return await client.request(method, path, json=chat(stream=True))

    assert run(go()).headers["x-simulator"] == "tesseract"


def test_the_deployment_list_gives_every_base_url(app, world):
    async def go():
        async with asgi_client(app) as client:
            return await client.get("/deployments")

    body = run(go()).json()
    assert body["simulator"] is True
    assert len(body["deployments"]) == len(world.deployments)
    row = next(d for d in body["deployments"] if d["deployment"] == EASTUS_70B)
    assert row["base_url"] == f"/d/{EASTUS_70B}/v1"
    assert row["rtt_ms"] == world.rtt_ms("westeurope", "eastus")
