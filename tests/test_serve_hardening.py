"""The router under attack (issue 11, server side), over real HTTP on 127.0.0.1.

- bad input: generated bodies (hypothesis) and the reported cases are 4xx with an OpenAI-style error, never
  a 5xx or a fail-open; one bad text in a micro-batch fails only its own request;
- no content in logs or metrics: sensitive requests through upstreams whose error bodies echo the request, then
  every log line and /metrics grepped for every planted value; the data-classes disclosure is opt-in;
- client authentication: 401 / 429 + Retry-After, per-key counters, keys never logged, on by default off loopback
  (the official `openai` SDK as the client);
- the governance scan runs off the event loop: /healthz answers while a scan is in progress.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import threading
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kronaxis_lab.serving.app import create_app
from kronaxis_lab.serving.auth import KeyStore, RateLimiter, auth_enabled, hash_key
from kronaxis_lab.serving.batching import InferenceBatcher
from kronaxis_lab.serving.detectors import default_detectors
from kronaxis_lab.serving.engine import SURROGATE
from kronaxis_lab.serving.governance import Detector, GovernancePolicy
from kronaxis_lab.serving.settings import AuthSettings, ServeConfigError, ServeSettings
from tests.conftest import compose
from tests.test_serve_app import (
    EASY,
    HARD,
    FakeBundle,
    ServerThread,
    chat,
    gov_config,
    recording_upstream,
    route,
    upstreams_for,
)
from tests.test_serve_app import router as make_router

FIXTURES = Path(__file__).resolve().parent / "fixtures"
KEY_A, KEY_B = "kx-test-key-A-9f8e7d6c5b4a39281706", "kx-test-key-B-0a1b2c3d4e5f60718293"
CARD, SSN, EMAIL, SECRET = "4111 1111 1111 1111", "078-05-1120", "dana.whitfield@example.com", \
    "sk-live-4fT9qLw2Zx8RmN3vBp7Kd1Hs"
CANARY = "canary-7f3a9e1b"  # plain content: no detector flags it, and it must not reach a log either


class LogTap(logging.Handler):
    """Every record of every logger (uvicorn's own loggers do not propagate to the root: tapped directly)."""

    NAMES = ("", "uvicorn", "uvicorn.error", "uvicorn.access")

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))  # format() includes the traceback when there is one

    def __enter__(self) -> "LogTap":
        self.old = {n: logging.getLogger(n).level for n in self.NAMES}
        for n in self.NAMES:
            logging.getLogger(n).addHandler(self)
            logging.getLogger(n).setLevel(logging.DEBUG)
        return self

    def __exit__(self, *exc: Any) -> None:
        for n in self.NAMES:
            logging.getLogger(n).removeHandler(self)
            logging.getLogger(n).setLevel(self.old[n])

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


def error_echo_upstream(status: int = 500) -> tuple[Any, list[bytes]]:
    """An OpenAI-compatible upstream that fails every request with an error body quoting the request."""
    app, seen = FastAPI(), []

    @app.post("/v1/chat/completions")
    async def fail(request: Request) -> Any:
        raw = await request.body()
        seen.append(raw)
        return JSONResponse({"error": {"message": f"cannot serve: {raw.decode()}", "type": "server_error",
                                       "code": "echo_failure"}}, status_code=status)

    return app, seen


# ---------------------------------------------------------------------------------------------------
# 5. bad input → 400, never 5xx, never a fail-open
# ---------------------------------------------------------------------------------------------------
REPORTED = [
    # (raw body, param named by the error or None)
    ('{"model":"kronaxis/auto","messages":[{"role":"user","content":"\\ud800"}]}', "messages[0].content"),
    ('{"model":"kronaxis/auto","messages":[{"role":"user","content":"hi","\\udfff":1}]}', "messages[0]"),
    ('{"model":"kronaxis/auto","messages":[{"role":"user","content":"hi"}],"temperature":NaN}', None),
    ('{"model":"kronaxis/auto","messages":[{"role":"user","content":"hi"}],"top_p":Infinity}', None),
    ('{"model":"kronaxis/auto","messages":[{"role":"user","content":"hi"}],"metadata":{"x":-Infinity}}', None),
    ('{"model":"kronaxis/auto","messages":[{"role":"user","content":"hi"}],"temperature":1e999}', None),
    ('{"model":"kronaxis/wtp:-inf","messages":[{"role":"user","content":"hi"}]}', "model"),
    ('{"model":"kronaxis/wtp:-1","messages":[{"role":"user","content":"hi"}]}', "model"),
    ('{"model":"kronaxis/threshold:1_0","messages":[{"role":"user","content":"hi"}]}', "model"),
    ('{"model":"kronaxis/threshold:\\u0661","messages":[{"role":"user","content":"hi"}]}', "model"),
    ('{"model":"kronaxis/threshold:nan","messages":[{"role":"user","content":"hi"}]}', "model"),
    ('{"model":"kronaxis/threshold:1e5000","messages":[{"role":"user","content":"hi"}]}', "model"),
    ('{"model":"kronaxis/threshold: 0.5","messages":[{"role":"user","content":"hi"}]}', "model"),
    ('{"model":"kronaxis/threshold:0x1","messages":[{"role":"user","content":"hi"}]}', "model"),
    ('{"model":"kronaxis/auto","messages":[{"role":"user","content":"hi"}],"temperature":"hot"}', "temperature"),
    ('{"model":"kronaxis/auto","messages":[{"role":"user","content":"hi"}],"temperature":true}', "temperature"),
    ('{"model":"kronaxis/auto","messages":[{"role":"user","content":"hi"}],"temperature":7}', "temperature"),
    ('{"model":"kronaxis/auto","messages":[{"role":"user","content":"hi"}],"max_tokens":1.5}', "max_tokens"),
    ('{"model":"kronaxis/auto","messages":[{"role":"user","content":"hi"}],"max_tokens":0}', "max_tokens"),
    ('{"model":"kronaxis/auto","messages":[{"role":"user","content":"hi"}],"n":"2"}', "n"),
    ('{"model":"kronaxis/auto","messages":[{"role":"user","content":"hi"}],"stop":[1]}', "stop"),
    ('{"model":"kronaxis/auto","messages":[{"role":"user","content":"hi"}],"logit_bias":{"1":"x"}}', "logit_bias"),
    ('{"model":"kronaxis/auto","messages":[{"role":"user","content":"hi"}],"user":5}', "user"),
    ('{"model":"kronaxis/auto","messages":[{"role":"user","content":"hi"}],"tools":{}}', "tools"),
    ('{"model":"kronaxis/auto","messages":[{"role":"user","content":"hi"}],"stream":"yes"}', "stream"),
    ('{"model":"kronaxis/auto","messages":[{"role":"wizard","content":"hi"}]}', "messages[0].role"),
]


@pytest.fixture(scope="module")
def stack():
    """A router (governance: small may receive everything, big nothing) over two recording echo upstreams."""
    small_app, small_seen = recording_upstream("served-small")
    big_app, big_seen = recording_upstream("served-big")
    with ServerThread(small_app) as s, ServerThread(big_app) as b:
        bundle = TokenizingBundle()
        app = make_router(bundle, urls={"small": s.url, "big": b.url}, governance=gov_config({"small": "*", "big": []}))
        with ServerThread(app) as r:
            yield {"url": r.url, "bundle": bundle, "seen": small_seen + big_seen, "small": small_seen, "big": big_seen}


def test_reported_invalid_inputs_are_400_with_an_openai_error(stack):
    url = stack["url"]
    n_seen = len(stack["small"]) + len(stack["big"])
    for raw, param in REPORTED:
        for path in ("/v1/chat/completions", "/v1/route"):
            if path == "/v1/route" and param not in (None, "model", "messages[0].content", "messages[0]",
                                                      "messages[0].role"):
                continue  # sampling parameters mean nothing to a decision
            resp = httpx.post(url + path, content=raw.encode(), headers={"content-type": "application/json"},
                              timeout=10)
            assert resp.status_code == 400, (path, raw, resp.text)
            err = resp.json()["error"]
            assert err["type"] == "invalid_request_error" and err["message"], resp.text
            if param is not None:
                assert err["param"] == param, (raw, err)
    # raw UTF-8 bytes of a surrogate (json.loads accepts them: 'surrogatepass')
    raw = b'{"messages":[{"role":"user","content":"a\xed\xa0\x80b"}]}'
    assert httpx.post(url + "/v1/chat/completions", content=raw, timeout=10).status_code == 400
    assert len(stack["small"]) + len(stack["big"]) == n_seen  # nothing reached an upstream
    assert not any(SURROGATE.search(t) for t in stack["bundle"].texts)  # the classifier never saw one
    m = httpx.get(url + "/metrics").text
    assert "kronaxis_classifier_failures_total 0.0" in m and 'status="5' not in m  # no fail-open, no 5xx
    # the valid neighbours of those cases still work: +inf is a valid willingness to pay, 0.5 a threshold
    for model in ("kronaxis/wtp:inf", "kronaxis/threshold:0.5", "kronaxis/threshold:+.5", "kronaxis/threshold:5e-1"):
        assert route(url, {"messages": EASY, "model": model}).status_code == 200, model
    ok = chat(url, EASY, temperature=0, max_tokens=5, stop=["\n"], logit_bias={"42": -100}, stream=False, user="u1")
    assert ok.status_code == 200, ok.text


_text = st.text(st.characters(codec="utf-8") | st.characters(categories=["Cs"]), max_size=12)
_json = st.recursive(st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | _text,
                     lambda kids: st.lists(kids, max_size=3) | st.dictionaries(_text, kids, max_size=3),
                     max_leaves=8)
_param_names = st.sampled_from(["temperature", "top_p", "max_tokens", "n", "stop", "stream", "user", "seed",
                                "logit_bias", "tools", "tool_choice", "response_format", "metadata", "logprobs",
                                "top_logprobs", "presence_penalty", "route_token", "unknown_field", "requests"])
_model = st.sampled_from(["kronaxis/auto", "small", "big", "kronaxis/threshold", "kronaxis/nope:1", "gpt-9"]) | \
    st.builds(lambda p, v: f"kronaxis/{p}:{v}", st.sampled_from(["wtp", "threshold"]),
              st.text(st.characters(codec="utf-8"), max_size=8) | st.floats().map(repr)) | _text
_message = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "assistant", "system", "tool", "user "]) | _text},
    optional={"content": _text | _json | st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": _json})),
              "name": _json})
_body = st.fixed_dictionaries({"messages": st.lists(_message, max_size=3) | _json},
                              optional={"model": _model | _json}).flatmap(
    lambda b: st.dictionaries(_param_names, _json, max_size=3).map(lambda extra: {**b, **extra}))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                     HealthCheck.too_slow])
@given(body=_body, path=st.sampled_from(["/v1/chat/completions", "/v1/route"]))
def test_generated_bad_inputs_are_4xx_never_5xx(stack, body, path):
    raw = json.dumps(body, allow_nan=True)  # floats() draws NaN and ±inf: written as NaN / Infinity tokens
    resp = httpx.post(stack["url"] + path, content=raw.encode(), headers={"content-type": "application/json"},
                      timeout=20)
    assert resp.status_code < 500, (raw[:300], resp.text[:300])
    if resp.status_code != 200:
        assert resp.json()["error"]["message"]
    parsed = json.loads(raw)  # what the router sees: surrogate pairs become one character, lone ones stay
    lone = any(SURROGATE.search(s) for s in _all_strings(parsed))
    if lone or re.search(r"\b(NaN|Infinity)\b", raw) and not _in_string_only(parsed):
        assert resp.status_code == 400, raw[:300]
    if resp.status_code == 200 and path == "/v1/route":
        assert resp.json()["policy"] != "fail_open"


def _all_strings(x: Any) -> list[str]:
    out, stack = [], [x]
    while stack:
        y = stack.pop()
        if isinstance(y, str):
            out.append(y)
        elif isinstance(y, dict):
            out += list(y)
            stack += list(y.values())
        elif isinstance(y, list):
            stack += y
    return out


def _in_string_only(parsed: Any) -> bool:
    """True when no float in the body is NaN/inf (the tokens only appeared inside strings)."""
    stack = [parsed]
    while stack:
        y = stack.pop()
        if isinstance(y, float) and not np.isfinite(y):
            return False
        if isinstance(y, dict):
            stack += list(y.values())
        elif isinstance(y, list):
            stack += y
    return True


class TokenizingBundle(FakeBundle):
    """A fake bundle whose classifier fails like a tokenizer on text it cannot encode (a lone surrogate, or the
    marker POISON), and records every text it was given."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.texts: list[str] = []
        self.calls: list[int] = []  # texts per call, failed calls included

    def predict_proba(self, texts: list[str], variant: str | None = None) -> np.ndarray:
        with self._lock:
            self.texts += texts
            self.calls.append(len(texts))
        for t in texts:
            t.encode("utf-8")  # UnicodeEncodeError on a lone surrogate, as tokenizers raise
            if "POISON" in t:
                raise ValueError("tokenizer: cannot encode this text")
        return super().predict_proba(texts, variant)


def _burst(url: str, path: str, bodies: list[dict]) -> list[httpx.Response]:
    async def go() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=len(bodies))) as c:
            return await asyncio.gather(*(c.post(url + path, content=json.dumps(b).encode(),  # lone surrogates
                                                 headers={"content-type": "application/json"}) for b in bodies))
    return asyncio.run(go())


def test_one_bad_text_fails_only_its_own_request_in_a_micro_batch():
    texts = [f"question {i} {'hard' if i % 3 == 0 else 'easy'}" for i in range(15)]
    bodies = [{"messages": [{"role": "user", "content": t}]} for t in texts]
    solo_bundle = TokenizingBundle()
    with ServerThread(make_router(solo_bundle, settings={"batching": {"enabled": False}})) as r:
        solo = [route(r.url, b).json() for b in bodies]
    # the batch closes at 16 texts (the 60 s wait bound is never reached): POISON shares it with the 15 valid ones
    bundle = TokenizingBundle()
    with ServerThread(make_router(bundle, settings={"batching": {"max_batch": 16, "max_wait_ms": 60_000}})) as r:
        out = _burst(r.url, "/v1/route", bodies[:7] + [{"messages": [{"role": "user", "content": "POISON"}]}]
                     + bodies[7:])
        metrics = httpx.get(r.url + "/metrics").text
    good = [x.json() for k, x in enumerate(out) if k != 7]
    assert all(x.status_code == 200 for x in out)
    assert [(d["model"], d["scores"], d["policy"]) for d in good] == [(d["model"], d["scores"], d["policy"])
                                                                      for d in solo]
    assert out[7].json()["policy"] == "fail_open"  # the bad one alone fails (open, per classifier_failure)
    assert "kronaxis_classifier_failures_total 1.0" in metrics
    assert bundle.calls[0] == 16 and len(bundle.calls) == 1 + 2 * 4  # bisection: ≤ 2·log2(16) more calls


def test_a_surrogate_is_a_400_before_the_classifier_and_its_batch_neighbours_are_served():
    small_app, small_seen = recording_upstream("served-small")
    big_app, big_seen = recording_upstream("served-big")
    bundle = TokenizingBundle()
    bodies = [{"model": "kronaxis/auto", "messages": [{"role": "user", "content": f"q{i} {'hard' if i % 2 else ''}"}]}
              for i in range(15)]
    bad = {"model": "kronaxis/auto", "messages": [{"role": "user", "content": "x\ud800y"}]}
    with ServerThread(small_app) as s, ServerThread(big_app) as b, \
            ServerThread(make_router(bundle, urls={"small": s.url, "big": b.url},
                                     settings={"batching": {"max_batch": 15, "max_wait_ms": 60_000}})) as r:
        out = _burst(r.url, "/v1/chat/completions", [bad] + bodies)
    assert out[0].status_code == 400 and out[0].json()["error"]["code"] == "invalid_unicode"
    assert [x.status_code for x in out[1:]] == [200] * 15
    assert [x.headers["x-kronaxis-model"] for x in out[1:]] == ["big" if i % 2 else "small" for i in range(15)]
    assert bundle.calls == [15] and not any(SURROGATE.search(t) for t in bundle.texts)
    assert len(small_seen) + len(big_seen) == 15


def test_batcher_bisects_a_failing_batch_down_to_the_bad_item():
    def predict(texts: list[str]) -> np.ndarray:
        if any("bad" in t for t in texts):
            raise ValueError("cannot encode")
        return np.array([[float(t.split()[-1]), 1.0] for t in texts])

    async def main() -> tuple[list[Any], InferenceBatcher]:
        b = InferenceBatcher(predict, lambda P, texts, key: (P[:, 0] > 7).astype(int), max_batch=16,
                             max_wait_ms=60_000)
        await b.start()
        try:
            jobs = [b.predict([f"q bad {i}" if i == 5 else f"q {i}"]) for i in range(16)]
            return await asyncio.gather(*jobs, return_exceptions=True), b
        finally:
            await b.stop()

    out, b = asyncio.run(main())
    assert isinstance(out[5], ValueError)
    for i in set(range(16)) - {5}:
        P, idx = out[i]
        assert P.tolist() == [[float(i), 1.0]] and idx.tolist() == [int(i > 7)]  # as if alone
    assert b.calls == 1 + 2 * 4  # the full batch, then two halves at each of log2(16) levels


# ---------------------------------------------------------------------------------------------------
# 6. no content in logs or metrics; the data-classes disclosure is opt-in
# ---------------------------------------------------------------------------------------------------
def _corpus() -> list[dict]:
    return [json.loads(line) for line in (FIXTURES / "governance_corpus.jsonl").read_text().splitlines() if line]


def _values(text: str) -> list[str]:
    """The value-like tokens of a text (with a digit or an @): what a leak would show."""
    return [t for t in re.findall(r"\S{6,}", text) if re.search(r"[0-9@]", t)]


def test_no_request_content_in_logs_or_metrics_even_when_upstreams_echo_it():
    """The governance corpus plus planted values go through upstreams whose error bodies quote the request (both
    models fail → fallback → 502), then through working upstreams; every log line (router, backend, uvicorn)
    and /metrics must hold none of the planted values."""
    planted = [CARD, SSN, EMAIL, SECRET, CANARY]
    sensitive = [r["text"] for r in _corpus() if r["classes"]]
    bodies = [{"model": m, "messages": [{"role": "user", "content": t}], "user": CANARY}
              for m in ("kronaxis/auto", "big") for t in sensitive]
    bodies += [{"model": "small", "messages": [{"role": "system", "content": f"{CANARY} key {SECRET}"},
                                               {"role": "user", "content": f"card {CARD}, ssn {SSN}, mail {EMAIL}"}],
                "metadata": {"note": CANARY}}] * 3
    bad_small, small_seen = error_echo_upstream(500)
    bad_big, big_seen = error_echo_upstream(400)
    ok_small, _ = recording_upstream("served-small")
    with LogTap() as tap:
        with ServerThread(bad_small) as s, ServerThread(bad_big) as b, \
                ServerThread(make_router(urls={"small": s.url, "big": b.url})) as r:
            failed = _burst_limited(r.url, bodies)
            metrics_fail = httpx.get(r.url + "/metrics").text
        with ServerThread(ok_small) as s, ServerThread(make_router(urls={"small": s.url})) as r:
            served = _burst_limited(r.url, bodies[-3:] + [{"model": "kronaxis/threshold:bad-" + CANARY,
                                                           "messages": EASY}])
            metrics_ok = httpx.get(r.url + "/metrics").text
    assert {x.status_code for x in failed} <= {400, 502} and len(small_seen) > 0 and len(big_seen) > 0
    assert any(CARD in raw.decode() for raw in small_seen)  # the echo really carried the values back
    assert [x.status_code for x in served] == [200, 200, 200, 400]
    assert any("upstream" in ln and "failed" in ln for ln in tap.lines)  # the failures were logged...
    logs = tap.text + metrics_fail + metrics_ok
    leaks = [v for v in planted if v in logs]
    leaks += [v for t in sensitive for v in _values(t) if v in logs]
    assert leaks == [], leaks  # ...without any of the content


def _burst_limited(url: str, bodies: list[dict], conc: int = 16) -> list[httpx.Response]:
    async def go() -> list[httpx.Response]:
        sem = asyncio.Semaphore(conc)
        async with httpx.AsyncClient(timeout=60) as c:
            async def one(b: dict) -> httpx.Response:
                async with sem:
                    return await c.post(url + "/v1/chat/completions", json=b)
            return await asyncio.gather(*(one(b) for b in bodies))
    return asyncio.run(go())


def test_detected_data_classes_are_disclosed_only_on_opt_in():
    msg = [{"role": "user", "content": f"please email {EMAIL} the summary"}]
    small_app, _ = recording_upstream("served-small")
    big_app, _ = recording_upstream("served-big")
    for expose in (False, True):
        with ServerThread(small_app) as s, ServerThread(big_app) as b, \
                ServerThread(make_router(FakeBundle(data_classes={"small": ["*"], "big": []}),
                                         urls={"small": s.url, "big": b.url},
                                         settings={"expose_data_classes": expose})) as r:
            resp = chat(r.url, msg, model="big")
            d = route(r.url, {"messages": msg, "model": "big"}).json()
            assert resp.status_code == 200 and resp.headers["x-kronaxis-model"] == "small"  # rerouted either way
            reasons = resp.headers["x-kronaxis-reasons"] + json.dumps(d["reasons"])
            if expose:
                assert resp.headers["x-kronaxis-data-classes"] == "email" and d["data_classes"] == ["email"]
                assert "email" in reasons
            else:
                assert "x-kronaxis-data-classes" not in resp.headers and d["data_classes"] is None
                assert "email" not in reasons and "sensitive data" in reasons
    with ServerThread(big_app) as b, \
            ServerThread(make_router(FakeBundle(data_classes={"small": ["*"], "big": []}), urls={"big": b.url})) as r:
        refused = chat(r.url, msg)
        assert refused.status_code == 403 and "email" not in refused.text


# ---------------------------------------------------------------------------------------------------
# 7. client authentication and limits
# ---------------------------------------------------------------------------------------------------
def test_auth_is_on_by_default_unless_the_router_binds_loopback():
    none, some = KeyStore(), KeyStore(KeyStore.parse([KEY_A], "test"))
    default = AuthSettings()
    for host in ("127.0.0.1", "::1", "[::1]", "localhost", "127.0.0.5"):
        assert not auth_enabled(default, host, none), host
        assert auth_enabled(default, host, some), host  # configured keys are always enforced
    for host in ("0.0.0.0", "::", "10.0.0.5", "192.168.1.2", "router.example.com", "", None):
        assert auth_enabled(default, host, none), host
    assert not auth_enabled(AuthSettings(enabled=False), "0.0.0.0", some)
    assert auth_enabled(AuthSettings(enabled=True), "127.0.0.1", none)
    # the kronaxis-serve default config binds 127.0.0.1 and sets no keys: off
    cfg = compose("serve", [])
    assert cfg.server.host == "127.0.0.1" and cfg.settings.auth.enabled is None
    # non-loopback without a key: refuses to start, and says how to fix it
    with pytest.raises(ServeConfigError, match="KRONAXIS_API_KEYS"):
        make_router(host="0.0.0.0", environ={})


def test_keys_are_hashed_at_rest_from_env_or_file(tmp_path):
    f = tmp_path / "keys"
    f.write_text(f"# router keys\n{hash_key(KEY_B)}   # team B\n\n")
    store = KeyStore.load(AuthSettings(keys_file=str(f)), environ={"KRONAXIS_API_KEYS": f" {KEY_A} ,"})
    assert len(store) == 2 and store.ids == [hashlib.sha256(k.encode()).hexdigest()[:8] for k in (KEY_A, KEY_B)]
    assert KEY_A.encode() not in b"".join(store.digests)  # digests only
    assert store.verify(KEY_A) == store.ids[0] and store.verify(KEY_B) == store.ids[1]
    assert store.verify(KEY_A + "x") is None and store.verify("") is None
    with pytest.raises(ServeConfigError, match="shorter than") as e:
        KeyStore.load(AuthSettings(), environ={"KRONAXIS_API_KEYS": "short-secret"})
    assert "short-secret" not in str(e.value)
    with pytest.raises(ServeConfigError, match="no such file"):
        KeyStore.load(AuthSettings(keys_file=str(tmp_path / "missing")), environ={})


def test_rate_limiter_token_bucket():
    rl = RateLimiter(requests_per_minute=60, burst=2)
    assert [rl.take("a", now=0.0) for _ in range(2)] == [0.0, 0.0]
    assert rl.take("a", now=0.0) == pytest.approx(1.0)  # 1 token/s: the next one in 1 s
    assert rl.take("b", now=0.0) == 0.0  # per key
    assert rl.take("a", now=0.5) == pytest.approx(0.5) and rl.take("a", now=1.0) == 0.0
    assert RateLimiter(None, 1).take("a") == 0.0


def test_authenticated_router_with_the_openai_sdk(caplog):
    import openai

    caplog.set_level(logging.DEBUG)
    small_app, small_seen = recording_upstream("served-small")
    env = {"KRONAXIS_API_KEYS": f"{KEY_A},{hash_key(KEY_B)}"}
    settings = {"auth": {"rate_limit": {"requests_per_minute": 1, "burst": 3}}}  # no refill within the test
    with LogTap() as tap, ServerThread(small_app) as s, \
            ServerThread(make_router(urls={"small": s.url}, settings=settings, host="0.0.0.0", environ=env)) as r:
        ids = [hashlib.sha256(k.encode()).hexdigest()[:8] for k in (KEY_A, KEY_B)]
        # no key / a wrong key / another scheme: 401, nothing routed or forwarded
        for headers in ({}, {"Authorization": "Bearer wrong-key-0000000000000"}, {"Authorization": f"Basic {KEY_A}"}):
            resp = chat(r.url, EASY, headers=headers)
            assert resp.status_code == 401 and resp.headers["www-authenticate"].startswith("Bearer"), resp.text
            assert resp.json()["error"]["type"] == "authentication_error"
        assert route(r.url, {"messages": EASY}).status_code == 401
        assert httpx.get(r.url + "/v1/models").status_code == 401
        assert httpx.get(r.url + "/metrics").status_code == 401
        assert httpx.get(r.url + "/healthz").json() == {"status": "ok"}  # open, without details
        assert "models" in httpx.get(r.url + "/healthz", headers={"Authorization": f"Bearer {KEY_A}"}).json()
        assert small_seen == []
        # the official SDK sends `Authorization: Bearer <api_key>`
        client = openai.OpenAI(base_url=r.url + "/v1", api_key=KEY_A, max_retries=0)
        out = client.chat.completions.create(model="kronaxis/auto", messages=EASY)
        assert out.choices[0].message.content == "echo: " + EASY[0]["content"]
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=r.url + "/v1", api_key="nope-" + KEY_A, max_retries=0).chat.completions.create(
                model="kronaxis/auto", messages=EASY)
        # burst 3 at 1/min: the key's 4th request at once is a 429 with Retry-After; the other key is unaffected
        statuses = [client.with_raw_response.chat.completions.create(model="kronaxis/auto", messages=EASY)
                    .http_response.status_code for _ in range(2)]
        assert statuses == [200, 200]
        with pytest.raises(openai.RateLimitError) as e:
            client.chat.completions.create(model="kronaxis/auto", messages=EASY)
        assert int(e.value.response.headers["retry-after"]) >= 1
        b = openai.OpenAI(base_url=r.url + "/v1", api_key=KEY_B, max_retries=0)
        assert b.chat.completions.create(model="kronaxis/auto", messages=HARD).choices  # stored as sha256 only
        m = httpx.get(r.url + "/metrics", headers={"Authorization": f"Bearer {KEY_B}"}).text
    assert f'kronaxis_key_requests_total{{key_id="{ids[0]}",status="200"}} 3.0' in m  # (healthz is not counted)
    assert f'kronaxis_key_requests_total{{key_id="{ids[0]}",status="429"}} 1.0' in m
    assert f'kronaxis_key_cost_usd_total{{key_id="{ids[0]}"}}' in m and f'key_id="{ids[1]}"' in m
    assert 'kronaxis_auth_refusals_total{reason="missing_key"}' in m
    assert 'kronaxis_auth_refusals_total{reason="invalid_key"}' in m
    for secret in (KEY_A, KEY_B, "wrong-key-0000000000000"):
        assert secret not in m and secret not in caplog.text and secret not in tap.text


# ---------------------------------------------------------------------------------------------------
# 9 (unit part). the governance scan runs off the event loop
# ---------------------------------------------------------------------------------------------------
class GateDetector(Detector):
    """Blocks its scan until released, like a slow scan of a large body; reports nothing."""

    def __init__(self) -> None:
        super().__init__("gate")
        self.entered, self.release = threading.Event(), threading.Event()
        self.threads: set[str] = set()

    def find(self, text: str) -> list[tuple[int, int]]:
        if "GATE" in text:
            self.threads.add(threading.current_thread().name)
            self.entered.set()
            self.release.wait(30)
        return []


def test_healthz_answers_while_a_governance_scan_is_running():
    gate = GateDetector()
    policy = GovernancePolicy([gate, *default_detectors()], endpoints={"small": "*", "big": "*"})
    app = create_app(FakeBundle(), upstreams_for({}), ServeSettings(), governance=policy, host="127.0.0.1")
    with ServerThread(app) as r:
        result: dict[str, Any] = {}
        t = threading.Thread(target=lambda: result.update(resp=route(r.url, {"messages": [
            {"role": "user", "content": "GATE " + "x" * 40_000}]})))
        t.start()
        try:
            assert gate.entered.wait(20), "the scan never started"
            health = httpx.get(r.url + "/healthz", timeout=10)  # the loop is free while the scan blocks
            assert health.status_code == 200 and not gate.release.is_set()
        finally:
            gate.release.set()
            t.join(30)
    assert result["resp"].status_code == 200
    assert gate.threads and all(n.startswith("kronaxis-scan") for n in gate.threads)

