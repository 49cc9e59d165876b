"""The official `openai` SDK talks to a simulated deployment unchanged."""

from __future__ import annotations

import pytest

from backends.simulator import Simulator

from .helpers import EASTUS_70B, MODEL_70B, serve

openai = pytest.importorskip("openai")


@pytest.fixture(scope="module")
def client(world):
    with serve(Simulator(world, time_scale=0)) as base:
        yield openai.OpenAI(base_url=f"{base}/d/{EASTUS_70B}/v1", api_key="x", max_retries=0)


def test_the_sdk_gets_a_whole_chat_completion(client):
    completion = client.chat.completions.create(
        model=MODEL_70B, messages=[{"role": "user", "content": "Hello"}], max_tokens=4
    )

    assert completion.system_fingerprint == "tesseract-simulator"
    assert completion.choices[0].finish_reason == "length"
    assert len(completion.choices[0].message.content.split()) == 4
    assert completion.usage.completion_tokens == 4


def test_the_sdk_streams_a_chat_completion_with_usage(client):
    stream = client.chat.completions.create(
        model=MODEL_70B,
        messages=[{"role": "user", "content": "Hello"}],
        max_tokens=5,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)

    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(text.split()) == 5
    assert chunks[-1].usage.total_tokens == chunks[-1].usage.prompt_tokens + 5


def test_the_sdk_lists_models_and_raises_on_a_bad_model(client):
    assert [m.id for m in client.models.list()] == [MODEL_70B]
    with pytest.raises(openai.NotFoundError) as excinfo:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
    assert excinfo.value.code == "model_not_found"
