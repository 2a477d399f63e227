"""Gateway overhead: what kronaxis-serve and the LiteLLM proxy add over calling the upstream directly.

    .venv/bin/python benchmarks/gateway_overhead.py --bundle <bundle dir> [--latency-requests 300]
        [--requests 3000] [--concurrency 64] [--max-seconds 20] [--litellm-bin outputs/venv-litellm/bin/litellm]
        [--no-litellm] [--workers 1] [--json out.json] [--write benchmarks/gateway_overhead.md]

One local upstream (`--upstream` mode of this script: a minimal OpenAI-compatible HTTP/1.1 server on asyncio that
answers every chat completion at once with a fixed two-token answer, so what is measured is the gateways, not a
model) is started as its own process; every gateway forwards to it. Targets, each a real process on 127.0.0.1:

- **direct** — the client calls the upstream itself;
- **kronaxis forward-only** — `kronaxis-serve` with `model` = a fleet model name (no classifier: the passthrough
  path; auth, governance scan, upstream call still run);
- **kronaxis classify+forward** — `model: kronaxis/auto` (classifier + policy + governance, then the call);
- **LiteLLM proxy** — `litellm --config` with one `openai/` model on the same upstream and a master key
  (sent as `Authorization: Bearer`), telemetry and spend logs off, no database.

Both gateways run with client auth on (kronaxis: `settings.auth.enabled=true`, rate limit lifted). Two phases:
latency at concurrency 1 (`--latency-requests` per target, targets taking turns in blocks of 50 so load changes
hit all alike): p50/p99 and the p50/p99 each adds over direct; then throughput at `--concurrency` keep-alive
connections (`--requests`, stopped after `--max-seconds`): requests/s, p50/p99, errors, and the CPU time the
gateway's process session spent per request (from /proc: hardly affected by other jobs on a shared machine).
`--workers W` runs each gateway as W processes on its port (kronaxis `server.workers=W`, LiteLLM
`--num_workers W`), the same for both.
Goals (issue "Ship the router"): classify+forward ≥ 3× LiteLLM's requests/s; forward-only adds ≤ 10 ms p50.

LiteLLM is a benchmark-only dependency kept out of the project venv (its pins downgrade packages the project
uses): `python3.11 -m venv outputs/venv-litellm && outputs/venv-litellm/bin/pip install 'litellm[proxy]==1.108.7'`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from bench_common import machine, write_block
from route_throughput import free_port, load, load_queries, session_cpu_seconds, stop

ROOT = Path(__file__).resolve().parents[1]
ROUTER_KEY = "bench-router-key-7d2e1f0a9b8c6d5e4f3a"
LITELLM_KEY = "sk-bench-litellm-master-3c4d5e6f7a8b"
LITELLM_MODEL = "bench-model"
DEFAULT_LITELLM = ROOT / "outputs" / "venv-litellm" / "bin" / "litellm"
MARK = "gateway_overhead"


# -- the upstream: minimal OpenAI-compatible HTTP/1.1 on asyncio --------------------------------------------
_CL = re.compile(rb"content-length:\s*(\d+)", re.I)
_CHUNKED = re.compile(rb"transfer-encoding:\s*chunked", re.I)


async def _read_body(reader: asyncio.StreamReader, head: bytes) -> bytes:
    m = _CL.search(head)
    if m:
        return await reader.readexactly(int(m.group(1)))
    if not _CHUNKED.search(head):
        return b""
    body = b""
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        chunk = await reader.readexactly(size + 2)
        if size == 0:
            return body
        body += chunk[:-2]


def upstream_answer(method: bytes, path: bytes, body: bytes, n: int) -> tuple[int, bytes]:
    path = path.split(b"?", 1)[0]
    if method == b"GET" and path in (b"/health", b"/v1/health"):
        return 200, b'{"status":"ok"}'
    if method == b"GET" and path == b"/v1/models":
        return 200, b'{"object":"list","data":[{"id":"bench-served","object":"model","owned_by":"bench"}]}'
    if method == b"POST" and path == b"/v1/chat/completions":
        try:
            req = json.loads(body)
        except ValueError:
            return 400, b'{"error":{"message":"body is not JSON","type":"invalid_request_error"}}'
        if not isinstance(req, dict) or not isinstance(req.get("messages"), list) or req.get("stream"):
            return 400, b'{"error":{"message":"need messages, no stream","type":"invalid_request_error"}}'
        return 200, json.dumps({
            "id": f"chatcmpl-{n}", "object": "chat.completion", "created": int(time.time()),
            "model": str(req.get("model", "bench-served")),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok ok"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 20, "completion_tokens": 2, "total_tokens": 22}}).encode()
    return 404, b'{"error":{"message":"not found","type":"not_found"}}'


async def _client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, count: list[int]) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            method, path, _ = head.split(b"\r\n", 1)[0].split(b" ", 2)
            low = head.lower()
            if b"expect: 100-continue" in low:
                writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            body = await _read_body(reader, head)
            count[0] += 1
            status, payload = upstream_answer(method, path, body, count[0])
            close = b"connection: close" in low
            writer.write(b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n"
                         % (status, b"OK" if status == 200 else b"Error", len(payload),
                            b"Connection: close\r\n" if close else b"") + payload)
            await writer.drain()
            if close:
                break
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, ValueError):
        pass
    finally:
        writer.close()


def serve_upstream(port: int) -> None:
    async def main() -> None:
        count = [0]
        server = await asyncio.start_server(lambda r, w: _client(r, w, count), "127.0.0.1", port, backlog=1024,
                                            limit=1 << 22)
        async with server:
            await server.serve_forever()

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass


# -- processes ---------------------------------------------------------------------------------------------
def start_process(cmd: list[str], log: Path, port: int, health: str, env: dict[str, str] | None = None,
                  timeout_s: float = 240) -> subprocess.Popen:
    proc = subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True,
                            env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE", **(env or {})})
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{cmd[0]} exited with {proc.returncode}; see {log}:\n{log.read_text()[-3000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                s.sendall(f"GET {health} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
                if s.recv(64).startswith(b"HTTP/1.1 200"):
                    return proc
        except OSError:
            pass
        time.sleep(0.3)
    stop(proc)
    raise SystemExit(f"{cmd[0]} not healthy after {timeout_s:.0f} s; see {log}:\n{log.read_text()[-3000:]}")


def fleet_names(bundle: Path) -> list[str]:
    return [str(n) for n in json.loads((bundle / "router.json").read_text())["label_order"]]


def start_kronaxis(bundle: Path, upstream_port: int, work: Path, overrides: list[str]) -> tuple[subprocess.Popen, int]:
    conf = work / "conf"
    (conf / "upstreams").mkdir(parents=True, exist_ok=True)
    (conf / "upstreams" / "bench.yaml").write_text(json.dumps({
        "_target_": "kronaxis_lab.serving.upstreams.Upstreams",
        "models": {m: {"endpoints": [{"name": "bench-upstream", "base_url": f"http://127.0.0.1:{upstream_port}/v1",
                                      "model": "bench-served"}]} for m in fleet_names(bundle)},
        "client": {"mode": "chat", "timeout_s": 60, "max_retries": 0, "max_concurrency": 256}}))
    port = free_port()
    exe = Path(sys.executable).with_name("kronaxis-serve")
    cmd = [str(exe) if exe.exists() else "kronaxis-serve", f"bundle={bundle}", "server.host=127.0.0.1",
           f"server.port={port}", "server.log_level=warning", f"hydra.run.dir={work / 'kronaxis'}",
           f"hydra.searchpath=[file://{conf}]", "upstreams=bench", "settings.auth.enabled=true",
           "settings.auth.rate_limit.requests_per_minute=1e9", "settings.auth.rate_limit.burst=1000000", *overrides]
    return start_process(cmd, work / "kronaxis.log", port, "/healthz", {"KRONAXIS_API_KEYS": ROUTER_KEY}), port


def start_litellm(exe: str, upstream_port: int, work: Path, workers: int = 1) -> tuple[subprocess.Popen, int]:
    cfg = work / "litellm.yaml"
    cfg.write_text(json.dumps({  # JSON is YAML
        "model_list": [{"model_name": LITELLM_MODEL,
                        "litellm_params": {"model": "openai/bench-served",
                                           "api_base": f"http://127.0.0.1:{upstream_port}/v1",
                                           "api_key": "sk-upstream-unused"}}],
        "litellm_settings": {"telemetry": False, "set_verbose": False, "drop_params": True,
                             "turn_off_message_logging": True},
        "general_settings": {"master_key": LITELLM_KEY, "disable_spend_logs": True}}))
    port = free_port()
    env = {"LITELLM_MASTER_KEY": LITELLM_KEY, "LITELLM_LOG": "ERROR", "LITELLM_LOCAL_MODEL_COST_MAP": "True",
           "LITELLM_TELEMETRY": "False", "NO_DOCS": "True"}
    cmd = [exe, "--config", str(cfg), "--host", "127.0.0.1", "--port", str(port), "--num_workers", str(workers)]
    return start_process(cmd, work / "litellm.log", port, "/health/liveliness", env), port


# -- measurement -------------------------------------------------------------------------------------------
def chat_bodies(queries: list[str], model: str) -> list[bytes]:
    return [json.dumps({"model": model, "messages": [{"role": "user", "content": q}], "max_tokens": 16}).encode()
            for q in queries]


def latency_phase(targets: dict[str, dict], n: int, block: int) -> dict[str, list[float]]:
    """Concurrency 1, targets in turns of `block` requests (rotating order): per-request latencies (ms)."""
    lat: dict[str, list[float]] = {t: [] for t in targets}
    errors = {t: 0 for t in targets}
    names = list(targets)
    for b_i, s0 in enumerate(range(0, n, block)):
        k = min(block, n - s0)
        for j in range(len(names)):
            t = targets[names[(b_i + j) % len(names)]]
            bodies = t["bodies"][s0:s0 + k] or t["bodies"][:k]
            res = asyncio.run(load(t["port"], bodies, k, 1, 600, "/v1/chat/completions", t["headers"],
                                   b'"choices"', keep_latencies=True))
            lat[t["name"]] += res["latencies_ms"]
            errors[t["name"]] += res["errors"]
            if res["errors"]:
                t.setdefault("error_examples", res["error_examples"])
    return {"latencies": lat, "errors": errors}


def summarise(targets: dict[str, dict], lat: dict[str, Any], thr: dict[str, dict]) -> list[dict[str, Any]]:
    base = lat["latencies"]["direct"]
    b50, b99 = np.percentile(base, 50), np.percentile(base, 99)
    rows = []
    for name, t in targets.items():
        a = np.asarray(lat["latencies"][name])
        p50, p99 = float(np.percentile(a, 50)), float(np.percentile(a, 99))
        r = thr[name]
        rows.append({"target": name, "model": t["model"], "latency_requests": len(a),
                     "latency_errors": lat["errors"][name], "p50_ms": p50, "p99_ms": p99,
                     "added_p50_ms": None if name == "direct" else p50 - b50,
                     "added_p99_ms": None if name == "direct" else p99 - b99,
                     "req_per_s": r["req_per_s"], "load_requests": r["requests"], "load_p50_ms": r["p50_ms"],
                     "load_p99_ms": r["p99_ms"], "load_errors": r["errors"],
                     "gateway_cpu_ms_per_request": r.get("gateway_cpu_ms"), "upstream_cpu_ms_per_request": r["upstream_cpu_ms"],
                     "error_examples": (t.get("error_examples") or []) + r["error_examples"]})
    return rows


def goals(rows: list[dict[str, Any]]) -> list[str]:
    by = {r["target"]: r for r in rows}
    out = []
    fw = by.get("kronaxis forward-only")
    if fw:
        out.append(f"- forward-only adds {fw['added_p50_ms']:.2f} ms p50 over direct (goal ≤ 10 ms: "
                   f"{'**met**' if fw['added_p50_ms'] <= 10 else '**not met**'}).")
    cf, ll = by.get("kronaxis classify+forward"), by.get("LiteLLM proxy")
    if cf and ll and ll["req_per_s"]:
        x = cf["req_per_s"] / ll["req_per_s"]
        out.append(f"- classify+forward sustains {x:.1f}× LiteLLM's requests/s (goal ≥ 3×: "
                   f"{'**met**' if x >= 3 else '**not met**'}).")
        if cf["gateway_cpu_ms_per_request"] and ll["gateway_cpu_ms_per_request"]:
            out.append(f"- gateway CPU per request: classify+forward {cf['gateway_cpu_ms_per_request']:.2f} ms, "
                       f"LiteLLM {ll['gateway_cpu_ms_per_request']:.2f} ms "
                       f"({ll['gateway_cpu_ms_per_request'] / cf['gateway_cpu_ms_per_request']:.1f}×).")
    errs = sum(r["latency_errors"] + r["load_errors"] for r in rows)
    out.append(f"- errors over all targets and phases: {errs}.")
    return out


def markdown(info: dict[str, Any]) -> str:
    def f(v: float | None, d: int = 2) -> str:
        return "–" if v is None else f"{v:.{d}f}"

    lines = [f"### Gateway overhead (`/v1/chat/completions`) — {info['date']}", "", f"`{info['command']}`", "",
             f"Machine: {info['machine']}. 1-min load average {info['loadavg_1m_before']:.2f} before, "
             f"{info['loadavg_1m_after']:.2f} after. Upstream: this script's `--upstream` (asyncio, fixed answer); "
             f"LiteLLM {info['litellm_version'] or 'not run'}; bundle `{info['bundle']}`; "
             f"{info['workers']} process(es) per gateway.", "",
             f"| target | latency c=1 p50 ms | p99 ms | adds p50 ms | adds p99 ms | req/s at c={info['concurrency']} "
             "| p50 ms | p99 ms | errors | gateway CPU ms/req | upstream CPU ms/req |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in info["rows"]:
        lines.append(f"| {r['target']} | {f(r['p50_ms'])} | {f(r['p99_ms'])} | {f(r['added_p50_ms'])} | "
                     f"{f(r['added_p99_ms'])} | {r['req_per_s']:.0f} | {f(r['load_p50_ms'], 1)} | "
                     f"{f(r['load_p99_ms'], 1)} | {r['latency_errors'] + r['load_errors']} | "
                     f"{f(r['gateway_cpu_ms_per_request'])} | {f(r['upstream_cpu_ms_per_request'])} |")
    lines += ["", *goals(info["rows"])]
    return "\n".join(lines)


def litellm_version(exe: str) -> str | None:
    py = Path(exe).with_name("python")
    try:
        out = subprocess.run([str(py), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
                             capture_output=True, text=True, timeout=60)
        return out.stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        return None


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, help="bundle directory written by kronaxis-export")
    ap.add_argument("--latency-requests", type=int, default=300, help="per target, at concurrency 1")
    ap.add_argument("--requests", type=int, default=3000, help="per target, at --concurrency")
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--max-seconds", type=float, default=20.0, help="stop the throughput phase of a target after this")
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--queries", default=None, help="JSONL with a 'query'/'text' field (default: LLMRouter queries)")
    ap.add_argument("--litellm-bin", default=None, help=f"litellm executable (default: {DEFAULT_LITELLM} or PATH)")
    ap.add_argument("--no-litellm", action="store_true", help="skip the LiteLLM row")
    ap.add_argument("--override", action="append", default=[], help="extra kronaxis-serve override (repeatable)")
    ap.add_argument("--workers", type=int, default=1, help="processes per gateway (kronaxis and LiteLLM alike)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--write", default=None, help="rewrite this script's table block in this markdown file")
    ap.add_argument("--upstream", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.upstream:
        serve_upstream(args.port)
        return {}
    if args.bundle is None:
        ap.error("--bundle is required")
    exe = None
    if not args.no_litellm:
        exe = args.litellm_bin or (str(DEFAULT_LITELLM) if DEFAULT_LITELLM.exists() else shutil.which("litellm"))
        if not exe:
            raise SystemExit("LiteLLM not found: install it outside the project venv (python3.11 -m venv "
                             "outputs/venv-litellm && outputs/venv-litellm/bin/pip install 'litellm[proxy]==1.108.7') "
                             "or pass --litellm-bin / --no-litellm")
    queries = load_queries(args.queries)
    load0 = os.getloadavg()[0]
    procs: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory(prefix="gateway-bench-") as tmp:
        work = Path(tmp)
        try:
            up_port = free_port()
            procs.append(start_process([sys.executable, str(Path(__file__).resolve()), "--upstream", "--port",
                                        str(up_port)], work / "upstream.log", up_port, "/health"))
            upstream = procs[-1]
            kp, k_port = start_kronaxis(args.bundle.resolve(), up_port, work,
                                        [f"server.workers={args.workers}", *args.override])
            procs.append(kp)
            auth = b"Authorization: Bearer " + ROUTER_KEY.encode() + b"\r\n"
            fleet_model = fleet_names(args.bundle)[0]
            targets: dict[str, dict] = {
                "direct": {"port": up_port, "model": "bench-served", "proc": None,
                           "headers": b"Authorization: Bearer sk-upstream-unused\r\n"},
                "kronaxis forward-only": {"port": k_port, "model": fleet_model, "proc": kp, "headers": auth},
                "kronaxis classify+forward": {"port": k_port, "model": "kronaxis/auto", "proc": kp, "headers": auth}}
            if exe:
                lp, l_port = start_litellm(exe, up_port, work, args.workers)
                procs.append(lp)
                targets["LiteLLM proxy"] = {"port": l_port, "model": LITELLM_MODEL, "proc": lp,
                                            "headers": b"Authorization: Bearer " + LITELLM_KEY.encode() + b"\r\n"}
            for name, t in targets.items():
                t["name"], t["bodies"] = name, chat_bodies(queries, t["model"])
                w = asyncio.run(load(t["port"], t["bodies"], args.warmup, min(8, args.concurrency), 120,
                                     "/v1/chat/completions", t["headers"], b'"choices"'))
                if w["errors"]:
                    print(f"warm-up of {name}: {w['errors']} errors, e.g. {w['error_examples'][:1]}", flush=True)
            lat = latency_phase(targets, args.latency_requests, 50)
            thr = {}
            for name, t in targets.items():
                g0 = session_cpu_seconds(t["proc"].pid) if t["proc"] else None
                u0 = session_cpu_seconds(upstream.pid)
                r = asyncio.run(load(t["port"], t["bodies"], args.requests, args.concurrency, args.max_seconds,
                                     "/v1/chat/completions", t["headers"], b'"choices"'))
                u1 = session_cpu_seconds(upstream.pid)
                n = max(r["requests"], 1)
                if t["proc"]:
                    r["gateway_cpu_ms"] = (session_cpu_seconds(t["proc"].pid) - g0) * 1000 / n
                r["upstream_cpu_ms"] = (u1 - u0) * 1000 / n
                thr[name] = r
                print(json.dumps({"target": name, **{k: v for k, v in r.items() if k != "error_examples"}}), flush=True)
        finally:
            for p in reversed(procs):
                stop(p)
    info = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine(), "loadavg_1m_before": load0,
            "loadavg_1m_after": os.getloadavg()[0], "bundle": str(args.bundle), "concurrency": args.concurrency,
            "workers": args.workers,
            "litellm_version": litellm_version(exe) if exe else None,
            "command": " ".join(["python", "benchmarks/gateway_overhead.py", *(argv if argv is not None else sys.argv[1:])]),
            "rows": summarise(targets, lat, thr)}
    table = markdown(info)
    print(table, flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(info, indent=2))
    if args.write:
        write_block(args.write, MARK, table)
    return info


if __name__ == "__main__":
    main()
