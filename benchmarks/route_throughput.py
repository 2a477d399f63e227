"""Router throughput: a bounded load generator against POST /v1/route of a real `kronaxis-serve` process.

    .venv/bin/python benchmarks/route_throughput.py --bundle <bundle dir> [--requests 10000] [--concurrency 64]
        [--max-seconds 60] [--modes on,off] [--route-batch 1] [--override settings.batching.max_batch=64]
        [--write benchmarks/route_throughput.md]

For each mode the script starts the router exactly as a user would
(`kronaxis-serve bundle=<dir> server.host=127.0.0.1 server.port=<port> settings.batching.enabled=<on|off>`),
waits for /healthz, sends `--warmup` requests, then `--requests` requests from `--concurrency` keep-alive
connections (stopping early after `--max-seconds`), and reports decisions/s, latency p50/p90/p99 and errors
(any non-200 answer or broken connection). The router's own classifier batch sizes come from its /metrics.
The server's CPU time per decision (from /proc) is reported too: unlike decisions/s it hardly depends on
what else runs on the machine, and 2 / (CPU s per decision) bounds the rate on 2 dedicated cores.

Queries are real: LLMRouter's query texts (14 tasks; ../shared/data or $KRONAXIS_DATA_MIRROR), cycled.
The load generator speaks minimal HTTP/1.1 over asyncio streams (~20 µs per request) instead of a full
client library, so on a 2-core machine it leaves the cores to the server being measured.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def load_queries(path: str | None, limit: int = 5000) -> list[str]:
    """Query texts from a JSONL file with a `query`/`text`/`question` field (default: LLMRouter's queries)."""
    if path is None:
        mirror = os.environ.get("KRONAXIS_DATA_MIRROR") or str(ROOT.parent / "shared" / "data")
        path = str(Path(mirror) / "llmrouter" / "queries_train.jsonl")
    p = Path(path)
    if not p.is_file():
        raise SystemExit(f"--queries {p}: no such file (give a JSONL file with a 'query' or 'text' field)")
    out = []
    for line in p.read_text().split("\n"):  # not splitlines(): texts may hold U+2028
        if line.strip():
            row = json.loads(line)
            text = row.get("query") or row.get("text") or row.get("question")
            if isinstance(text, str) and text.strip():
                out.append(text)
        if len(out) >= limit:
            break
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_router(bundle: str, port: int, overrides: list[str], log_path: Path) -> subprocess.Popen:
    exe = Path(sys.executable).with_name("kronaxis-serve")
    cmd = [str(exe) if exe.exists() else "kronaxis-serve", f"bundle={bundle}", "server.host=127.0.0.1",
           f"server.port={port}", "server.log_level=warning", f"hydra.run.dir={log_path.parent / 'hydra'}", *overrides]
    log = open(log_path, "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 180
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"router exited with {proc.returncode}; see {log_path}:\n{log_path.read_text()[-3000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                if s.recv(64).startswith(b"HTTP/1.1 200"):
                    return proc
        except OSError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise SystemExit(f"router did not become healthy in 180 s; see {log_path}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


_CL = re.compile(rb"content-length:\s*(\d+)", re.I)


async def _connection(port: int, bodies: list[bytes], counter: dict, n_total: int, deadline: float,
                      latencies: list[float], errors: list[str]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while counter["next"] < n_total and time.perf_counter() < deadline:
            i = counter["next"]
            counter["next"] += 1
            body = bodies[i % len(bodies)]
            req = (b"POST /v1/route HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                   b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
            t0 = time.perf_counter()
            writer.write(req)
            head = await reader.readuntil(b"\r\n\r\n")
            m = _CL.search(head)
            payload = await reader.readexactly(int(m.group(1))) if m else b""
            latencies.append(time.perf_counter() - t0)
            if not head.startswith(b"HTTP/1.1 200"):
                errors.append(head.split(b"\r\n", 1)[0].decode() + " " + payload[:200].decode("utf-8", "replace"))
            elif b'"model"' not in payload:
                errors.append("200 without a decision: " + payload[:200].decode("utf-8", "replace"))
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as e:
        errors.append(f"connection: {type(e).__name__}: {e}")
    finally:
        writer.close()


async def load(port: int, bodies: list[bytes], n: int, concurrency: int, max_seconds: float) -> dict[str, Any]:
    counter = {"next": 0}
    latencies: list[float] = []
    errors: list[str] = []
    t0 = time.perf_counter()
    await asyncio.gather(*(_connection(port, bodies, counter, n, t0 + max_seconds, latencies, errors)
                           for _ in range(concurrency)))
    wall = time.perf_counter() - t0
    lat = np.array(latencies) * 1000
    return {"requests": len(latencies), "wall_s": wall, "errors": len(errors), "error_examples": errors[:3],
            "p50_ms": float(np.percentile(lat, 50)) if len(lat) else None,
            "p90_ms": float(np.percentile(lat, 90)) if len(lat) else None,
            "p99_ms": float(np.percentile(lat, 99)) if len(lat) else None,
            "req_per_s": len(latencies) / wall if wall else 0.0}


def scrape(port: int) -> dict[str, float]:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    out = {}
    for line in data.decode().splitlines():
        for name in ("kronaxis_classifier_batch_size_sum", "kronaxis_classifier_batch_size_count"):
            if line.startswith(name + " "):
                out[name] = float(line.split()[-1])
    return out


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_mode(args: argparse.Namespace, mode: str, queries: list[str], workdir: Path) -> dict[str, Any]:
    port = free_port()
    overrides = [f"settings.batching.enabled={'true' if mode == 'on' else 'false'}",
                 f"settings.limits.max_route_batch={max(1024, args.route_batch)}", *args.override]
    proc = start_router(args.bundle, port, overrides, workdir / f"router-{mode}.log")
    try:
        k = args.route_batch
        if k == 1:
            bodies = [json.dumps({"messages": [{"role": "user", "content": q}]}).encode() for q in queries]
        else:
            def item(q: str) -> dict:
                return {"messages": [{"role": "user", "content": q}]}

            bodies = [json.dumps({"requests": [item(queries[(i + j) % len(queries)]) for j in range(k)]}).encode()
                      for i in range(0, len(queries), k)]
        asyncio.run(load(port, bodies, args.warmup, min(args.concurrency, 8), 60))
        before = scrape(port)
        cpu0, own0 = cpu_seconds(proc.pid), time.process_time()
        res = asyncio.run(load(port, bodies, args.requests, args.concurrency, args.max_seconds))
        cpu1, own1 = cpu_seconds(proc.pid), time.process_time()
        after = scrape(port)
    finally:
        stop(proc)
    calls = after.get("kronaxis_classifier_batch_size_count", 0) - before.get("kronaxis_classifier_batch_size_count", 0)
    texts = after.get("kronaxis_classifier_batch_size_sum", 0) - before.get("kronaxis_classifier_batch_size_sum", 0)
    decisions = res["requests"] * k
    # CPU time per decision does not depend on what else runs on the machine: 2 free cores give at most
    # 2 / server_cpu_s_per_decision decisions/s (the load generator's own CPU is reported beside it)
    server_ms = (cpu1 - cpu0) * 1000 / max(decisions, 1)
    res.update(mode=mode, route_batch=k, decisions=decisions, decisions_per_s=res["req_per_s"] * k,
               classifier_calls=int(calls), mean_classifier_batch=texts / calls if calls else None,
               server_cpu_ms_per_decision=server_ms,
               loadgen_cpu_ms_per_decision=(own1 - own0) * 1000 / max(decisions, 1),
               capacity_2_cores=2000.0 / server_ms if server_ms else None)
    return res


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    py, system = platform.python_version(), f"{platform.system()} {platform.release()}"
    return f"{cpu}, {os.cpu_count()} cores, Python {py}, {system}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", required=True, help="bundle directory written by kronaxis-export")
    ap.add_argument("--requests", type=int, default=10_000)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--max-seconds", type=float, default=60.0, help="stop sending after this long")
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--modes", default="on,off", help="micro-batching modes to compare: on, off or on,off")
    ap.add_argument("--route-batch", type=int, default=1, help="decisions per request ({'requests': [...]})")
    ap.add_argument("--queries", default=None, help="JSONL with a 'query'/'text' field (default: LLMRouter queries)")
    ap.add_argument("--override", action="append", default=[], help="extra kronaxis-serve override (repeatable)")
    ap.add_argument("--json", default=None, help="write the raw results here")
    ap.add_argument("--write", default=None, help="append a markdown result section to this file")
    args = ap.parse_args()

    queries = load_queries(args.queries)
    load1 = os.getloadavg()[0]
    results = []
    with tempfile.TemporaryDirectory(prefix="kronaxis-bench-") as tmp:
        for mode in [m.strip() for m in args.modes.split(",") if m.strip()]:
            r = run_mode(args, mode, queries, Path(tmp))
            results.append(r)
            print(json.dumps(r), flush=True)
    info = {"machine": machine(), "loadavg_1m_before": load1, "bundle": args.bundle,
            "command": " ".join(["python", "benchmarks/route_throughput.py", *sys.argv[1:]]),
            "queries": len(queries), "results": results}
    if args.json:
        Path(args.json).write_text(json.dumps(info, indent=2))
    lines = ["| micro-batching | decisions/request | requests | wall s | decisions/s | p50 ms | p90 ms | p99 ms "
             "| errors | mean classifier batch | server CPU ms/decision | ⇒ decisions/s on 2 free cores |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        mb = "-" if r["mean_classifier_batch"] is None else f"{r['mean_classifier_batch']:.1f}"
        lines.append(f"| {r['mode']} | {r['route_batch']} | {r['requests']} | {r['wall_s']:.1f} | "
                     f"{r['decisions_per_s']:.0f} | {r['p50_ms']:.1f} | {r['p90_ms']:.1f} | {r['p99_ms']:.1f} | "
                     f"{r['errors']} | {mb} | {r['server_cpu_ms_per_decision']:.2f} | {r['capacity_2_cores']:.0f} |")
    table = "\n".join(lines)
    print(table)
    if args.write:
        with open(args.write, "a") as f:
            f.write(f"\n### {time.strftime('%Y-%m-%d %H:%M')} — `{info['command']}`\n\n"
                    f"Machine: {info['machine']}; 1-min load average before the run: {load1:.1f}.\n\n{table}\n")


if __name__ == "__main__":
    main()
