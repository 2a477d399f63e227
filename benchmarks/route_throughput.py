"""Router throughput: a bounded load generator against POST /v1/route of a real `kronaxis-serve` process.

    .venv/bin/python benchmarks/route_throughput.py --bundle [NAME=]<bundle dir> [--bundle ...] [--requests 10000]
        [--concurrency 64] [--max-seconds 60] [--modes on,off] [--workers 1,2] [--route-batch 1] [--goal NAME=1000]
        [--override settings.batching.max_batch=64] [--json out.json] [--write benchmarks/route_throughput.md]

For each bundle and mode the script starts the router exactly as a user would
(`kronaxis-serve bundle=<dir> server.host=127.0.0.1 server.port=<port> settings.batching.enabled=<on|off>
server.workers=<W>`, for each W of `--workers`: W router processes on the port),
waits for /healthz, sends `--warmup` requests, then `--requests` requests from `--concurrency` keep-alive
connections (stopping early after `--max-seconds`), and reports decisions/s, latency p50/p90/p99 and errors
(any non-200 answer or broken connection). The router's own classifier batch sizes come from its /metrics.
The server's CPU time per decision (from /proc, the router's whole process session) is reported too: unlike
decisions/s it hardly depends on what else runs on the machine, and cores / (CPU s per decision) bounds the rate
on that many dedicated cores. `--write` replaces this script's block (between `<!-- route_throughput:begin -->`
and `<!-- route_throughput:end -->`) in a markdown file, with the machine and its 1-minute load average.

Queries are real: LLMRouter's query texts (14 tasks; ../shared/data or $KRONAXIS_DATA_MIRROR), cycled.
The load generator speaks minimal HTTP/1.1 over asyncio streams (~20 µs per request) instead of a full
client library, so on a 2-core machine it leaves the cores to the server being measured.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
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
from bench_common import cpu_ticks, machine, steal_percent, write_block

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


def healthz_pid(port: int) -> int | None:
    """The pid of the router process that answers /healthz on a new connection (None: not ready)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
    except OSError:
        return None
    head, _, body = data.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        return None
    try:
        return int(json.loads(body).get("pid", 0)) or None
    except ValueError:
        return None


def start_router(bundle: str, port: int, overrides: list[str], log_path: Path, workers: int = 1) -> subprocess.Popen:
    """Start `kronaxis-serve` and return once `workers` distinct router processes have answered /healthz: a load
    that starts while one is still loading its bundle would open every keep-alive connection to the others."""
    exe = Path(sys.executable).with_name("kronaxis-serve")
    cmd = [str(exe) if exe.exists() else "kronaxis-serve", f"bundle={bundle}", "server.host=127.0.0.1",
           f"server.port={port}", "server.log_level=warning", f"hydra.run.dir={log_path.parent / 'hydra'}", *overrides]
    log = open(log_path, "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 180
    seen: set[int] = set()
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"router exited with {proc.returncode}; see {log_path}:\n{log_path.read_text()[-3000:]}")
        pid = healthz_pid(port)
        if pid is not None:
            seen.add(pid)
            if len(seen) >= workers:
                return proc
            time.sleep(0.05)  # then another new connection: it may reach another process
            continue
        time.sleep(0.3)
    proc.kill()
    raise SystemExit(f"router did not get {workers} healthy process(es) in 180 s (saw {len(seen)}); see {log_path}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


_CL = re.compile(rb"content-length:\s*(\d+)", re.I)
_CHUNKED = re.compile(rb"transfer-encoding:\s*chunked", re.I)


async def read_response(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """(status line + headers, body) of one HTTP/1.1 response (Content-Length or chunked)."""
    head = await reader.readuntil(b"\r\n\r\n")
    m = _CL.search(head)
    if m:
        return head, await reader.readexactly(int(m.group(1)))
    if not _CHUNKED.search(head):
        return head, b""
    body = b""
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        chunk = await reader.readexactly(size + 2)
        if size == 0:
            return head, body
        body += chunk[:-2]


def request_bytes(path: str, body: bytes, headers: bytes = b"") -> bytes:
    return (b"POST " + path.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n" + headers
            + b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


async def _connection(port: int, requests: list[bytes], counter: dict, n_total: int, deadline: float,
                      latencies: list[float], errors: list[str], expect: bytes) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 22)
    try:
        while counter["next"] < n_total and time.perf_counter() < deadline:
            i = counter["next"]
            counter["next"] += 1
            t0 = time.perf_counter()
            writer.write(requests[i % len(requests)])
            head, payload = await read_response(reader)
            latencies.append(time.perf_counter() - t0)
            if not head.startswith(b"HTTP/1.1 200"):
                errors.append(head.split(b"\r\n", 1)[0].decode() + " " + payload[:200].decode("utf-8", "replace"))
            elif expect not in payload:
                errors.append(f"200 without {expect.decode()}: " + payload[:200].decode("utf-8", "replace"))
            if b"connection: close" in head.lower():
                errors.append("server closed the keep-alive connection")
                break
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as e:
        errors.append(f"connection: {type(e).__name__}: {e}")
    finally:
        writer.close()


async def load(port: int, bodies: list[bytes], n: int, concurrency: int, max_seconds: float,
               path: str = "/v1/route", headers: bytes = b"", expect: bytes = b'"model"',
               keep_latencies: bool = False) -> dict[str, Any]:
    """Send `n` POSTs of `bodies` (cycled) to `path` from `concurrency` keep-alive connections (stop after
    `max_seconds`); every answer must be a 200 whose body contains `expect`. `headers`: extra header lines,
    each ending in CRLF; `keep_latencies`: also return every latency (ms) as `latencies_ms`."""
    requests = [request_bytes(path, b, headers) for b in bodies]
    counter = {"next": 0}
    latencies: list[float] = []
    errors: list[str] = []
    t0 = time.perf_counter()
    await asyncio.gather(*(_connection(port, requests, counter, n, t0 + max_seconds, latencies, errors, expect)
                           for _ in range(concurrency)))
    wall = time.perf_counter() - t0
    lat = np.array(latencies) * 1000
    out = {"requests": len(latencies), "wall_s": wall, "errors": len(errors), "error_examples": errors[:3],
           "p50_ms": float(np.percentile(lat, 50)) if len(lat) else None,
           "p90_ms": float(np.percentile(lat, 90)) if len(lat) else None,
           "p99_ms": float(np.percentile(lat, 99)) if len(lat) else None,
           "req_per_s": len(latencies) / wall if wall else 0.0}
    if keep_latencies:
        out["latencies_ms"] = lat.tolist()
    return out


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
    """utime + stime of a process (all its threads) and of its reaped children, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(fields[k]) for k in (11, 12, 13, 14)) / os.sysconf("SC_CLK_TCK")


def session_cpu_seconds(sid: int) -> float:
    """CPU seconds of every live process of session `sid` (a server started with start_new_session=True and
    whatever workers it forked), plus the children they reaped."""
    total = 0.0
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid:
            total += sum(int(fields[k]) for k in (11, 12, 13, 14))
    return total / os.sysconf("SC_CLK_TCK")


def run_mode(args: argparse.Namespace, name: str, bundle: str, mode: str, queries: list[str],
             workdir: Path, workers: int = 1) -> dict[str, Any]:
    port = free_port()
    overrides = [f"settings.batching.enabled={'true' if mode == 'on' else 'false'}", f"server.workers={workers}",
                 f"settings.limits.max_route_batch={max(1024, args.route_batch)}", *args.override]
    proc = start_router(bundle, port, overrides, workdir / f"router-{name}-{mode}-{workers}.log", workers)
    try:
        k = args.route_batch
        if k == 1:
            bodies = [json.dumps({"messages": [{"role": "user", "content": q}]}).encode() for q in queries]
        else:
            def item(q: str) -> dict:
                return {"messages": [{"role": "user", "content": q}]}

            bodies = [json.dumps({"requests": [item(queries[(i + j) % len(queries)]) for j in range(k)]}).encode()
                      for i in range(0, len(queries), k)]
        warm = asyncio.run(load(port, bodies, args.warmup, min(args.concurrency, 8), 60))
        before = scrape(port)
        cpu0, own0, ticks0 = session_cpu_seconds(proc.pid), time.process_time(), cpu_ticks()
        res = asyncio.run(load(port, bodies, args.requests, args.concurrency, args.max_seconds))
        cpu1, own1, ticks1 = session_cpu_seconds(proc.pid), time.process_time(), cpu_ticks()
        after = scrape(port)
    finally:
        stop(proc)
    calls = after.get("kronaxis_classifier_batch_size_count", 0) - before.get("kronaxis_classifier_batch_size_count", 0)
    texts = after.get("kronaxis_classifier_batch_size_sum", 0) - before.get("kronaxis_classifier_batch_size_sum", 0)
    decisions = res["requests"] * k
    # CPU time per decision hardly depends on what else runs on the machine: c free cores give at most
    # c / server_cpu_s_per_decision decisions/s (the load generator's own CPU is reported beside it)
    server_ms = (cpu1 - cpu0) * 1000 / max(decisions, 1)
    cores = os.cpu_count() or 1
    res.update(bundle=name, mode=mode, workers=workers, route_batch=k, concurrency=args.concurrency, decisions=decisions,
               decisions_per_s=res["req_per_s"] * k, warmup_errors=warm["errors"],
               classifier_calls=int(calls), mean_classifier_batch=texts / calls if calls else None,
               server_cpu_ms_per_decision=server_ms, steal_pct=steal_percent(ticks0, ticks1),
               loadgen_cpu_ms_per_decision=(own1 - own0) * 1000 / max(decisions, 1),
               capacity_all_cores=cores * 1000.0 / server_ms if server_ms else None)
    return res




def parse_named(specs: list[str], what: str) -> list[tuple[str, str]]:
    """NAME=VALUE pairs; a bare VALUE gets the name `bundle` (or bundleN)."""
    out = []
    for i, s in enumerate(specs):
        name, sep, value = s.partition("=")
        if not sep:
            if what == "goal":
                raise SystemExit(f"--goal {s!r}: expected NAME=DECISIONS_PER_S")
            name, value = (f"bundle{i + 1}" if len(specs) > 1 else "bundle"), s
        out.append((name, value))
    return out


def f1(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


def markdown(info: dict[str, Any]) -> str:
    cores = os.cpu_count()
    lines = [f"### Router throughput (`POST /v1/route`) — {info['date']}", "", f"`{info['command']}`", "",
             f"Machine: {info['machine']}. 1-min load average {info['loadavg_1m_before']:.2f} before, "
             f"{info['loadavg_1m_after']:.2f} after. {info['queries']} LLMRouter query texts, cycled.", "",
             "| bundle | micro-batching | router processes | decisions/request | concurrency | requests | wall s | decisions/s | p50 ms "
             "| p90 ms | p99 ms | errors | mean classifier batch | server CPU ms/decision "
             f"| ⇒ decisions/s on {cores} free cores | CPU steal % |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in info["results"]:
        mb = "-" if r["mean_classifier_batch"] is None else f"{r['mean_classifier_batch']:.1f}"
        cap = "-" if r["capacity_all_cores"] is None else f"{r['capacity_all_cores']:.0f}"
        lines.append(f"| {r['bundle']} | {r['mode']} | {r['workers']} | {r['route_batch']} | {r['concurrency']} | {r['requests']} | "
                     f"{r['wall_s']:.1f} | {r['decisions_per_s']:.0f} | {f1(r['p50_ms'])} | {f1(r['p90_ms'])} | "
                     f"{f1(r['p99_ms'])} | {r['errors']} | {mb} | {r['server_cpu_ms_per_decision']:.2f} | {cap} | "
                     f"{f1(r.get('steal_pct'))} |")
    if info["goals"]:
        lines.append("")
    for name, rate in info["goals"].items():
        configs: dict[tuple[int, int], list[dict[str, Any]]] = {}
        for r in info["results"]:
            if r["bundle"] == name and r["mode"] == "on":
                configs.setdefault((r["workers"], r["route_batch"]), []).append(r)
        for (workers, k), runs in configs.items():
            rates = sorted(r["decisions_per_s"] for r in runs)
            errors = sum(r["errors"] for r in runs)
            med = float(np.median(rates))
            ok = med >= rate and errors == 0
            spread = f" (median of {len(runs)} runs: {', '.join(f'{x:.0f}' for x in rates)})" if len(runs) > 1 else ""
            lines.append(f"- `{name}` with micro-batching, {workers} router process(es), {k} decision(s)/request: "
                         f"{med:.0f} decisions/s{spread}, {errors} errors (goal ≥ {rate:g}/s, 0 errors: "
                         f"{'**met**' if ok else '**not met**'} as measured here).")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", action="append", required=True,
                    help="[NAME=]bundle directory written by kronaxis-export (repeatable)")
    ap.add_argument("--requests", type=int, default=10_000)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--max-seconds", type=float, default=60.0, help="stop sending after this long")
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--modes", default="on,off", help="micro-batching modes to compare: on, off or on,off")
    ap.add_argument("--workers", default="1", help="router processes (server.workers) to compare, e.g. 1,2")
    ap.add_argument("--route-batch", type=int, default=1, help="decisions per request ({'requests': [...]})")
    ap.add_argument("--repeat", type=int, default=1,
                    help="run each configuration this many times, interleaved (a goal is judged on the median)")
    ap.add_argument("--queries", default=None, help="JSONL with a 'query'/'text' field (default: LLMRouter queries)")
    ap.add_argument("--override", action="append", default=[], help="extra kronaxis-serve override (repeatable)")
    ap.add_argument("--goal", action="append", default=[], help="NAME=decisions/s to check (micro-batching on)")
    ap.add_argument("--json", default=None, help="write the raw results here")
    ap.add_argument("--write", default=None, help="rewrite this script's table block in this markdown file")
    args = ap.parse_args(argv)

    queries = load_queries(args.queries)
    load1 = os.getloadavg()[0]
    results = []
    with tempfile.TemporaryDirectory(prefix="kronaxis-bench-") as tmp:
        for name, bundle in parse_named(args.bundle, "bundle"):
            for _ in range(max(1, args.repeat)):
                for workers in [int(w) for w in args.workers.split(",") if w.strip()]:
                    for mode in [m.strip() for m in args.modes.split(",") if m.strip()]:
                        r = run_mode(args, name, bundle, mode, queries, Path(tmp), workers)
                        results.append(r)
                        print(json.dumps(r), flush=True)
    info = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine(), "loadavg_1m_before": load1,
            "loadavg_1m_after": os.getloadavg()[0], "bundles": dict(parse_named(args.bundle, "bundle")),
            "command": " ".join(["python", "benchmarks/route_throughput.py",
                                 *(argv if argv is not None else sys.argv[1:])]),
            "queries": len(queries), "goals": {n: float(v) for n, v in parse_named(args.goal, "goal")},
            "results": results}
    if args.json:
        Path(args.json).write_text(json.dumps(info, indent=2))
    table = markdown(info)
    print(table)
    if args.write:
        write_block(args.write, "route_throughput", table)
    return info


if __name__ == "__main__":
    main()
