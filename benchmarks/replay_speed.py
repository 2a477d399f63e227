"""Replay speed: 1M synthetic queries × 11 models × 100 policy points through the replay engine.

    .venv/bin/python benchmarks/replay_speed.py [--n 1000000] [--m 11] [--k 100] [--write benchmarks/replay_speed.md]

Goal: ≤ 10 s on 2 cores for the engine (policy sweep → choices → cost/quality per point → hull, AIQ,
APGR-free N-model summary), measured from wide matrices. Building those matrices from a long outcome
table (pivot) is timed separately.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import pandas as pd

from kronaxis_lab.data.fleet import Fleet
from kronaxis_lab.data.tables import Matrices
from kronaxis_lab.routing.policies import WillingnessToPay
from kronaxis_lab.routing.replay import replay_matrices
from kronaxis_lab.routing.routers import OracleRouter, PolicyRouter, Predictor, RandomRouter


class NoisyTruth(Predictor):
    """Synthetic predictions: the true score plus noise (a stand-in for a trained classifier)."""

    def __init__(self, P):
        self.P = P

    def predict(self, ctx, mats=None):
        return self.P


def synthetic(n: int, m: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    skill = np.linspace(0.3, 0.9, m)
    difficulty = rng.random(n)
    p = np.clip(skill[None, :] + 0.5 - difficulty[:, None], 0, 1)
    correct = rng.random((n, m)) < p
    price = np.geomspace(0.1, 30.0, m) / 1e6
    tokens = rng.integers(50, 800, size=(n, 1)).astype(float)
    costs = tokens * price[None, :]
    fleet = Fleet.from_config({"models": {f"m{j:02d}": {"tier": j, "price_in": price[j] * 1e6, "price_out": price[j] * 1e6} for j in range(m)}})
    q = pd.DataFrame({"query_id": np.arange(n).astype(str), "task": "synthetic", "category": "synthetic"})
    mat = Matrices(queries=q, model_names=fleet.names, scores=correct.astype(float), correct=correct, costs=costs,
                   input_tokens=np.repeat(tokens, m, axis=1), output_tokens=np.zeros((n, m)))
    P = np.clip(p + rng.normal(0, 0.15, size=p.shape), 0, 1)
    return fleet, mat, P


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--m", type=int, default=11)
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--write", default=None)
    a = ap.parse_args()
    t0 = time.perf_counter()
    fleet, mat, P = synthetic(a.n, a.m)
    t_data = time.perf_counter() - t0

    routers = [OracleRouter(), RandomRouter(num=21), PolicyRouter(NoisyTruth(P), WillingnessToPay(num=a.k), "noisy+wtp")]
    t0 = time.perf_counter()
    res = replay_matrices(mat, fleet, routers, train=mat, dataset="synthetic")  # synthetic: priced on itself
    t_replay = time.perf_counter() - t0
    r = res.routers["noisy+wtp"]
    assert len(r["curve"]) == a.k

    # the long → wide pivot on a 100k slice, for scale
    n_p = min(a.n, 100_000)
    long = pd.DataFrame({"query_id": np.repeat(np.arange(n_p), a.m), "model": np.tile(fleet.names, n_p),
                         "score": mat.scores[:n_p].ravel()})
    t0 = time.perf_counter()
    long.pivot(index="query_id", columns="model", values="score")
    t_pivot = time.perf_counter() - t0

    rows = [("synthetic data generation", t_data), (f"replay engine: {a.n:,} queries × {a.m} models × {a.k}-point λ sweep "
             "+ oracle + 21-point random (choices, cost/quality per point, hull, AIQ, summaries)", t_replay),
            (f"long→wide pivot of {n_p:,} queries × {a.m} models (pandas)", t_pivot)]
    cmd = f".venv/bin/python benchmarks/replay_speed.py --n {a.n} --m {a.m} --k {a.k}"
    lines = ["# Replay speed", "", f"- machine: {platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}, numpy {np.__version__}",
             f"- command: `{cmd}`", "- goal: replay engine ≤ 10 s",
             f"- load average when it finished (1/5/15 min): {' / '.join(f'{x:.1f}' for x in os.getloadavg())} "
             "(other jobs on the 2 cores inflate every number)", "", "| step | seconds |", "|---|---:|"]
    lines += [f"| {s} | {t:.2f} |" for s, t in rows]
    lines += ["", f"Result: the engine took **{t_replay:.2f} s** ({'meets' if t_replay <= 10 else 'MISSES'} the 10 s goal).",
              f"AIQ of the noisy router {r['aiq']:.4f}, oracle accuracy {res.routers['oracle']['accuracy']:.4f}."]
    text = "\n".join(lines) + "\n"
    print(text)
    if a.write:
        with open(a.write, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
