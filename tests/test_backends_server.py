"""The OpenAI-compatible server over a Backend, checked with the official `openai` client: in-process over an
echo backend (fast), and as a real uvicorn subprocess serving the real SmolLM2 transformers backend (slow)."""

from __future__ import annotations

import asyncio
from typing import Sequence

import pytest

from kronaxis_lab.backends.base import GenRequest, GenResult
from kronaxis_lab.backends.openai_http import OpenAIHTTPBackend
from kronaxis_lab.backends.openai_server import create_app

try:
    from tests.servers.faulty_server import EchoBackend
    from tests.servers.proc import ServerProc
except ImportError:  # tests/ itself on sys.path (pytest's rootdir-less import mode)
    from servers.faulty_server import EchoBackend
    from servers.proc import ServerProc


class RecordingEcho(EchoBackend):
    """Echo that records the size of every batch it is given, and fails on the word 'explode'."""

    def __init__(self):
        super().__init__("echo-model")
        self.batches: list[int] = []

    async def agenerate(self, requests: Sequence[GenRequest]) -> list[GenResult]:
        self.batches.append(len(requests))
        await asyncio.sleep(0.01)
        out = await super().agenerate(requests)
        for res in out:
            if "explode" in res.text:
                res.text, res.error = "", "backend exploded"
        return out


@pytest.fixture
def client():
    from fastapi.testclient import TestClient
    from openai import OpenAI

    backend = RecordingEcho()
    with TestClient(create_app(backend, batch_window_ms=5)) as http:
        yield OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=http, max_retries=0), http, backend


def test_chat_completion_and_models(client):
    oai, _, _ = client
    r = oai.chat.completions.create(model="echo-model", messages=[{"role": "user", "content": "hi there"}])
    assert r.choices[0].message.content == "echo: hi there" and r.choices[0].finish_reason == "stop"
    assert r.usage.prompt_tokens == 2 and r.usage.completion_tokens == 3 and r.usage.total_tokens == 5
    assert [m.id for m in oai.models.list().data] == ["echo-model"]


def test_completion_and_content_parts(client):
    oai, _, _ = client
    r = oai.completions.create(model="echo-model", prompt="raw prompt", max_tokens=5)
    assert r.choices[0].text == "echo: raw prompt" and r.object == "text_completion"
    parts = [{"type": "text", "text": "part one "}, {"type": "text", "text": "and two"}]
    r = oai.chat.completions.create(model="echo-model", messages=[{"role": "user", "content": parts}])
    assert r.choices[0].message.content == "echo: part one and two"


def test_streaming_chat_and_completion(client):
    oai, _, _ = client
    chunks = list(oai.chat.completions.create(model="echo-model", stream=True, stream_options={"include_usage": True},
                                              messages=[{"role": "user", "content": "the  quick brown fox "}]))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "echo: the  quick brown fox "  # whitespace kept exactly
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) >= 4  # sent in pieces
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage.completion_tokens == 5 and not chunks[-1].choices
    comp = list(oai.completions.create(model="echo-model", prompt="a b", stream=True))
    assert "".join(c.choices[0].text for c in comp) == "echo: a b"


def test_bad_requests_and_backend_errors(client):
    import openai

    oai, http, _ = client
    assert http.post("/v1/chat/completions", json={"messages": []}).status_code == 400
    assert http.post("/v1/completions", json={"prompt": 3}).status_code == 400
    r = http.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}], "n": 2})
    assert r.status_code == 400 and "n=1" in r.json()["error"]["message"]
    with pytest.raises(openai.InternalServerError, match="backend exploded"):
        oai.chat.completions.create(model="echo-model", messages=[{"role": "user", "content": "explode"}])


def test_concurrent_requests_are_micro_batched():
    import httpx

    backend = RecordingEcho()
    app = create_app(backend, batch_window_ms=50, max_batch=16, preload=False)

    async def run():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            rs = await asyncio.gather(*(c.post("/v1/chat/completions", json={
                "messages": [{"role": "user", "content": f"q{i}"}]}) for i in range(8)))
        return [r.json()["choices"][0]["message"]["content"] for r in rs]

    texts = asyncio.run(run())
    assert texts == [f"echo: q{i}" for i in range(8)]  # each client got its own answer
    assert sum(backend.batches) == 8 and max(backend.batches) > 1  # ... from shared backend calls


@pytest.fixture(scope="module")
def smollm2_server():
    proc = ServerProc("tests.servers.openai_server",
                      ["--backend-config", "configs/backend/transformers_smollm2.yaml", "num_threads=1", "progress=false"])
    try:
        yield proc.wait_ready(timeout_s=400)  # first run converts the GGUF (minutes); later runs load in seconds
    finally:
        proc.stop()


@pytest.mark.slow
def test_real_smollm2_server_answers_the_openai_client(smollm2_server):
    from openai import OpenAI

    oai = OpenAI(base_url=smollm2_server.url, api_key="unused", max_retries=0, timeout=120)
    assert [m.id for m in oai.models.list().data] == ["smollm2-135m-instruct"]
    msgs = [{"role": "user", "content": "What is 2+2?"}]
    r = oai.chat.completions.create(model="smollm2-135m-instruct", messages=msgs, max_tokens=12, temperature=0)
    answer = r.choices[0].message.content
    assert "4" in answer and r.usage.prompt_tokens > 0 and 0 < r.usage.completion_tokens <= 12
    stream = oai.chat.completions.create(model="smollm2-135m-instruct", messages=msgs, max_tokens=12, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == answer  # greedy: same text

    # and the orchestrator client in front of it (what the serving router does)
    b = OpenAIHTTPBackend("smollm2", [{"name": "local", "base_url": smollm2_server.url,
                                        "model": "smollm2-135m-instruct"}], timeout_s=120)
    res = b.generate([GenRequest(messages=msgs, max_tokens=12),
                      GenRequest(prompt="The capital of France is", max_tokens=4)])
    assert res[0].text == answer and res[0].meta["usage_source"] == "server"
    assert res[1].error is None and "Paris" in res[1].text
