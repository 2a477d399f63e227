"""The router's speed goals side by side in one run, one file: benchmarks/speed.md.

    .venv/bin/python benchmarks/speed_suite.py --quality <6-layer MiniLM bundle> --tfidf <TF-IDF bundle>
        [--winner <make demo's winner's bundle>] [--ensemble <ensemble bundle>] [--workers <cores>]
        [--litellm-bin outputs/venv-litellm/bin/litellm | --no-litellm] [--write benchmarks/speed.md] [--tiny]

Runs, one after the other on the same machine (each as its own process, each rewriting its block of `--write`):

1. `routing_latency.py` — batch-1 decision latency (the server's predict + decide path) of every bundle, fp32 and
   int8 where a bundle has it, beside a bert-base-sized router (random init, `BertConfig()`, same tokenizer, head
   and policy as the quality bundle);
2. `route_throughput.py` — decisions/s through `POST /v1/route` of a real `kronaxis-serve` at concurrency 64:
   quality with micro-batching on and off and TF-IDF, each as 1 router process and as `--workers` processes
   (`server.workers`); TF-IDF with 16 and with 64 decisions per request (`{"requests": [...]}`, 3 interleaved runs
   each, judged on the median: the shared VM's speed drifts between runs); the demo's winner and the
   ensemble as `--workers` processes;
3. `gateway_overhead.py` — direct / kronaxis forward-only / kronaxis classify+forward (the winner's bundle when
   given, else quality) / LiteLLM proxy on one local upstream, each gateway as `--workers` processes: latency
   added at concurrency 1 and requests/s at concurrency 64.

About 12 minutes on a 2-core machine with the default sizes. `--tiny` shrinks every count (tests: the scripts
cannot rot); its numbers mean nothing. Read the numbers only from a run on an idle machine: each block records
the 1-minute load average.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_common import machine, write_block
from route_throughput import markdown as throughput_markdown  # sibling script: benchmarks/ is sys.path[0]

HERE = Path(__file__).resolve().parent
MARK = "speed_suite"




def steps(args: argparse.Namespace, out: Path, write: Path) -> list[tuple[str, list[str]]]:
    tiny, w = args.tiny, str(args.workers)
    named = [("quality", args.quality), ("winner", args.winner), ("tfidf", args.tfidf), ("ensemble", args.ensemble)]
    bundles = [f"{k}={v}" for k, v in named if v]
    lat = ["routing_latency.py", *[x for b in bundles for x in ("--bundle", b)],
           "--n", "30" if tiny else "300", "--warmup", "3" if tiny else "20", "--block", "10" if tiny else "50",
           "--json", str(out / "routing_latency.json"), "--write", str(write)]
    if tiny:
        lat += ["--bert-layers", "1", "--bert-hidden", "64"]
    thr_common = ["--requests", "120" if tiny else "5000", "--concurrency", "16" if tiny else "64",
                  "--max-seconds", "10" if tiny else "20", "--warmup", "16" if tiny else "200"]
    # 1 router process (the default) beside `--workers` processes (one per core)
    thr = ["route_throughput.py", "--bundle", f"quality={args.quality}", "--modes", "on,off", "--workers", f"1,{w}",
           *thr_common, "--goal", "quality=1000", "--json", str(out / "route_throughput_quality.json")]
    thr2 = ["route_throughput.py", "--bundle", f"tfidf={args.tfidf}", "--modes", "on", "--workers", f"1,{w}",
            *thr_common, "--goal", "tfidf=5000", "--json", str(out / "route_throughput_others.json")]
    batched = [(f"route_throughput_batched{k}",
                ["route_throughput.py", "--bundle", f"tfidf={args.tfidf}", "--modes", "on", "--workers", w,
                 "--route-batch", str(k), "--requests", "40" if tiny else str(32000 // k),
                 "--concurrency", "4" if tiny else "16", "--max-seconds", "10" if tiny else "20",
                 "--warmup", "4" if tiny else "50", "--goal", "tfidf=5000", "--repeat", "1" if tiny else "3",
                 "--json", str(out / f"route_throughput_batched{k}.json")]) for k in (16, 64)]
    more = [x for k, v in (("winner", args.winner), ("ensemble", args.ensemble)) if v for x in ("--bundle", f"{k}={v}")]
    thr4 = ["route_throughput.py", *more, "--modes", "on", "--workers", w, *thr_common,
            "--json", str(out / "route_throughput_more.json")] + (["--goal", "winner=1000"] if args.winner else [])
    gw = ["gateway_overhead.py", "--bundle", str(args.winner or args.quality), "--workers", w,
          "--latency-requests", "20" if tiny else "300",
          "--requests", "100" if tiny else "3000", "--concurrency", "16" if tiny else "64",
          "--max-seconds", "10" if tiny else "20", "--warmup", "10" if tiny else "50",
          "--json", str(out / "gateway_overhead.json"), "--write", str(write)]
    gw += ["--no-litellm"] if args.no_litellm else (["--litellm-bin", args.litellm_bin] if args.litellm_bin else [])
    runs = [("routing_latency", lat), ("route_throughput_quality", thr), ("route_throughput_others", thr2), *batched]
    if more:
        runs.append(("route_throughput_more", thr4))
    runs.append(("gateway_overhead", gw))
    if args.queries:
        for _, cmd in runs:
            cmd += ["--queries", str(args.queries)]
    return runs


def throughput_block(out: Path, names: list[str]) -> str:
    """One route_throughput table from the runs `names` (steps' route_throughput_* runs, in order)."""
    infos = [json.loads((out / f"{name}.json").read_text()) for name in names]
    merged = {**infos[0], "results": [r for i in infos for r in i["results"]],
              "goals": {k: v for i in infos for k, v in i["goals"].items()},
              "command": "`, then `".join(i["command"] for i in infos),
              "loadavg_1m_after": infos[-1]["loadavg_1m_after"]}
    return throughput_markdown(merged)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quality", required=True, type=Path, help="the default quality bundle (6-layer MiniLM)")
    ap.add_argument("--tfidf", required=True, type=Path, help="a TF-IDF + logistic regression bundle")
    ap.add_argument("--ensemble", type=Path, default=None, help="an ensemble bundle (its cost is reported)")
    ap.add_argument("--winner", type=Path, default=None,
                    help="the bundle of `make demo`'s winner, when it is not the tier predictor (goal ≥ 1,000/s; the "
                         "gateway rows then use it)")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                    help="router processes for the multi-process rows (default: one per core)")
    ap.add_argument("--litellm-bin", default=None)
    ap.add_argument("--no-litellm", action="store_true")
    ap.add_argument("--write", type=Path, default=HERE / "speed.md")
    ap.add_argument("--queries", default=None, help="JSONL with a 'query' field (default: LLMRouter's queries)")
    ap.add_argument("--tiny", action="store_true", help="tiny counts (smoke test); the numbers mean nothing")
    args = ap.parse_args(argv)
    t0, load0 = time.time(), os.getloadavg()[0]
    timings: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="speed-suite-") as tmp:
        out = Path(tmp)
        for name, cmd in steps(args, out, args.write):
            s = time.time()
            print(f"== {name}: {' '.join(cmd)}", flush=True)
            subprocess.run([sys.executable, str(HERE / cmd[0]), *cmd[1:]], check=True, cwd=HERE.parent)
            timings[name] = time.time() - s
        write_block(args.write, "route_throughput",
                    throughput_block(out, [n for n in timings if n.startswith("route_throughput")]))
        results = {p.stem: json.loads(p.read_text()) for p in out.glob("*.json")}
    head = ["# Router speed: one run, side by side", "",
            f"Run {time.strftime('%Y-%m-%d %H:%M')} on {machine()}; 1-min load average {load0:.2f} at the start, "
            f"{os.getloadavg()[0]:.2f} at the end; {time.time() - t0:.0f} s in all "
            f"({', '.join(f'{k} {v:.0f} s' for k, v in timings.items())}).",
            "", f"`python benchmarks/speed_suite.py {' '.join(argv if argv is not None else sys.argv[1:])}`", "",
            "Bundles: " + ", ".join(f"{k} `{v}`" for k, v in
                                    [("quality", args.quality), ("winner", args.winner), ("tfidf", args.tfidf),
                                     ("ensemble", args.ensemble)]
                                    if v) + ".",
            "**Numbers are only meaningful when the load average above is well below the core count.**"
            + (" (`--tiny` run: smoke test only.)" if args.tiny else "")]
    write_block(args.write, MARK, "\n".join(head), first=True)
    print(args.write.read_text())
    return {"timings": timings, "results": results}


if __name__ == "__main__":
    main()
