"""Governance scan speed: the default detectors on adversarial blobs (backtracking bait) and on the labelled corpus.

    .venv/bin/python benchmarks/governance_scan.py [--sizes 12500,25000,50000] [--repeat 3]
        [--write benchmarks/governance_scan.md]

For each blob kind (the pasted logs/keys/digit runs of tests/test_governance.py::test_no_catastrophic_backtracking)
and each size, the best of `--repeat` scans (`GovernancePolicy.detect([blob])`, this thread's CPU time, so other
jobs on a shared machine hardly move it) is reported with its rate in chars/ms. A linear scan keeps the rate flat
as the size doubles; a pattern that backtracks shows it falling (quadratic: halving with every doubling). The
router scans every string of every request, so the corpus row gives the per-request cost of typical texts.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import string
import sys
import time
from pathlib import Path

from kronaxis_lab.serving.detectors import default_detectors
from kronaxis_lab.serving.governance import GovernancePolicy

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "tests" / "fixtures" / "governance_corpus.jsonl"


def blob(kind: str, n: int, rng: random.Random) -> str:
    if kind == "base64":
        return "".join(rng.choice(string.ascii_letters + string.digits + "+/") for _ in range(n))
    if kind == "digits":
        return "".join(rng.choice(string.digits) for _ in range(n))
    if kind == "phone-ish":
        return "+" + "".join(rng.choice(string.digits + "  +") for _ in range(n))
    if kind == "dotted":
        return ".".join("abc" for _ in range(n // 4))
    if kind == "assignment":
        return "x" * n + " = 1"
    words = ["call me", "at", "key", "token", "is", "password", "dot", "com"]
    return " ".join(rng.choice(words) for _ in range(n // 5))  # keywords


KINDS = ("base64", "digits", "phone-ish", "dotted", "assignment", "keywords")


def cpu_time(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.thread_time()
        fn()
        best = min(best, time.thread_time() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="12500,25000,50000", help="blob lengths in characters")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--write", default=None, help="append a markdown result section to this file")
    args = ap.parse_args()
    policy = GovernancePolicy(default_detectors())
    sizes = [int(x) for x in args.sizes.split(",")]
    rng = random.Random(2)
    lines = ["| input | chars | CPU ms | chars/ms |", "|---|---|---|---|"]
    for kind in KINDS:
        for n in sizes:
            text = blob(kind, n, rng)
            s = cpu_time(lambda text=text: policy.detect([text]), args.repeat)
            lines.append(f"| {kind} | {len(text):,} | {s * 1000:.1f} | {len(text) / max(s * 1000, 1e-9):,.0f} |")
    texts = [json.loads(x)["text"] for x in CORPUS.read_text().splitlines() if x]
    s = cpu_time(lambda: policy.detect(texts), args.repeat)
    chars = sum(map(len, texts))
    lines.append(f"| corpus ({len(texts)} texts, {s * 1e6 / len(texts):.0f} µs per text) | {chars:,} | {s * 1000:.1f} "
                 f"| {chars / max(s * 1000, 1e-9):,.0f} |")
    table = "\n".join(lines)
    print(table)
    if args.write:
        cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                    if ln.startswith("model name")), platform.machine()) if Path("/proc/cpuinfo").exists() \
            else platform.machine()
        command = " ".join(["python", "benchmarks/governance_scan.py", *sys.argv[1:]])
        with open(args.write, "a") as f:
            f.write(f"\n### {time.strftime('%Y-%m-%d %H:%M')} — `{command}`\n\nMachine: {cpu}, {os.cpu_count()} "
                    f"cores, Python {platform.python_version()}; 1-min load average {os.getloadavg()[0]:.1f}.\n\n"
                    f"{table}\n")


if __name__ == "__main__":
    main()
