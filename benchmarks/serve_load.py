"""The router under a mixed, hostile load: a real `kronaxis-serve` process with authentication on, two real
upstream processes, N requests from C keep-alive connections, /healthz probed every 50 ms from another process.

    .venv/bin/python benchmarks/serve_load.py [--bundle <dir>] [--requests 10000] [--concurrency 64]
        [--max-seconds 900] [--detectors default] [--write benchmarks/serve_load.md]

Without `--bundle` the e2e test's bundle is built first (`tests/test_serve_e2e.py::build_bundle`: a 1-layer
MiniLM tier predictor over two models, `smollm2-a` (tier 0, data_classes ["*"]) and `smollm2-b` (tier 1,
data_classes [] — may receive no sensitive data)). Each model's upstream is `--upstream` mode of this script: an
OpenAI-compatible server that appends every body it receives to a file; smollm2-b's fails every 20th request
with a 500 whose error body quotes the request (the router then logs the failure and falls back).

Request mix (seeded, cycled to N): valid chat / route / route-batch bodies; *malformed* ones (NaN, Infinity,
1e999, lone surrogates in values and keys, wrong types, out-of-range and non-ASCII policy parameters, unknown
roles, broken JSON); *sensitive* ones (planted card numbers, SSNs, e-mail addresses, IBANs, API keys, canary
words) forced to `smollm2-b`; *pathological* ones (ReDoS-shaped: "key"·10000, "password="·3000, "a@"·10000,
long digit runs, 10k-deep nesting, 2000 messages, a 900 KB text, zero-width-joined digits); requests without or
with a wrong router API key. Bounded by count and by `--max-seconds`; every request has a 120 s timeout.

Reported: status counts per kind, 5xx count, unexpected statuses; *leaks*: planted values found in any router
log file, in /metrics, or (for sensitive bodies) in what smollm2-b's upstream received; /healthz p50 / p99 /
max and failures; machine, command, load average.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import platform
import random
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request  # the --upstream server; module level: FastAPI resolves the annotations
from fastapi.responses import JSONResponse

ROOT = Path(__file__).resolve().parents[1]
API_KEY = "bench-router-key-6c1f0e9d8b7a5f4e3d2c"
WRONG_KEY = "bench-wrong-key-000000000000000000"
CANARY = "canary-bench-5d2e9a"
PLANTED = {  # value → how it is written into a request; the default detectors catch each of these forms
    "4111 1111 1111 1111": "card", "5500-0000-0000-0004": "card", "378282246310005": "card",
    "078-05-1120": "ssn", "219-09-9999": "ssn",
    "dana.whitfield@example.com": "email", "ops+billing@acme-corp.co.uk": "email",
    "GB82 WEST 1234 5698 7654 32": "iban", "DE89370400440532013000": "iban",
    "sk-live-4fT9qLw2Zx8RmN3vBp7Kd1Hs": "secret", "AKIAIOSFODNN7EXAMPLE": "secret",
}
EXTERNAL, INTERNAL = "smollm2-b", "smollm2-a"


# --------------------------------------------------------------------------------------------------
# --upstream: an OpenAI-compatible server that records what it receives
# --------------------------------------------------------------------------------------------------
def serve_upstream(port: int, name: str, record: str, fail_every: int) -> None:
    import uvicorn

    app = FastAPI()
    out = open(record, "ab", buffering=0)
    count = {"n": 0}

    async def chat(request: Request) -> Any:
        raw = await request.body()
        out.write(raw.replace(b"\n", b" ") + b"\n")
        count["n"] += 1
        if fail_every and count["n"] % fail_every == 0:
            return JSONResponse({"error": {"message": f"upstream overloaded while serving {raw.decode()}",
                                           "type": "server_error", "code": "overloaded"}}, status_code=500)
        return {"id": f"chatcmpl-{count['n']}", "object": "chat.completion", "created": 0, "model": name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 20, "completion_tokens": 1, "total_tokens": 21}}

    app.add_api_route("/v1/chat/completions", chat, methods=["POST"])
    app.add_api_route("/health", lambda: {"status": "ok"}, methods=["GET"])
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


# --------------------------------------------------------------------------------------------------
# processes
# --------------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(proc: subprocess.Popen, port: int, path: str, log: Path, headers: str = "") -> None:
    deadline = time.time() + 240
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"process exited with {proc.returncode}; see {log}:\n{log.read_text()[-3000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n{headers}Connection: close\r\n\r\n".encode())
                if s.recv(64).startswith(b"HTTP/1.1 200"):
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise SystemExit(f"not healthy after 240 s; see {log}")


def start(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True,
                            env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE", **(env or {})})


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --------------------------------------------------------------------------------------------------
# the request mix
# --------------------------------------------------------------------------------------------------
def _chat(content: Any, model: str = "kronaxis/auto", **extra: Any) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": content}], **extra}


VALID_TEXTS = ["What is the capital of Italy?", "How do you say hello in Vietnamese?",
               "Prove rigorously that the Hadamard conjecture implies a bound on prime gaps, with every lemma.",
               "Derive step by step the closed-form solution of the Poincare differential equation.",
               "Name a famous dish from Canada.", "Write a formal proof, using measure theory, that the Lebesgue "
               "integral converges for every parameter."]


def request_mix(seed: int = 0) -> list[tuple[str, str, bytes, bool]]:
    """(kind, path, raw body, send the key) tuples; the load cycles through them in a seeded order."""
    rng = random.Random(seed)
    out: list[tuple[str, str, bytes, bool]] = []
    j = json.dumps

    def add(kind: str, body: Any, path: str = "/v1/chat/completions", key: bool = True, n: int = 1) -> None:
        raw = body if isinstance(body, bytes) else j(body).encode()
        out.extend([(kind, path, raw, key)] * n)

    for t in VALID_TEXTS:  # valid: ~55 %
        add("valid", _chat(t, max_tokens=8, temperature=0), n=12)
        add("valid", _chat(t, model="kronaxis/threshold:0.3"), n=3)
        add("valid", {"messages": [{"role": "user", "content": t}]}, path="/v1/route", n=4)
    add("valid", {"requests": [{"messages": [{"role": "user", "content": t}]} for t in VALID_TEXTS]},
        path="/v1/route", n=6)
    for value, kind in PLANTED.items():  # sensitive: ~17 %, forced to the external model
        for tmpl in ("Please check {v} for me.", "{c}: my {k} is {v}", "summarise this thread; reply to the {k} {v}"):
            add("sensitive", _chat(tmpl.format(v=value, k=kind, c=CANARY), model=EXTERNAL, user=CANARY), n=2)
        add("sensitive", {"model": EXTERNAL, "messages": [{"role": "system", "content": f"{kind} on file: {value}"},
                                                          {"role": "user", "content": "hi, what is 2+2?"}]})
    malformed = [  # ~17 %
        b'{"model":"kronaxis/auto","messages":[{"role":"user","content":"\\ud800"}]}',
        b'{"model":"kronaxis/auto","messages":[{"role":"user","content":"hi","\\udfff":1}]}',
        b'{"messages":[{"role":"user","content":"a\xed\xa0\x80b"}]}',
        b'{"model":"kronaxis/auto","messages":[{"role":"user","content":"hi"}],"temperature":NaN}',
        b'{"model":"kronaxis/auto","messages":[{"role":"user","content":"hi"}],"top_p":Infinity}',
        b'{"model":"kronaxis/auto","messages":[{"role":"user","content":"hi"}],"temperature":1e999}',
        b'{"model":"kronaxis/wtp:-inf","messages":[{"role":"user","content":"hi"}]}',
        b'{"model":"kronaxis/threshold:1_0","messages":[{"role":"user","content":"hi"}]}',
        b'{"model":"kronaxis/threshold:\\u0661","messages":[{"role":"user","content":"hi"}]}',
        b'{"model":"kronaxis/auto","messages":[{"role":"user","content":"hi"}],"temperature":"hot"}',
        b'{"model":"kronaxis/auto","messages":[{"role":"user","content":"hi"}],"max_tokens":-1}',
        b'{"model":"kronaxis/auto","messages":[{"role":"wizard","content":"hi"}]}',
        b'{"model":"kronaxis/auto","messages":[{"role":"user","content":42}]}',
        b'{"model":"kronaxis/auto","messages":"hello"}', b'{"model": 7, "messages": []}', b"{not json", b"[1,2]",
    ]
    for raw in malformed:
        add("malformed", raw, n=6)
        if b"temperature" not in raw and b"max_tokens" not in raw or b"NaN" in raw or b"e999" in raw:
            add("malformed", raw, path="/v1/route", n=2)  # sampling parameters mean nothing to a decision
    pathological = [  # ~6 %: ReDoS-shaped and oversized
        _chat("key" * 10000), _chat("password=" * 3000), _chat("a@" * 10000), _chat("1 " * 15000),
        _chat("4" + "\u200d4" * 5000), _chat("x" * 900_000), _chat("token: " + "A1b2" * 5000),
        {"model": "kronaxis/auto", "messages": [{"role": "user", "content": "hi"}] * 2000},
        b'{"messages":' + b"[" * 10000 + b"]" * 10000 + b"}",
    ]
    for body in pathological:
        add("pathological", body, n=4)
    for _ in range(6):  # auth: ~4 %
        add("no_key", _chat("What is 2+2?"), key=False)
        add("wrong_key", _chat("What is 2+2?"), key=False)
    rng.shuffle(out)
    return out


EXPECTED = {"valid": {200}, "sensitive": {200}, "malformed": {400}, "pathological": {200, 400, 413},
            "no_key": {401}, "wrong_key": {401}}


# --------------------------------------------------------------------------------------------------
# load generator (minimal HTTP/1.1 over asyncio streams) and the /healthz prober
# --------------------------------------------------------------------------------------------------
_CL = re.compile(rb"content-length:\s*(\d+)", re.I)


async def _worker(port: int, mix: list, counter: dict, n: int, deadline: float, out: list) -> None:
    conn = None
    while counter["next"] < n and time.perf_counter() < deadline:
        i = counter["next"]
        counter["next"] += 1
        kind, path, raw, with_key = mix[i % len(mix)]
        auth = f"Authorization: Bearer {API_KEY}\r\n" if with_key else (
            f"Authorization: Bearer {WRONG_KEY}\r\n" if kind == "wrong_key" else "")
        req = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n{auth}"
               f"Content-Length: {len(raw)}\r\n\r\n").encode() + raw
        t0 = time.perf_counter()
        try:
            if conn is None:
                conn = await asyncio.open_connection("127.0.0.1", port, limit=2**22)
            reader, writer = conn
            writer.write(req)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 120)
            m = _CL.search(head)
            payload = await asyncio.wait_for(reader.readexactly(int(m.group(1))), 120) if m else b""
            status = int(head.split(b" ", 2)[1])
            model = re.search(rb"x-kronaxis-model: ([^\r]*)", head, re.I)
            out.append((kind, status, time.perf_counter() - t0, model.group(1).decode() if model else None,
                        payload[:200] if status >= 500 else b""))
            if b"connection: close" in head.lower():
                writer.close()
                conn = None
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError) as e:
            out.append((kind, -1, time.perf_counter() - t0, None, f"{type(e).__name__}".encode()))
            if conn is not None:
                conn[1].close()
            conn = None
    if conn is not None:
        conn[1].close()


async def load(port: int, mix: list, n: int, concurrency: int, max_seconds: float) -> tuple[list, float]:
    counter, out = {"next": 0}, []
    t0 = time.perf_counter()
    await asyncio.gather(*(_worker(port, mix, counter, n, t0 + max_seconds, out) for _ in range(concurrency)))
    return out, time.perf_counter() - t0


def probe(port: int, interval_s: float, stop_evt: Any, results: Any) -> None:
    """Runs in its own process: GET /healthz every `interval_s` on a keep-alive connection (5 s timeout)."""
    import http.client

    lat, failures = [], 0
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    next_t = time.perf_counter()
    while not stop_evt.is_set():
        t0 = time.perf_counter()
        try:
            conn.request("GET", "/healthz")
            r = conn.getresponse()
            r.read()
            if r.status == 200:
                lat.append(time.perf_counter() - t0)
            else:
                failures += 1
        except (OSError, http.client.HTTPException):
            failures += 1
            lat.append(time.perf_counter() - t0)  # a timeout counts with its full wait
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        next_t += interval_s
        time.sleep(max(0.0, next_t - time.perf_counter()))
    results.put((lat, failures))


# --------------------------------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------------------------------
def get(port: int, path: str) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_KEY}\r\nConnection: close\r\n\r\n"
                  .encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return data.split(b"\r\n\r\n", 1)[1].decode("utf-8", "replace")


def governance_config(detectors: str, bundle: Path, conf: Path) -> list[str]:
    """Overrides selecting the detectors: `default` = the bundle's router.json governance (the default detectors);
    otherwise configs/governance/<detectors>.yaml with the bundle fleet's data_classes as endpoints."""
    if detectors == "default":
        return []
    models = json.loads((bundle / "router.json").read_text()).get("fleet", {}).get("models", {})
    endpoints = {m: ("*" if "*" in (spec.get("data_classes") or []) else list(spec.get("data_classes") or []))
                 for m, spec in models.items() if isinstance(spec, dict)} or {INTERNAL: "*", EXTERNAL: []}
    (conf / "governance").mkdir(parents=True, exist_ok=True)
    (conf / "governance" / "bench.yaml").write_text(json.dumps({"defaults": [detectors, "_self_"],
                                                                "endpoints": endpoints}))
    return ["governance=bench"]


def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(args.workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    built = work / "bundle-build" / "export" / "bundle"
    if args.bundle:
        bundle = Path(args.bundle).resolve()
    elif (built / "router.json").is_file():  # built by an earlier run
        bundle = built
    else:
        sys.path.insert(0, str(ROOT))
        from tests.test_serve_e2e import build_bundle

        bundle = build_bundle(work / "bundle-build")
    procs: list[subprocess.Popen] = []
    conf = work / "conf"
    (conf / "upstreams").mkdir(parents=True, exist_ok=True)
    records = {INTERNAL: work / "upstream-a.jsonl", EXTERNAL: work / "upstream-b.jsonl"}
    ports = {}
    try:
        for model, fail_every in ((INTERNAL, 0), (EXTERNAL, 20)):
            records[model].write_bytes(b"")
            ports[model] = free_port()
            log = work / f"upstream-{model}.log"
            procs.append(start([sys.executable, str(Path(__file__).resolve()), "--upstream", "--port",
                                str(ports[model]), "--name", model, "--record", str(records[model]),
                                "--fail-every", str(fail_every)], log))
            wait_healthy(procs[-1], ports[model], "/health", log)
        (conf / "upstreams" / "bench.yaml").write_text(json.dumps({
            "_target_": "kronaxis_lab.serving.upstreams.Upstreams",
            "models": {m: {"endpoints": [{"name": f"up-{m}", "base_url": f"http://127.0.0.1:{p}/v1",
                                          "model": f"{m}-served"}]} for m, p in ports.items()},
            "client": {"mode": "chat", "timeout_s": 60, "max_retries": 1, "backoff_base_s": 0.05,
                       "max_concurrency": 16}}))
        port = free_port()
        router_dir = work / "router"
        cmd = [str(Path(sys.executable).with_name("kronaxis-serve")), f"bundle={bundle}", "server.host=127.0.0.1",
               f"server.port={port}", f"hydra.run.dir={router_dir}", f"hydra.searchpath=[file://{conf}]",
               "upstreams=bench", "settings.auth.enabled=true", "settings.auth.rate_limit.requests_per_minute=1e9",
               "settings.auth.rate_limit.burst=100000", *governance_config(args.detectors, bundle, conf),
               *args.override]
        router_log = work / "router.log"
        procs.append(start(cmd, router_log, env={"KRONAXIS_API_KEYS": API_KEY}))
        wait_healthy(procs[-1], port, "/healthz", router_log)
        mix = [m for m in request_mix(args.seed) if not args.kinds or m[0] in args.kinds.split(",")]
        load_before = os.getloadavg()
        stop_evt, results = mp.Event(), mp.Queue()  # first: /healthz on the idle router (the machine's own noise)
        prober = mp.Process(target=probe, args=(port, args.probe_ms / 1000, stop_evt, results), daemon=True)
        prober.start()
        time.sleep(args.baseline_seconds)
        stop_evt.set()
        idle_lat, _ = results.get(timeout=30)
        prober.join(10)
        stop_evt, results = mp.Event(), mp.Queue()
        prober = mp.Process(target=probe, args=(port, args.probe_ms / 1000, stop_evt, results), daemon=True)
        prober.start()
        out, wall = asyncio.run(load(port, mix, args.requests, args.concurrency, args.max_seconds))
        stop_evt.set()
        health_lat, health_fail = results.get(timeout=30)
        prober.join(10)
        load_after = os.getloadavg()
        metrics = get(port, "/metrics")
    finally:
        for p in reversed(procs):
            stop(p)
    r = summarise(args, cmd, out, wall, health_lat, health_fail, metrics, router_dir, router_log, records,
                  load_before, load_after, bundle)
    idle = np.array(idle_lat) * 1000
    r["healthz_idle"] = {"probes": len(idle), "p50_ms": float(np.percentile(idle, 50)),
                         "p99_ms": float(np.percentile(idle, 99)), "max_ms": float(idle.max())}
    return r


def summarise(args, cmd, out, wall, health_lat, health_fail, metrics, router_dir, router_log, records,
              load_before, load_after, bundle) -> dict[str, Any]:
    by_kind: dict[str, dict[int, int]] = {}
    for kind, status, *_ in out:
        by_kind.setdefault(kind, {}).setdefault(status, 0)
        by_kind[kind][status] += 1
    five = sum(1 for _, s, *_ in out if s >= 500)
    unexpected = sum(1 for k, s, *_ in out if s not in EXPECTED[k])
    sensitive_external = sum(1 for k, s, _, m, _ in out if k == "sensitive" and m == EXTERNAL)
    logs = router_log.read_text(errors="replace") + "".join(
        p.read_text(errors="replace") for p in router_dir.rglob("*.log"))
    planted = [*PLANTED, CANARY, API_KEY, WRONG_KEY]
    leak_logs = [v for v in planted if v in logs]
    leak_metrics = [v for v in planted if v in metrics]
    external = records[EXTERNAL].read_bytes().decode("utf-8", "replace")
    # what the external model received, decoded as JSON, so escapes cannot hide a value
    ext_text = "\n".join(json.dumps(json.loads(ln), ensure_ascii=False) for ln in external.splitlines() if ln)
    leak_external = [v for v in [*PLANTED] if v in ext_text]
    lat = np.array(health_lat) * 1000
    machine = f"{platform.machine()} {_cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    return {
        "requests": len(out), "concurrency": args.concurrency, "wall_s": wall, "req_per_s": len(out) / wall if wall else 0.0,
        "by_kind": by_kind, "five_xx": five, "unexpected": unexpected,
        "five_xx_examples": [p.decode("utf-8", "replace") for _, s, _, _, p in out if s >= 500][:3],
        "sensitive_answered_by_external": sensitive_external,
        "leaks": len(leak_logs) + len(leak_metrics) + len(leak_external),
        "leak_detail": {"router_logs": leak_logs, "metrics": leak_metrics, "external_upstream": leak_external},
        "healthz": {"probes": len(lat), "failures": health_fail,
                    "p50_ms": float(np.percentile(lat, 50)) if len(lat) else None,
                    "p99_ms": float(np.percentile(lat, 99)) if len(lat) else None,
                    "max_ms": float(lat.max()) if len(lat) else None},
        "latency_ms": {k: float(np.percentile([t * 1000 for kk, s, t, *_ in out if kk == k], 50))
                       for k in EXPECTED if any(kk == k for kk, *_ in out)},
        "classifier_failures": _metric(metrics, "kronaxis_classifier_failures_total"),
        "machine": machine, "load_before": load_before, "load_after": load_after,
        "command": " ".join(sys.argv), "router_command": " ".join(str(c) for c in cmd), "bundle": str(bundle),
        "detectors": args.detectors,
    }


def _metric(text: str, name: str) -> float | None:
    m = re.search(rf"^{name} (\S+)$", text, re.M)
    return float(m.group(1)) if m else None


def _cpu_model() -> str:
    try:
        line = next(ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("model name"))
        return line.split(":", 1)[1].strip()
    except (OSError, StopIteration):
        return platform.processor()


def markdown(r: dict[str, Any]) -> str:
    h = r["healthz"]
    kinds = "\n".join(f"| {k} | {sum(v.values())} | {', '.join(f'{s}: {n}' for s, n in sorted(v.items()))} | "
                      f"{', '.join(str(s) for s in sorted(EXPECTED[k]))} | {r['latency_ms'].get(k, 0):.1f} |"
                      for k, v in sorted(r["by_kind"].items()))
    ok = r["five_xx"] == 0 and r["leaks"] == 0 and h["p99_ms"] is not None and h["p99_ms"] < 100 \
        and h["failures"] == 0
    return f"""# Router under a mixed, hostile load (`benchmarks/serve_load.py`)

**Goal: 0 5xx, 0 leaks, /healthz p99 < 100 ms throughout** — {'met' if ok else '**not met**'} in this run.

- machine: {r['machine']}; 1-min load average {r['load_before'][0]:.2f} before, {r['load_after'][0]:.2f} after
- command: `{r['command']}`
- router: `{r['router_command'].replace(str(ROOT) + '/', '')}`
- detectors: {r['detectors']}

| | value |
|---|---|
| requests (concurrency) | {r['requests']:,} ({r['concurrency']}) in {r['wall_s']:.1f} s ({r['req_per_s']:.0f}/s) |
| 5xx | **{r['five_xx']}** |
| statuses outside the expected set | {r['unexpected']} |
| leaks (router logs + /metrics + external upstream) | **{r['leaks']}** {r['leak_detail']} |
| sensitive bodies answered by the external model | {r['sensitive_answered_by_external']} |
| classifier failures (fail-open) | {r['classifier_failures']} |
| /healthz probes (every 50 ms) | {h['probes']}, failures {h['failures']} |
| /healthz p50 / p99 / max | {h['p50_ms']:.1f} / **{h['p99_ms']:.1f}** / {h['max_ms']:.1f} ms |
| /healthz on the idle router first ({r['healthz_idle']['probes']} probes): p50 / p99 / max | \
{r['healthz_idle']['p50_ms']:.1f} / {r['healthz_idle']['p99_ms']:.1f} / {r['healthz_idle']['max_ms']:.1f} ms |

| kind | requests | statuses | expected | p50 ms |
|---|---|---|---|---|
{kinds}
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle")
    ap.add_argument("--requests", type=int, default=10_000)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--max-seconds", type=float, default=900.0)
    ap.add_argument("--probe-ms", type=float, default=50.0)
    ap.add_argument("--baseline-seconds", type=float, default=10.0, help="/healthz probed on the idle router first")
    ap.add_argument("--detectors", choices=["default"], default="default")  # configs/governance/<name>.yaml
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--kinds", help=f"only these request kinds (comma-separated) of {sorted(EXPECTED)}")
    ap.add_argument("--workdir", default="outputs/serve_load")
    ap.add_argument("--override", action="append", default=[], help="extra kronaxis-serve override (repeatable)")
    ap.add_argument("--write", help="write the markdown report here")
    ap.add_argument("--upstream", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--name", help=argparse.SUPPRESS)
    ap.add_argument("--record", help=argparse.SUPPRESS)
    ap.add_argument("--fail-every", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.upstream:
        serve_upstream(args.port, args.name, args.record, args.fail_every)
        return
    r = run(args)
    print(json.dumps({k: v for k, v in r.items() if k != "by_kind"}, indent=1, default=str))
    print(json.dumps(r["by_kind"]))
    if args.write:
        Path(args.write).write_text(markdown(r))


if __name__ == "__main__":
    main()
