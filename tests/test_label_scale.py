"""Labelling at scale: the OpenAI HTTP backend's load balancing over several endpoints (round_robin, least_loaded,
per-endpoint max_concurrency), a label run spread over two real servers, and the Ray backend on a local Ray
instance. Upstreams are in-process mock transports (exact, no timing) or real subprocess servers."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import httpx
import pandas as pd
import pytest

from kronaxis_lab.backends.base import GenRequest
from kronaxis_lab.backends.openai_http import BackendConfigError, OpenAIHTTPBackend
from kronaxis_lab.data.fleet import Fleet
from kronaxis_lab.grading.numeric import NumericMatchGrader
from kronaxis_lab.labeling.cache import CallCache
from kronaxis_lab.labeling.prompts import PromptBook
from kronaxis_lab.labeling.runner import LabelRunner, ModelPlan

try:
    from tests.servers.proc import ServerProc
except ImportError:  # tests/ itself on sys.path
    from servers.proc import ServerProc

FLEET = Fleet.from_config({"models": {"m": {"tier": 0, "price_in": 1.0, "price_out": 2.0}}})
BOOK = PromptBook({"gsm8k": {"user": "{text}", "completion": "Q: {text}\nA:", "max_tokens": 16}})


def chat(i) -> GenRequest:
    return GenRequest(messages=[{"role": "user", "content": f"q{i}"}], max_tokens=4, request_id=str(i))


def ok_body(request: httpx.Request) -> dict:
    return {"choices": [{"message": {"content": f"from {request.url.host}"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 2}}


class Upstreams:
    """A mock transport for several hosts: counts requests and the most in flight at once per host; `handlers`
    maps a host to an async function (request → Response) that may wait (e.g. on an event the test sets)."""

    def __init__(self, handlers):
        self.handlers, self.served, self.in_flight, self.peak = handlers, Counter(), Counter(), Counter()

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        host = request.url.host
        self.in_flight[host] += 1
        self.peak[host] = max(self.peak[host], self.in_flight[host])
        try:
            return await self.handlers[host](request)
        finally:
            self.in_flight[host] -= 1
            self.served[host] += 1


@pytest.fixture
def mock_upstreams(monkeypatch):
    def install(handlers) -> Upstreams:
        up = Upstreams(handlers)
        real = httpx.AsyncClient
        monkeypatch.setattr(httpx, "AsyncClient", lambda **kw: real(transport=httpx.MockTransport(up)))
        return up
    return install


def backend(hosts, **kw) -> OpenAIHTTPBackend:
    eps = [h if isinstance(h, dict) else {"name": h, "base_url": f"http://{h}/v1"} for h in hosts]
    return OpenAIHTTPBackend("m", eps, **{"backoff_base_s": 0.0, "backoff_max_s": 0.0, "seed": 0, **kw})


async def answer(request):
    return httpx.Response(200, json=ok_body(request))


def test_round_robin_spreads_requests_evenly_and_in_turn(mock_upstreams):
    up = mock_upstreams({h: answer for h in ("a", "b", "c")})
    b = backend(["a", "b", "c"], strategy="round_robin", max_concurrency=4)
    res = b.generate([chat(i) for i in range(30)])
    assert [r.meta["endpoint"] for r in res] == ["a", "b", "c"] * 10  # request k starts at endpoint k mod 3
    assert up.served == {"a": 10, "b": 10, "c": 10}
    assert {k: v["ok"] for k, v in b.counters["by_endpoint"].items()} == {"a": 10, "b": 10, "c": 10}
    assert b.counters["fallbacks"] == 0


def test_fallback_strategy_keeps_every_request_on_the_first_endpoint(mock_upstreams):
    up = mock_upstreams({h: answer for h in ("a", "b")})
    res = backend(["a", "b"], max_concurrency=4).generate([chat(i) for i in range(12)])  # the default strategy
    assert {r.meta["endpoint"] for r in res} == {"a"} and up.served == {"a": 12}


def test_least_loaded_keeps_each_endpoint_under_its_cap_and_feeds_the_faster_one(mock_upstreams):
    """`slow` holds its requests until `fast` has served all the others: with 2 slots each, least_loaded gives slow
    at most its first 2 and every later request to fast (whose slots keep freeing); none has more than 2 in flight."""
    n, cap = 20, 2
    release = asyncio.Event()
    up: Upstreams

    async def fast(request):
        if up.served["fast"] + 1 + up.in_flight["slow"] == n:  # every other request is held by slow: let it answer
            release.set()
        return httpx.Response(200, json=ok_body(request))

    async def slow(request):
        await release.wait()
        return httpx.Response(200, json=ok_body(request))

    up = mock_upstreams({"fast": fast, "slow": slow})
    eps = [{"name": h, "base_url": f"http://{h}/v1", "max_concurrency": cap} for h in ("fast", "slow")]
    b = backend(eps, strategy="least_loaded", max_concurrency=8)
    res = asyncio.run(asyncio.wait_for(b.agenerate([chat(i) for i in range(n)]), 30))
    assert all(r.error is None for r in res)
    assert 1 <= up.served["slow"] <= cap and up.served["fast"] == n - up.served["slow"]
    assert up.peak["fast"] <= cap and up.peak["slow"] <= cap
    by = b.counters["by_endpoint"]
    assert by["fast"]["ok"] == up.served["fast"] and by["slow"]["ok"] == up.served["slow"]


def test_a_failing_endpoint_hands_its_requests_to_the_others(mock_upstreams):
    async def down(request):
        return httpx.Response(500, json={"error": {"message": "down"}})

    up = mock_upstreams({"a": answer, "dead": down, "c": answer})
    b = backend(["a", "dead", "c"], strategy="round_robin", max_retries=0)
    res = b.generate([chat(i) for i in range(9)])
    assert all(r.error is None for r in res)
    assert up.served["dead"] == 3 and up.served["a"] + up.served["c"] == 9  # its 3 requests moved on
    assert b.counters["fallbacks"] == 3 and sum(r.meta["fallbacks"] for r in res) == 3
    assert {r.meta["endpoint"] for r in res} == {"a", "c"}


def test_endpoint_concurrency_cap_holds_under_round_robin(mock_upstreams):
    gate = asyncio.Event()

    async def held(request):
        await gate.wait()
        return httpx.Response(200, json=ok_body(request))

    up = mock_upstreams({"a": held, "b": held})
    eps = [{"name": h, "base_url": f"http://{h}/v1", "max_concurrency": 3} for h in ("a", "b")]
    b = backend(eps, strategy="round_robin", max_concurrency=64)

    async def run():
        task = asyncio.ensure_future(b.agenerate([chat(i) for i in range(20)]))
        for _ in range(200):  # let every request reach its endpoint (or its endpoint's queue)
            await asyncio.sleep(0)
        peak = dict(up.in_flight)
        gate.set()
        out = await task
        await b.aclose()
        return peak, out

    peak, res = asyncio.run(run())
    assert peak == {"a": 3, "b": 3} and all(r.error is None for r in res)


def test_bad_strategy_and_cap_are_config_errors():
    with pytest.raises(BackendConfigError, match="strategy must be one of fallback|round_robin|least_loaded"):
        backend(["a"], strategy="random")
    with pytest.raises(BackendConfigError, match=r"endpoints\[0\]: max_concurrency must be >= 1"):
        backend([{"base_url": "http://a/v1", "max_concurrency": 0}])


# -- a label run over real servers ------------------------------------------------------------------------------
def label_queries(n: int) -> pd.DataFrame:
    return pd.DataFrame([{"query_id": f"q{i}", "text": f"What is {i} + {i}?", "task": "gsm8k", "gold": f"#### {2 * i}",
                          "split": "test"} for i in range(n)])


def label(backend_obj, tmp: Path, concurrency: int = 16):
    with CallCache(tmp / "cache.sqlite") as cache:
        runner = LabelRunner(FLEET, [ModelPlan("m", backend_obj, identity={"t": str(tmp)})], BOOK,
                             {"gsm8k": NumericMatchGrader()}, cache, max_concurrency=concurrency, progress=False)
        return runner.run(label_queries(40))


@pytest.fixture(scope="module")
def echo_servers():
    procs = [ServerProc("tests.servers.faulty_server", ["--fail-rate", "0"]) for _ in range(2)]
    try:
        for p in procs:
            p.wait_ready()
        yield procs
    finally:
        for p in procs:
            p.stop()


def test_a_label_run_over_two_endpoints_gives_the_same_outcomes_as_one(echo_servers, tmp_path):
    one = [{"name": "s0", "base_url": echo_servers[0].url, "model": "echo"}]
    two = one + [{"name": "s1", "base_url": echo_servers[1].url, "model": "echo"}]
    before = [p.stats().get("ok", 0) for p in echo_servers]
    r1 = label(OpenAIHTTPBackend("m", one, max_concurrency=16), tmp_path / "one")
    r2 = label(OpenAIHTTPBackend("m", [dict(e, max_concurrency=8) for e in two], strategy="least_loaded",
                                 max_concurrency=16), tmp_path / "two")
    cols = ["query_id", "response", "input_tokens", "output_tokens", "score", "error"]
    pd.testing.assert_frame_equal(r1.outcomes[cols], r2.outcomes[cols])
    assert r2.outcomes["error"].isna().all() and r2.outcomes["response"].str.startswith("echo: ").all()
    by = r2.stats["backend_counters"]["m"]["by_endpoint"]
    assert by["s0"]["ok"] + by["s1"]["ok"] == 40 and by["s0"]["ok"] > 0 and by["s1"]["ok"] > 0
    after = [p.stats().get("ok", 0) for p in echo_servers]
    assert after[1] - before[1] == by["s1"]["ok"]  # the second server really answered its share


# -- Ray -----------------------------------------------------------------------------------------------------------
def test_runner_ray_wraps_each_backend_and_keeps_its_cache_identity(tmp_path):
    """kronaxis-label runner.ray={...}: every model's backend config runs inside Ray replicas; the plans' cache
    identities are those of the plain run (so either resumes the other). Building the plan starts nothing."""
    ray = pytest.importorskip("ray")
    from omegaconf import OmegaConf

    from kronaxis_lab.labeling.ray_runner import RayBackend
    from kronaxis_lab.pipelines.label import make_plans
    from tests.conftest import compose

    def plans(*over):
        cfg = compose("label", ["fleet=local_cpu", *over], tmp_path)
        fleet = Fleet.from_config({k: v for k, v in OmegaConf.to_container(cfg.fleet, resolve=True).items()
                                   if k in ("models", "source", "premium")})
        return cfg, make_plans(cfg, fleet)

    cfg, plain = plans()
    _, wrapped = plans("runner.ray={num_replicas: 3, num_gpus: 0}")
    assert [p.identity for p in wrapped] == [p.identity for p in plain] and len(plain) == 2
    b = wrapped[0].backend()
    assert isinstance(b, RayBackend) and b.num_replicas == 3 and not ray.is_initialized()
    node = OmegaConf.to_container(cfg.fleet.backends[plain[0].name], resolve=True)
    assert b.node == node and b.batch_size == 3 * node["batch_size"]  # one shard per replica in a runner chunk
    b.close()


@pytest.mark.slow
def test_ray_backend_spreads_a_label_run_over_local_replicas(tmp_path):
    """Two Ray replicas of the replay backend on a local Ray instance: the same outcomes as the backend alone,
    shards on both replicas (two processes)."""
    pytest.importorskip("ray")
    from kronaxis_lab.backends.replay import ReplayBackend
    from kronaxis_lab.labeling.ray_runner import RayBackend

    q = label_queries(40)
    rec = pd.DataFrame({"query_id": q["query_id"], "model": "m", "response": [f"#### {2 * i}" for i in range(40)],
                        "input_tokens": 5, "output_tokens": 3, "latency_s": 0.1})
    rec.loc[7, "response"] = "#### -1"  # one wrong recorded answer
    rec.to_parquet(tmp_path / "rec.parquet")
    node = {"_target_": "kronaxis_lab.backends.replay.ReplayBackend", "outcomes": str(tmp_path / "rec.parquet")}
    ray_backend = RayBackend("m", node, num_replicas=2, num_cpus=1, shard_size=4,
                             init={"num_cpus": 2, "include_dashboard": False, "log_to_driver": False})
    try:
        pids = {info["pid"] for info in ray_backend.replica_info()}
        assert len(pids) == 2 and ray_backend.batch_size == 8  # the runner's chunk = one shard per replica
        via_ray = label(ray_backend, tmp_path / "ray", concurrency=4)
    finally:
        ray_backend.close()  # idempotent: the runner closed it already
    direct = label(ReplayBackend("m", tmp_path / "rec.parquet"), tmp_path / "direct")
    cols = ["query_id", "response", "input_tokens", "output_tokens", "score", "correct", "error"]
    pd.testing.assert_frame_equal(via_ray.outcomes[cols], direct.outcomes[cols])
    assert via_ray.outcomes["correct"].sum() == 39
    assert sum(ray_backend.calls_per_replica) == 10 and min(ray_backend.calls_per_replica) >= 1  # 40 / 4 shards

    import ray
    assert not ray.is_initialized()  # the backend started Ray, so it stopped it
