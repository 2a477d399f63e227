"""Labelling throughput: the label pipeline vs the backend called directly, same prompts, same backend.

    python benchmarks/labelling_throughput.py                                   # SmolLM2 in-process, 32 GSM8K
    python benchmarks/labelling_throughput.py --n 16 --max-tokens 48 --set num_threads=1
    python benchmarks/labelling_throughput.py --backend configs/backend/transformers_gemma3_base.yaml --style completion
    python benchmarks/labelling_throughput.py --backend configs/backend/vllm.yaml --n 512 --chunk-size 256
    python benchmarks/labelling_throughput.py --backend http-echo --n 2000 --concurrency 32   # pipeline overhead
    python benchmarks/labelling_throughput.py ... --write benchmarks/labelling_throughput.md

direct   = one `backend.agenerate(all requests)` call: the backend's own best case (it sorts and batches).
pipeline = `LabelRunner.run(queries)` with an empty cache: prompt building, cache keys, chunking with
           `--concurrency` chunks in flight, an SQLite commit per chunk, grading, outcome rows.
Throughput = generated tokens / wall seconds (model load and one warm-up call excluded); the goal is
pipeline ≥ 90 % of direct. Runs alternate (direct, pipeline, direct, ...) and the medians are reported (the order
flips every repeat).
Greedy decoding, so both paths should produce the same text; the share of identical responses is shown
(batched fp32 on CPU can differ in the last digits when padding differs).

`http-echo` starts tests/servers/faulty_server.py (fault rate 0, an echo model) on 127.0.0.1 and uses the
OpenAI HTTP backend: no model time, so it measures the pipeline's per-call overhead at high concurrency.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


class KeepOpen:
    """Proxy that ignores close(), so one loaded model serves every run of the benchmark."""

    def __init__(self, backend):
        self._b = backend

    def __getattr__(self, name):
        return getattr(self._b, name)

    async def agenerate(self, requests):
        return await self._b.agenerate(requests)

    def close(self):
        pass


def start_echo_server() -> tuple[subprocess.Popen, int]:
    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "tests.servers.faulty_server", "--port", str(port),
                             "--fail-rate", "0"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(300):
        try:
            httpx.get(f"http://127.0.0.1:{port}/stats", timeout=0.5)
            return proc, port
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("echo server did not start")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", default="configs/backend/transformers_smollm2.yaml",
                    help="a backend config YAML, or 'http-echo'")
    ap.add_argument("--n", type=int, default=32, help="GSM8K test questions")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--style", default="chat", choices=["chat", "completion"])
    ap.add_argument("--concurrency", type=int, default=4, help="pipeline chunks in flight (runner.max_concurrency)")
    ap.add_argument("--chunk-size", type=int, default=None, help="requests per backend call (default: batch_size or 1)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="backend config overrides, e.g. --set num_threads=1 batch_size=16")
    ap.add_argument("--write", default=None, help="append the results table to this markdown file")
    args = ap.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from kronaxis_lab.data.fleet import Fleet
    from kronaxis_lab.data.questions import GSM8K
    from kronaxis_lab.data.store import DataStore
    from kronaxis_lab.grading.numeric import NumericMatchGrader
    from kronaxis_lab.labeling.cache import CallCache
    from kronaxis_lab.labeling.runner import LabelRunner, ModelPlan

    server = None
    if args.backend == "http-echo":
        server, port = start_echo_server()
        node = OmegaConf.load(ROOT / "configs/backend/openai_http.yaml")
        node.endpoints = [{"name": "echo", "base_url": f"http://127.0.0.1:{port}/v1", "model": "echo", "api_key_env": []}]
        node.max_concurrency = max(args.concurrency, 8)
        backend_name = "openai_http → local echo server"
    else:
        node = OmegaConf.load(ROOT / args.backend)
        backend_name = Path(args.backend).stem
    node = OmegaConf.merge(node, OmegaConf.from_dotlist(args.set))
    if args.set:
        backend_name += " (" + ", ".join(args.set) + ")"
    name = "bench-model"
    try:
        backend = instantiate(node, model=name)
        if hasattr(backend, "load"):
            t0 = time.perf_counter()
            backend.load()
            print(f"loaded {backend_name} in {time.perf_counter() - t0:.1f}s", flush=True)
        queries = GSM8K(limit=args.n).load(DataStore())
        book = instantiate(OmegaConf.load(ROOT / "configs/prompt/default.yaml"))
        book.prompts["gsm8k"].max_tokens = args.max_tokens
        requests = [book.request(q, args.style) for q in queries.to_dict("records")]
        fleet = Fleet.from_config({"models": {name: {"tier": 0, "price_in": 1.0, "price_out": 1.0}}})
        asyncio.run(backend.agenerate(requests[:2]))  # warm-up (kernels, thread pools, connections)

        def direct() -> tuple[float, list]:
            t0 = time.perf_counter()
            out = asyncio.run(backend.agenerate(requests))
            return time.perf_counter() - t0, out

        def pipeline() -> tuple[float, list]:
            with tempfile.TemporaryDirectory() as tmp, CallCache(Path(tmp) / "c.sqlite") as cache:
                plan = ModelPlan(name, KeepOpen(backend), style=args.style, identity={"bench": True},
                                 chunk_size=args.chunk_size)
                runner = LabelRunner(fleet, [plan], book, {"gsm8k": NumericMatchGrader()}, cache,
                                     max_concurrency=args.concurrency, progress=False)
                t0 = time.perf_counter()
                res = runner.run(queries)
                wall = time.perf_counter() - t0
                gen_s.append(res.stats["generation_wall_s"][name])
                return wall, res.outcomes

        gen_s: list[float] = []  # the pipeline's generation phase alone (the rest: keys, grading, tables)
        load_before = os.getloadavg()[0]
        d_times, p_times, d_tok, p_tok, same = [], [], 0, 0, []
        for r in range(args.repeats):
            if r % 2 == 0:  # alternate which goes first, so warm-up / drift effects do not favour one
                dt, d_out = direct()
                pt, p_out = pipeline()
            else:
                pt, p_out = pipeline()
                dt, d_out = direct()
            d_times.append(dt)
            p_times.append(pt)
            d_tok = sum(x.output_tokens for x in d_out)
            p_tok = int(p_out["output_tokens"].sum())
            same.append(sum(a.text == b for a, b in zip(d_out, p_out["response"].fillna(""))) / len(d_out))
            print(f"run {r}: direct {dt:.2f}s ({d_tok / dt:.1f} tok/s), pipeline {pt:.2f}s ({p_tok / pt:.1f} tok/s; "
                  f"generation phase {gen_s[-1]:.2f}s)", flush=True)
        load_after = os.getloadavg()[0]
    finally:
        if server is not None:
            server.kill()
    d_med, p_med = statistics.median(d_times), statistics.median(p_times)
    d_rate, p_rate = d_tok / d_med, p_tok / p_med
    unit = "tok/s"
    if args.backend == "http-echo":  # no model: the echo's "tokens" mean nothing, count requests
        d_rate, p_rate, unit = args.n / d_med, args.n / p_med, "req/s"
    ratio = p_rate / d_rate
    cmd = "python benchmarks/labelling_throughput.py " + " ".join(a for a in sys.argv[1:] if not a.startswith("--write")
                                                                   and a != args.write)
    try:
        import torch

        torch_v = torch.__version__
    except ImportError:
        torch_v = "-"
    row = (f"| {backend_name} | {args.n} | {args.max_tokens} | {args.concurrency} | {args.chunk_size or 'auto'} | "
           f"{d_med:.2f} | {p_med:.2f} | {d_rate:.1f} {unit} | {p_rate:.1f} {unit} | **{ratio:.1%}** | "
           f"{statistics.mean(same):.0%} | {load_before:.1f} / {load_after:.1f} |")
    header = ("| backend | prompts | max tokens | concurrency | chunk | direct s | pipeline s | direct | pipeline | "
              "pipeline / direct | same text | load avg before / after |\n|---|---|---|---|---|---|---|---|---|---|---|---|")
    machine = (f"{platform.node()}: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
               f"Python {platform.python_version()}, torch {torch_v}")
    print(header + "\n" + row)
    if args.write:
        with open(args.write, "a") as f:
            f.write(f"\n`{cmd}` — {machine}, {time.strftime('%Y-%m-%d %H:%M')}\n\n{header}\n{row}\n")


if __name__ == "__main__":
    main()
