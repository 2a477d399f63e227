"""The router app over real HTTP on 127.0.0.1 (uvicorn in a thread), with a small fake bundle.

The fake bundle implements the `RouterBundle` protocol (what the router needs from a bundle) with a transparent
classifier: a text containing "hard" gets P̂(small) = 0.1, any other 0.9; P̂(big) = 0.95. The upstreams are
real OpenAI-compatible echo servers (tests/servers/faulty_server.py) that record what reaches them.
The end-to-end test with an exported bundle and real models is tests/test_serve_e2e.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from kronaxis_lab.backends.base import estimate_tokens
from kronaxis_lab.data.fleet import Fleet
from kronaxis_lab.pipelines.serve import build_app
from kronaxis_lab.routing.policies import Threshold
from kronaxis_lab.serving.app import create_app
from kronaxis_lab.serving.batching import InferenceBatcher
from kronaxis_lab.serving.components import build_governance, stickiness_factory
from kronaxis_lab.serving.protocols import RouterBundle
from kronaxis_lab.serving.settings import BundleOptions, ServeConfigError, ServeSettings
from kronaxis_lab.serving.upstreams import Upstreams
from tests.conftest import compose
from tests.servers.faulty_server import create_faulty_app

FIXTURES = Path(__file__).resolve().parent / "fixtures"
EASY = [{"role": "user", "content": "What is the capital of France?"}]
HARD = [{"role": "user", "content": "A hard one: prove that there are infinitely many primes."}]


# ---------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------
class FakeBundle:
    """A `RouterBundle` with a keyword classifier and a threshold policy; records each predict_proba batch size."""

    def __init__(self, fail: bool = False, data_classes: dict[str, Any] | None = None) -> None:
        self.dir = "fake-bundle"
        self.model_names = ["small", "big"]
        models = {"small": {"tier": 0, "price_in": 0.1, "price_out": 0.2},
                  "big": {"tier": 1, "price_in": 10.0, "price_out": 30.0}}
        for name, classes in (data_classes or {}).items():
            models[name]["data_classes"] = classes
        self.fleet = Fleet.from_config({"models": models})
        self.premium = "big"
        self.policy_name, self.param = "threshold", 0.5
        self.meta = {"policy": {"name": self.policy_name, "param": self.param,
                                "config": {"_target_": "kronaxis_lab.routing.policies.Threshold"}}}
        self.bundle_id = "fake-bundle-id"
        self.governance = None
        self.fail = fail
        self.batches: list[int] = []
        self.warmups = 0
        self._lock = threading.Lock()

    def predict_proba(self, texts: list[str], variant: str | None = None) -> np.ndarray:
        with self._lock:
            self.batches.append(len(texts))
        if self.fail:
            raise RuntimeError("onnx session crashed")
        time.sleep(0.002)  # a real call has a cost, so concurrent requests pile up behind it
        return np.array([[0.1 if "hard" in t.lower() else 0.9, 0.95] for t in texts])

    def expected_cost(self, texts: list[str]) -> np.ndarray:
        p_in, p_out = self.fleet.prices()
        n_in = np.array([estimate_tokens(len(t)) for t in texts], dtype=float)
        return n_in[:, None] * p_in[None, :] + 256 * p_out[None, :]

    def decide(self, P: np.ndarray, texts: list[str] | None = None, *, param: float | None = None) -> np.ndarray:
        return Threshold().choose(P, np.tile([1.0, 10.0], (len(P), 1)), [self.param if param is None else param])[0]

    def warmup(self, variant: str | None = None) -> None:
        self.warmups += 1


class ServerThread:
    """uvicorn serving `app` on 127.0.0.1 in a background thread (real HTTP)."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> "ServerThread":
        self.thread.start()
        deadline = time.time() + 20
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise RuntimeError("server thread did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.should_exit = True
        self.thread.join(15)
        self.sock.close()


def recording_upstream(name: str, **kw: Any) -> tuple[Any, list[dict]]:
    """Echo upstream answering as `name`; every request body it receives is appended to the returned list."""
    from fastapi import Request

    app = create_faulty_app(fail_rate=0.0, kinds=("500",), model_name=name, **kw)
    seen: list[dict] = []

    @app.middleware("http")
    async def record(request: Request, call_next: Any) -> Any:
        if request.method == "POST":
            seen.append(json.loads(await request.body()))
        return await call_next(request)

    return app, seen


def upstreams_for(urls: dict[str, str], **client: Any) -> Upstreams:
    return Upstreams(models={m: {"endpoints": [{"name": f"ep-{m}", "base_url": f"{u}/v1", "model": f"served-{m}",
                                                "api_key_env": []}]} for m, u in urls.items()},
                     client={"mode": "chat", "max_retries": 1, "backoff_base_s": 0.01, "timeout_s": 10, **client})


def router(bundle: FakeBundle | None = None, urls: dict[str, str] | None = None, settings: dict | None = None,
           governance: dict | None = None, sticky_salt: str | None = None, **kw: Any) -> Any:
    bundle = bundle or FakeBundle()
    gov = build_governance(governance, bundle) if governance is not None else None
    sticky = None
    if sticky_salt:
        sticky = stickiness_factory({"_target_": "kronaxis_lab.serving.stickiness.StickinessGuard", "ttl_s": 600,
                                     "max_entries": 1000, "salt": sticky_salt}, bundle)
    policies = {"threshold": {"_target_": "kronaxis_lab.routing.policies.Threshold"},
                "wtp": {"_target_": "kronaxis_lab.routing.policies.WillingnessToPay"}}
    kw.setdefault("host", "127.0.0.1")  # loopback: client authentication off unless the test turns it on
    return create_app(bundle, upstreams_for(urls or {}), ServeSettings(**(settings or {})), governance=gov,
                      stickiness=sticky, policies=policies, **kw)


def gov_config(endpoints: dict[str, Any]) -> dict[str, Any]:
    from omegaconf import OmegaConf

    path = Path(__file__).resolve().parents[1] / "configs" / "governance" / "default.yaml"
    cfg = OmegaConf.to_container(OmegaConf.load(path))
    cfg["endpoints"] = endpoints
    return cfg


def chat(url: str, messages: list[dict], model: str = "kronaxis/auto", headers: dict | None = None,
         **body: Any) -> httpx.Response:
    return httpx.post(f"{url}/v1/chat/completions", json={"model": model, "messages": messages, **body},
                      headers=headers or {}, timeout=30)


def route(url: str, payload: dict, headers: dict | None = None) -> httpx.Response:
    return httpx.post(f"{url}/v1/route", json=payload, headers=headers or {}, timeout=30)


# ---------------------------------------------------------------------------------------------------
# decisions
# ---------------------------------------------------------------------------------------------------
def test_route_single_batch_and_policy_override():
    with ServerThread(router()) as r:
        easy = route(r.url, {"messages": EASY})
        assert easy.status_code == 200
        d = easy.json()
        assert (d["model"], d["tier"]) == ("small", 0) and d["scores"] == {"small": 0.9, "big": 0.95}
        assert d["reasons"] and d["policy"] == "threshold" and d["param"] == 0.5
        assert easy.headers["x-kronaxis-model"] == "small"
        assert json.loads(easy.headers["x-kronaxis-scores"]) == {"small": 0.9, "big": 0.95}
        hard = route(r.url, {"messages": HARD}).json()
        assert (hard["model"], hard["tier"]) == ("big", 1)

        batch = route(r.url, {"requests": [{"messages": HARD}, {"messages": EASY},
                                           {"messages": EASY, "model": "kronaxis/threshold:0.92"}]})
        assert batch.status_code == 200
        assert [x["model"] for x in batch.json()["results"]] == ["big", "small", "big"]

        # per-request operating point: τ = 0.92 > P̂(small) = 0.9 → big; τ = 0.05 → even "hard" goes small
        assert route(r.url, {"messages": EASY, "model": "kronaxis/threshold:0.92"}).json()["model"] == "big"
        low = route(r.url, {"messages": HARD, "model": "kronaxis/threshold:0.05"}).json()
        assert low["model"] == "small" and low["policy"] == "threshold" and low["param"] == 0.05
        assert route(r.url, {"messages": HARD, "model": "kronaxis/threshold"}).json()["model"] == "big"  # bundle τ
        # a fleet model passes straight through
        forced = route(r.url, {"messages": HARD, "model": "small"}).json()
        assert forced["model"] == "small" and forced["policy"] == "passthrough"
        for bad, status in [("kronaxis/nope:1", 404), ("gpt-9", 404), ("kronaxis/threshold:abc", 400),
                            ("kronaxis/wtp", 400)]:
            resp = route(r.url, {"messages": EASY, "model": bad})
            assert resp.status_code == status, bad
            assert resp.json()["error"]["param"] == "model"


def test_micro_batching_gathers_concurrent_requests_and_keeps_rows_apart():
    async def burst(url: str, n: int) -> list[dict]:
        async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=n)) as c:
            texts = [f"question {i} {'hard' if i % 3 == 0 else 'easy'}" for i in range(n)]
            rs = await asyncio.gather(*(c.post(f"{url}/v1/route", json={"messages": [{"role": "user", "content": t}]})
                                        for t in texts))
        return [r.json() for r in rs]

    # a batch closes when it holds max_batch texts; the wait bound (60 s) is never reached, so no timing matters
    for enabled in (True, False):
        bundle = FakeBundle()
        with ServerThread(router(bundle, settings={"batching": {"enabled": enabled, "max_batch": 16,
                                                                "max_wait_ms": 60_000, "workers": 2}})) as r:
            out = asyncio.run(burst(r.url, 48))
        # each request gets its own row back: "hard" ones (i % 3 == 0) → big
        assert [d["model"] for d in out] == ["big" if i % 3 == 0 else "small" for i in range(48)]
        assert bundle.batches == ([16] * 3 if enabled else [1] * 48)


def test_batcher_runs_the_policy_per_key_group_and_isolates_failures():
    calls: list[tuple[int, Any]] = []

    def predict(texts: list[str]) -> np.ndarray:
        return np.array([[float(t.split()[-1]), 0.0] for t in texts])

    def post(P: np.ndarray, texts: list[str], key: Any) -> np.ndarray:
        calls.append((len(texts), key))
        if key == "bad":
            raise ValueError("policy for this key is broken")
        return P[:, 0].astype(int) * (10 if key == "x10" else 1)

    async def main() -> list[Any]:
        b = InferenceBatcher(predict, post, max_batch=8, max_wait_ms=60_000)  # 4 requests × 2 texts fill it
        await b.start()
        try:
            jobs = [b.predict([f"q {i}", f"q {i + 1}"], key) for i, key in enumerate(["x1", "x10", "bad", "x1"])]
            return await asyncio.gather(*jobs, return_exceptions=True)
        finally:
            await b.stop()

    out = asyncio.run(main())
    assert [list(o[1]) for o in (out[0], out[1], out[3])] == [[0, 1], [10, 20], [3, 4]]
    assert np.array_equal(out[1][0][:, 0], [1.0, 2.0])  # each caller gets its own rows of P̂
    assert isinstance(out[2], ValueError)  # only the broken key's request fails
    assert sorted(calls, key=str) == sorted([(4, "x1"), (2, "x10"), (2, "bad")], key=str)  # one call per key


def test_a_request_that_fills_a_batch_runs_alone_without_waiting_for_the_gathering_batch():
    """A 1-text request opens a batch that waits (60 s) for more; a request of max_batch texts does not queue
    behind it: it is answered on its own predict call while the small one is still waiting."""
    sizes: list[int] = []

    def predict(texts: list[str]) -> np.ndarray:
        sizes.append(len(texts))
        return np.array([[float(t.split()[-1]), 0.0] for t in texts])

    async def main() -> list[int]:
        b = InferenceBatcher(predict, None, max_batch=4, max_wait_ms=60_000)
        await b.start()
        try:
            small = asyncio.ensure_future(b.predict(["q 7"]))
            await asyncio.sleep(0)  # the batcher holds the small request and waits for more
            P, _ = await asyncio.wait_for(b.predict([f"q {i}" for i in range(4)]), 30)
            assert np.array_equal(P[:, 0], [0, 1, 2, 3]) and not small.done()
            small.cancel()
            return sizes
        finally:
            await b.stop()

    assert asyncio.run(main()) == [4]


def test_classifier_failure_fails_open_to_premium_or_503():
    with ServerThread(router(FakeBundle(fail=True))) as r:
        d = route(r.url, {"messages": EASY}).json()
        assert d["model"] == "big" and d["policy"] == "fail_open" and "classifier failed" in d["reasons"][0]
    with ServerThread(router(FakeBundle(fail=True), settings={"classifier_failure": "error"})) as r:
        resp = route(r.url, {"messages": EASY})
        assert resp.status_code == 503 and resp.json()["error"]["code"] == "classifier_unavailable"


# ---------------------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------------------
def test_malformed_requests_get_openai_style_4xx_never_500():
    app = router(settings={"limits": {"max_body_bytes": 4096, "max_messages": 8, "max_route_batch": 4}})
    cases = [
        (b"{not json", 400), (b"", 400), (b"[1, 2]", 400), (b'"text"', 400), (b"\xff\xfe", 400),
        (json.dumps({"model": "kronaxis/auto"}).encode(), 400),                         # missing messages
        (json.dumps({"messages": []}).encode(), 400),
        (json.dumps({"messages": "hello"}).encode(), 400),
        (json.dumps({"messages": [{"content": "no role"}]}).encode(), 400),
        (json.dumps({"messages": [{"role": "user", "content": 42}]}).encode(), 400),
        (json.dumps({"messages": [{"role": "user", "content": [{"type": "text", "text": 3}]}]}).encode(), 400),
        (json.dumps({"messages": [{"role": "user", "content": "   "}]}).encode(), 400),
        (json.dumps({"messages": [{"role": "user", "content": "x"}] * 9}).encode(), 400),  # too many
        (json.dumps({"messages": EASY, "model": 7}).encode(), 400),
        (json.dumps({"messages": EASY, "model": "no-such-model"}).encode(), 404),
        (json.dumps({"messages": [{"role": "user", "content": "x" * 5000}]}).encode(), 413),
        (b"[" * 2000 + b"]" * 2000, 400),                                              # nested too deeply
    ]
    with ServerThread(app) as r:
        for path in ("/v1/chat/completions", "/v1/route"):
            for raw, status in cases:
                resp = httpx.post(r.url + path, content=raw, headers={"content-type": "application/json"}, timeout=10)
                assert resp.status_code == status, (path, raw[:40], resp.text)
                err = resp.json()["error"]
                assert err["message"] and err["type"], resp.text
        # streamed body without content-length still hits the size limit
        resp = httpx.post(r.url + "/v1/route", content=iter([b'{"messages": "', b"x" * 5000, b'"}']), timeout=10)
        assert resp.status_code == 413
        assert route(r.url, {"requests": []}).status_code == 400
        assert route(r.url, {"requests": [{"messages": EASY}] * 5}).status_code == 400
        bad_item = route(r.url, {"requests": [{"messages": EASY}, {"messages": [{"role": "user"}]}]})
        assert bad_item.status_code == 400 and "requests[1]" in bad_item.json()["error"]["message"]
        resp = chat(r.url, EASY, stream="yes")
        assert resp.status_code == 400 and resp.json()["error"]["param"] == "stream"
        nf = httpx.get(r.url + "/v1/nothing-here")
        assert nf.status_code == 404 and "error" in nf.json()
        assert httpx.get(r.url + "/v1/route").status_code == 405
        metrics = httpx.get(r.url + "/metrics").text
        assert 'kronaxis_request_errors_total{status="400"}' in metrics
        assert 'status="500"' not in metrics


def test_no_upstreams_route_answers_chat_is_503():
    with ServerThread(router()) as r:
        assert route(r.url, {"messages": EASY}).json()["model"] == "small"
        resp = chat(r.url, EASY)
        assert resp.status_code == 503
        err = resp.json()["error"]
        assert err["code"] == "no_upstreams" and "upstreams" in err["message"]
        health = httpx.get(r.url + "/healthz").json()
        assert health["status"] == "ok" and health["upstreams"] == [] and health["models"] == ["small", "big"]
        assert health["pid"] == os.getpid()  # the process that answered (here the test's own)


# ---------------------------------------------------------------------------------------------------
# forwarding
# ---------------------------------------------------------------------------------------------------
def test_chat_routes_forwards_streams_and_counts():
    small_app, small_seen = recording_upstream("served-small")
    big_app, big_seen = recording_upstream("served-big")
    with ServerThread(small_app) as s, ServerThread(big_app) as b, \
            ServerThread(router(urls={"small": s.url, "big": b.url})) as r:
        easy = chat(r.url, EASY, max_tokens=5, route_token="v1.0.0.x")  # a router field: read, not forwarded
        assert easy.status_code == 200, easy.text
        assert easy.headers["x-kronaxis-model"] == "small" and easy.headers["x-kronaxis-tier"] == "0"
        assert easy.headers["x-kronaxis-endpoint"] == "ep-small"
        assert easy.json()["model"] == "served-small"
        assert easy.json()["choices"][0]["message"]["content"] == "echo: " + EASY[0]["content"]
        hard = chat(r.url, HARD)
        assert hard.headers["x-kronaxis-model"] == "big" and hard.json()["model"] == "served-big"
        # what reached each upstream: the client's body, model renamed to the upstream's name
        assert [x["messages"] for x in small_seen] == [EASY] and small_seen[0]["max_tokens"] == 5
        assert "route_token" not in small_seen[0]
        assert [x["messages"] for x in big_seen] == [HARD] and big_seen[0]["model"] == "served-big"

        # streaming: SSE passes through, headers carry the decision
        with httpx.stream("POST", r.url + "/v1/chat/completions", timeout=30,
                          json={"model": "kronaxis/auto", "messages": HARD, "stream": True,
                                "stream_options": {"include_usage": True}}) as resp:
            assert resp.status_code == 200
            assert resp.headers["content-type"].startswith("text/event-stream")
            assert resp.headers["x-kronaxis-model"] == "big"
            lines = [ln for ln in resp.iter_lines() if ln.startswith("data: ")]
        assert lines[-1] == "data: [DONE]"
        chunks = [json.loads(ln[6:]) for ln in lines[:-1]]
        text = "".join((c["choices"][0]["delta"].get("content") or "") for c in chunks if c["choices"])
        assert text == "echo: " + HARD[0]["content"]
        assert big_seen[-1]["stream"] is True

        m = httpx.get(r.url + "/metrics").text
        assert 'kronaxis_requests_total{endpoint="chat",model="small",tier="0"} 1.0' in m
        assert 'kronaxis_requests_total{endpoint="chat",model="big",tier="1"} 2.0' in m
        assert "kronaxis_decision_latency_seconds_count 3.0" in m
        # one request went to the cheap model: the estimate of $ saved vs always-premium is positive
        saved = float(next(ln.split()[-1] for ln in m.splitlines() if ln.startswith("kronaxis_saved_usd ")))
        assert saved > 0


def test_fallback_to_next_model_when_an_upstream_is_down():
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    dead_url = f"http://127.0.0.1:{dead.getsockname()[1]}"  # bound, never listening: connection refused
    big_app, big_seen = recording_upstream("served-big")
    try:
        with ServerThread(big_app) as b, ServerThread(router(urls={"small": dead_url, "big": b.url})) as r:
            resp = chat(r.url, EASY)
            assert resp.status_code == 200, resp.text
            assert resp.headers["x-kronaxis-model"] == "big"
            assert any("fallback" in x for x in json.loads(resp.headers["x-kronaxis-reasons"]))
            assert len(big_seen) == 1
            m = httpx.get(r.url + "/metrics").text
            assert 'kronaxis_fallbacks_total{kind="model"} 1.0' in m
            assert 'kronaxis_upstream_errors_total{model="small"} 1.0' in m
        with ServerThread(router(urls={"small": dead_url}, settings={"fallback_across_models": False})) as r:
            resp = chat(r.url, EASY)
            assert resp.status_code == 502 and resp.json()["error"]["code"] == "upstream_failed"
    finally:
        dead.close()


def test_api_keys_rotate_and_never_appear_in_logs(monkeypatch, caplog):
    good, bad = "sk-test-GOOD-4f9a8b7c6d5e4f3a2b1c", "sk-test-BAD-0a1b2c3d4e5f6a7b8c9d"
    monkeypatch.setenv("KX_TEST_KEY_BAD", bad)
    monkeypatch.setenv("KX_TEST_KEY_GOOD", good)
    up_app, seen = recording_upstream("served-big", valid_keys=[good])
    caplog.set_level(logging.DEBUG)
    with ServerThread(up_app) as u:
        ups = Upstreams(models={"big": {"endpoints": [{"name": "cloud", "base_url": f"{u.url}/v1",
                                                       "api_key_env": ["KX_TEST_KEY_BAD", "KX_TEST_KEY_GOOD"]}]}},
                        client={"mode": "chat", "max_retries": 1, "backoff_base_s": 0.01})
        app = create_app(FakeBundle(), ups, ServeSettings(), host="127.0.0.1")
        with ServerThread(app) as r:
            for _ in range(3):
                resp = chat(r.url, HARD)
                assert resp.status_code == 200 and resp.headers["x-kronaxis-model"] == "big"
                assert good not in resp.text and bad not in resp.text
                assert good not in str(resp.headers) and bad not in str(resp.headers)
            assert httpx.get(u.url + "/stats").json()["auth_rejected"] == 1  # bad key dropped once, then rotated
    assert "KX_TEST_KEY_BAD" in caplog.text  # the rotation is logged, by env-var name
    assert good not in caplog.text and bad not in caplog.text


# ---------------------------------------------------------------------------------------------------
# governance through the real server
# ---------------------------------------------------------------------------------------------------
def _corpus() -> list[dict]:
    return [json.loads(line) for line in (FIXTURES / "governance_corpus.jsonl").read_text().splitlines() if line]


def test_governance_corpus_never_reaches_a_disallowed_upstream():
    """Every corpus query, forced to the external model AND auto-routed, through real HTTP: no query labelled
    sensitive reaches the external upstream; benign queries still do."""
    corpus = _corpus()
    sensitive = [r for r in corpus if r["classes"]]
    assert len(corpus) >= 200 and len(sensitive) >= 100
    # a conversation whose sensitive part is not in the last user turn must be caught too
    carriers = [[{"role": "system", "content": r["text"]}, {"role": "user", "content": "hard: summarise"}]
                for r in sensitive[:20]]
    carriers += [[{"role": "user", "content": r["text"]}, {"role": "assistant", "content": "ok"},
                  {"role": "user", "content": "and now, the hard part?"}] for r in sensitive[20:40]]
    internal_app, internal_seen = recording_upstream("served-small")
    external_app, external_seen = recording_upstream("served-big")
    gov = gov_config({"small": "*", "big": []})

    async def send(url: str, bodies: list[dict]) -> list[httpx.Response]:
        sem = asyncio.Semaphore(16)
        async with httpx.AsyncClient(timeout=60) as c:
            async def one(b: dict) -> httpx.Response:
                async with sem:
                    return await c.post(url + "/v1/chat/completions", json=b)
            return await asyncio.gather(*(one(b) for b in bodies))

    with ServerThread(internal_app) as i, ServerThread(external_app) as e, \
            ServerThread(router(urls={"small": i.url, "big": e.url}, governance=gov,
                                settings={"expose_data_classes": True})) as r:
        bodies = [{"model": m, "messages": [{"role": "user", "content": row["text"]}]}
                  for m in ("big", "kronaxis/auto", "kronaxis/threshold:0.99") for row in corpus]
        bodies += [{"model": "big", "messages": msgs} for msgs in carriers]
        responses = asyncio.run(send(r.url, bodies))
        assert all(x.status_code == 200 for x in responses), {x.status_code for x in responses}
        metrics = httpx.get(r.url + "/metrics").text

    external_texts = {"\n".join(m["content"] for m in b["messages"]) for b in external_seen}
    leaked = [row["text"] for row in sensitive if any(row["text"] in t for t in external_texts)]
    assert leaked == [], f"{len(leaked)} sensitive queries reached the external upstream"
    benign = {row["text"] for row in corpus if not row["classes"]}
    # forced to "big" and τ = 0.99 send benign queries external (bar the detectors' few false positives);
    # every sensitive one was rerouted to the internal upstream
    reached = sum(any(b == m["content"] for m in x["messages"]) for b in benign for x in external_seen)
    assert reached >= 0.95 * 2 * len(benign)
    internal_texts = ["\n".join(m["content"] for m in b["messages"]) for b in internal_seen]
    assert all(any(row["text"] in t for t in internal_texts) for row in sensitive)
    for x, body in zip(responses, bodies):
        if x.headers["x-kronaxis-model"] == "small" and body["model"] == "big":
            assert x.headers.get("x-kronaxis-data-classes")
    assert 'kronaxis_governance_blocks_total{action="rerouted",data_class="email"}' in metrics


def test_governance_refuses_when_no_allowed_upstream():
    external_app, external_seen = recording_upstream("served-big")
    with ServerThread(external_app) as e, \
            ServerThread(router(urls={"big": e.url}, governance=gov_config({"small": "*", "big": []}),
                                settings={"expose_data_classes": True})) as r:
        resp = chat(r.url, [{"role": "user", "content": "email the report to dana.whitfield@example.com"}])
        assert resp.status_code == 403
        err = resp.json()["error"]
        assert err["code"] == "data_class_not_allowed" and "email" in err["message"]
        assert "dana.whitfield" not in resp.text  # the refusal names the class, never the value
        assert chat(r.url, EASY).headers["x-kronaxis-model"] == "big"  # small has no upstream: big serves it
        assert len(external_seen) == 1
        # the decision API reports the refusal as data (models without upstreams count there)
        d = route(r.url, {"messages": [{"role": "user", "content": "my card is 4111 1111 1111 1111"}],
                          "model": "big"}).json()
        assert d["model"] == "small" and d["data_classes"] == ["credit_card"]


def test_without_a_governance_config_the_default_detectors_guard_the_fleet_data_classes():
    bundle = FakeBundle(data_classes={"small": ["*"], "big": []})
    with ServerThread(router(bundle, settings={"expose_data_classes": True})) as r:
        d = route(r.url, {"messages": [{"role": "user", "content": "mail dana.whitfield@example.com"}],
                          "model": "big"}).json()
        assert d["model"] == "small" and d["data_classes"] == ["email"]
        assert any("may not receive ['email']" in x for x in d["reasons"])
        assert route(r.url, {"messages": HARD, "model": "big"}).json()["model"] == "big"


def test_serving_code_reads_no_repository_config():
    """The library builds its defaults in Python (a wheel has no configs/): importing it loads no pipeline."""
    import subprocess
    import sys

    code = ("import sys, kronaxis_lab.serving.app, kronaxis_lab.serving.components; "
            "print(sorted(m for m in sys.modules if m.startswith('kronaxis_lab.pipelines')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_governance_config_must_name_fleet_models():
    with pytest.raises(ServeConfigError, match="not in the bundle's fleet"):
        build_governance(gov_config({"gpt-4": []}), FakeBundle())
    # no endpoints configured: taken from the fleet's data_classes
    g = build_governance(gov_config({}), FakeBundle(data_classes={"small": ["*"], "big": ["email"]}))
    assert g.endpoints["small"] == "*" and g.endpoints["big"] == frozenset({"email"})


# ---------------------------------------------------------------------------------------------------
# stickiness
# ---------------------------------------------------------------------------------------------------
def test_stickiness_across_two_router_instances():
    """Two independent apps (separate caches, same salt) agree: a session never drops below its earlier tier."""
    conv1 = HARD
    conv2 = HARD + [{"role": "assistant", "content": "Euclid..."}, {"role": "user", "content": "thanks, and 2+2?"}]
    only_last = {"classify": {"context_turns": 0}}  # the classifier sees the easy last turn alone
    with ServerThread(router(sticky_salt="s1", settings=only_last)) as a, \
            ServerThread(router(sticky_salt="s1", settings=only_last)) as b:
        t1 = route(a.url, {"messages": conv1}, headers={"x-kronaxis-session": "alice"})
        assert t1.json()["model"] == "big" and t1.headers.get("x-kronaxis-route")
        t2 = route(b.url, {"messages": conv2}, headers={"x-kronaxis-session": "alice"})
        assert t2.json()["model"] == "big" and any("sticky" in x for x in t2.json()["reasons"])
        assert route(b.url, {"messages": conv2, "user": "bob"}).json()["model"] == "big"  # OpenAI `user` field
        assert route(b.url, {"messages": conv2}).json()["model"] == "small"  # no session key: not sticky
        m = httpx.get(b.url + "/metrics").text
        assert "kronaxis_sticky_escalations_total 2.0" in m


def test_routing_token_carries_escalation_under_first_turn_scheme():
    settings = {"session": {"scheme": "first_turn"}, "classify": {"context_turns": 0}}
    easy_then_hard = EASY + [{"role": "assistant", "content": "Paris"}] + HARD
    follow = easy_then_hard + [{"role": "assistant", "content": "..."}, {"role": "user", "content": "ok, 3+3?"}]
    hdr = {"x-kronaxis-session": "carol"}
    with ServerThread(router(sticky_salt="s2", settings=settings)) as a, \
            ServerThread(router(sticky_salt="s2", settings=settings)) as b, \
            ServerThread(router(sticky_salt="other-salt", settings=settings)) as c:
        esc = route(a.url, {"messages": easy_then_hard}, headers=hdr)
        assert esc.json()["model"] == "big"
        token = esc.headers["x-kronaxis-route"]
        # floor = first turn (easy): without the token the follow-up drops; with it, it stays on big
        assert route(b.url, {"messages": follow}, headers=hdr).json()["model"] == "small"
        assert route(b.url, {"messages": follow}, headers={**hdr, "x-kronaxis-route": token}).json()["model"] == "big"
        # a token is bound to its session and salt: useless for another session or another deployment
        assert route(b.url, {"messages": follow}, headers={"x-kronaxis-session": "mallory",
                                                           "x-kronaxis-route": token}).json()["model"] == "small"
        assert route(c.url, {"messages": follow}, headers={**hdr, "x-kronaxis-route": token}).json()["model"] == "small"
        forged = token.split(".")
        forged[-1] = "0" * len(forged[-1])
        assert route(b.url, {"messages": follow},
                     headers={**hdr, "x-kronaxis-route": ".".join(forged)}).json()["model"] == "small"


# ---------------------------------------------------------------------------------------------------
# configuration
# ---------------------------------------------------------------------------------------------------
def test_fake_bundle_implements_the_router_bundle_protocol():
    assert isinstance(FakeBundle(), RouterBundle)


def test_settings_defaults_have_one_source():
    """configs/serve.yaml writes no value of `settings` / `bundle_options`: the composed nodes are the pydantic
    models' defaults (and still overridable from the command line)."""
    from omegaconf import OmegaConf

    raw = OmegaConf.load(Path(__file__).resolve().parents[1] / "configs" / "serve.yaml")
    assert "settings" not in raw and "bundle_options" not in raw
    cfg = compose("serve", ["settings.batching.workers=3", "bundle_options.batch_size=8"])
    settings = OmegaConf.to_container(cfg.settings, resolve=True)
    assert settings == {**ServeSettings().model_dump(), "batching": {**ServeSettings().batching.model_dump(),
                                                                     "workers": 3}}
    assert OmegaConf.to_container(cfg.bundle_options) == {**BundleOptions().model_dump(), "batch_size": 8}


def test_serve_configs_compose_and_bad_settings_are_clear_errors(tmp_path):
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = compose("serve", ["upstreams=local_cpu", "governance=local_cloud", "settings.batching.max_batch=8"])
    settings = ServeSettings.from_config(OmegaConf.to_container(cfg.settings, resolve=True))
    assert settings.batching.max_batch == 8 and settings.session.header == "x-kronaxis-session"
    ups = instantiate(cfg.upstreams)
    assert ups.names == ["smollm2-135m-instruct", "gemma-3-270m"]
    assert cfg.stickiness._target_.endswith("StickinessGuard") and set(cfg.policies) >= {"wtp", "threshold"}
    with pytest.raises(ServeConfigError, match="bundle=<dir>"):
        build_app(compose("serve", []))
    with pytest.raises(ServeConfigError, match="no such directory"):
        build_app(compose("serve", [f"bundle={tmp_path / 'nope'}"]))
    with pytest.raises(ServeConfigError, match="max_batch"):
        ServeSettings.from_config({"batching": {"max_batch": 0}})
    with pytest.raises(ServeConfigError, match="nope"):
        ServeSettings.from_config({"nope": 1})
    with pytest.raises(ServeConfigError, match="(?s)bundle_options.*batch_size"):
        BundleOptions.from_config({"batch_size": 0})
    with pytest.raises(ServeConfigError, match="endpoints"):
        Upstreams(models={"small": {}})
    with pytest.raises(ServeConfigError, match="not in the bundle's fleet"):
        create_app(FakeBundle(), upstreams_for({"gpt-4": "http://127.0.0.1:9"}), ServeSettings(), host="127.0.0.1")
