"""Label throughput with 2 local endpoints vs 1: one label run spread over several OpenAI-compatible servers.

    python benchmarks/label_scale.py                                  # 480 requests, 16 slots × 0.5 s per server
    python benchmarks/label_scale.py --n 960 --slots 16 --delay-s 0.2 --repeats 3
    python benchmarks/label_scale.py ... --write benchmarks/label_scale.md

Each server is `kronaxis_lab.backends.openai_server` (the test server) over `SlotBackend`: a model with a fixed
capacity — at most `--slots` requests at once, each taking `--delay-s` (what a GPU server with `--max-num-seqs`
looks like from outside), answering an echo. So a server's throughput is capped at slots / delay, and the
benchmark measures the *client*: whether one `kronaxis-label` run (LabelRunner + OpenAIHTTPBackend) fills
two servers. No real model runs: the CPU cost of inference is deliberately left out.

Every configuration gets the same client budget (`2 × slots` requests in flight in the runner and the
backend), so one server is offered twice its capacity and queues the rest:

- `1 endpoint`: the baseline;
- `2 endpoints, fallback`: today's behaviour (the second is only a backup: ≈ 1×);
- `2 endpoints, round_robin` and `least_loaded` (per-endpoint max_concurrency = slots): the goal is ≥ 1.8×.

Wall clock of `LabelRunner.run` (empty cache, prompt building, cache commits, grading included), servers
started once; configurations alternate within each repeat (the order rotates) and medians are reported.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kronaxis_lab.backends.base import Backend, GenRequest, GenResult  # noqa: E402


class SlotBackend(Backend):
    """A model with a fixed capacity: at most `slots` requests at once, each `delay_s` long; answers an echo."""

    def __init__(self, model: str = "slot", slots: int = 8, delay_s: float = 0.1):
        self.model, self.slots, self.delay_s = model, int(slots), float(delay_s)
        self._sem: asyncio.Semaphore | None = None

    async def _one(self, r: GenRequest) -> GenResult:
        if self._sem is None:
            self._sem = asyncio.Semaphore(self.slots)
        async with self._sem:
            await asyncio.sleep(self.delay_s)
        src = r.prompt if r.prompt is not None else (r.messages or [{}])[-1].get("content", "")
        return GenResult(text=f"echo: {src}", input_tokens=len(src.split()), output_tokens=len(src.split()) + 1,
                         latency_s=self.delay_s, meta={"finish_reason": "stop"})

    async def agenerate(self, requests: Sequence[GenRequest]) -> list[GenResult]:
        return list(await asyncio.gather(*(self._one(r) for r in requests)))


def start_server(cfg: Path):
    from tests.servers.proc import ServerProc

    # batch window 0: every request is its own call, so the slots (not the micro-batcher) bound the server
    return ServerProc("kronaxis_lab.backends.openai_server",
                      ["--backend-config", str(cfg), "--batch-window-ms", "0"]).wait_ready(120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=480, help="requests (queries × 1 model) per label run")
    ap.add_argument("--slots", type=int, default=16, help="requests a server runs at once")
    ap.add_argument("--delay-s", type=float, default=0.5, help="seconds per request on the server")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--write", default=None, help="append the results table to this markdown file")
    args = ap.parse_args()

    import pandas as pd

    from kronaxis_lab.backends.openai_http import OpenAIHTTPBackend
    from kronaxis_lab.data.fleet import Fleet
    from kronaxis_lab.grading.numeric import NumericMatchGrader
    from kronaxis_lab.labeling.cache import CallCache
    from kronaxis_lab.labeling.prompts import PromptBook
    from kronaxis_lab.labeling.runner import LabelRunner, ModelPlan

    tmp = Path(tempfile.mkdtemp(prefix="label_scale_"))
    cfg = tmp / "slot_backend.yaml"
    cfg.write_text(f"_target_: benchmarks.label_scale.SlotBackend\nslots: {args.slots}\ndelay_s: {args.delay_s}\n")
    servers = [start_server(cfg), start_server(cfg)]
    budget = 2 * args.slots
    queries = pd.DataFrame([{"query_id": f"q{i}", "text": f"What is {i} + {i}?", "task": "gsm8k",
                             "gold": f"#### {2 * i}", "split": "test"} for i in range(args.n)])
    book = PromptBook({"gsm8k": {"user": "{text}", "max_tokens": 16}})
    fleet = Fleet.from_config({"models": {"m": {"tier": 0, "price_in": 1.0, "price_out": 1.0}}})

    def endpoints(k: int, cap: int | None) -> list[dict]:
        return [{"name": f"s{i}", "base_url": s.url, "model": "slot", "max_concurrency": cap}
                for i, s in enumerate(servers[:k])]

    configs = {
        "1 endpoint": dict(endpoints=endpoints(1, None), strategy="fallback"),
        "2 endpoints, fallback (today)": dict(endpoints=endpoints(2, None), strategy="fallback"),
        "2 endpoints, round_robin": dict(endpoints=endpoints(2, args.slots), strategy="round_robin"),
        "2 endpoints, least_loaded": dict(endpoints=endpoints(2, args.slots), strategy="least_loaded"),
    }

    def label_run(spec: dict, run_id: str) -> tuple[float, dict]:
        backend = OpenAIHTTPBackend("m", spec["endpoints"], strategy=spec["strategy"], max_concurrency=budget,
                                    timeout_s=120)
        with CallCache(tmp / f"{run_id}.sqlite") as cache:
            runner = LabelRunner(fleet, [ModelPlan("m", backend, identity={"run": run_id})], book,
                                 {"gsm8k": NumericMatchGrader()}, cache, max_concurrency=budget, progress=False)
            t0 = time.perf_counter()
            res = runner.run(queries)
            wall = time.perf_counter() - t0
        errors = int(res.outcomes["error"].notna().sum())
        if errors:
            raise RuntimeError(f"{run_id}: {errors} failed calls")
        by = {k: v.get("ok", 0) for k, v in res.stats["backend_counters"]["m"]["by_endpoint"].items()}
        return wall, by

    label_run(configs["2 endpoints, least_loaded"], "warmup")  # connections, imports
    walls: dict[str, list[float]] = {k: [] for k in configs}
    split: dict[str, dict] = {}
    load_before = os.getloadavg()[0]
    try:
        names = list(configs)
        for rep in range(args.repeats):
            order = names[rep % len(names):] + names[:rep % len(names)]
            for name in order:
                wall, by = label_run(configs[name], f"{rep}-{name}")
                walls[name].append(wall)
                split[name] = by
                print(f"repeat {rep}: {name}: {wall:.2f} s ({args.n / wall:.1f} req/s) {by}", flush=True)
    finally:
        for s in servers:
            s.stop()
    load_after = os.getloadavg()[0]

    base = statistics.median(walls["1 endpoint"])
    cap = args.slots / args.delay_s
    rows = []
    for name in configs:
        med = statistics.median(walls[name])
        share = " / ".join(str(v) for v in split[name].values())
        rows.append(f"| {name} | {args.n} | {med:.2f} | {args.n / med:.1f} | **{base / med:.2f}×** | {share} |")
    header = (f"`python benchmarks/label_scale.py --n {args.n} --slots {args.slots} --delay-s {args.delay_s} "
              f"--repeats {args.repeats}` — vm: {platform.machine()}, {os.cpu_count()} CPUs, "
              f"Python {platform.python_version()}, {time.strftime('%Y-%m-%d %H:%M')}; load avg "
              f"{load_before:.1f} / {load_after:.1f}. Server capacity {cap:.0f} req/s each "
              f"({args.slots} slots × {args.delay_s} s); client budget {budget} in flight.\n\n"
              "| configuration | requests | wall s (median) | req/s | vs 1 endpoint | requests per server |\n"
              "|---|---|---|---|---|---|\n")
    table = header + "\n".join(rows) + "\n"
    print("\n" + table)
    if args.write:
        with open(args.write, "a") as f:
            f.write("\n" + table)
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
