"""Closing the loop on live traffic, end to end on 127.0.0.1 (issue 13): serve → log → monitor → retrain → promote.

    .venv/bin/python benchmarks/monitoring.py [--work DIR] [--write benchmarks/monitoring.md]

tests/test_live_loop_e2e.py runs the same `run_scenario` and asserts on its numbers.

The world: a two-model fleet (weak: tier 0, cheap; strong: tier 1, the premium) and recorded outcomes.
Arithmetic questions ("What is 17 plus 25?") are answered correctly by both models, proof/derivation requests
only by the strong one (weak: 10 %). A TF-IDF router trained on them (kronaxis-train classifier=tfidf_logreg,
exported with the threshold policy at τ = 0.5) sends arithmetic to weak and proofs to strong.

1. The bundle is served by the real `kronaxis-serve bundle=<dir> ... decision_log.path=<log dir>` in front of two
   recorded-outcome upstreams (`kronaxis_lab.backends.openai_server` over `ReplayBackend`: each answers what
   its model recorded for the request's `user` = query id), with shadow evaluation on every answered request
   (`shadow.sample_rate=1.0`; the default grader: agreement with the reference model's answer) and the
   server's drift gauge on (`decision_log.drift_reference`).
2. Phase 1: traffic from the training distribution (new questions from its templates).
3. Phase 2: word problems about trains, pharmacies and warehouses, a task the bundle never saw; both models
   read them as "What is ..." questions, the weak one gets 10 % right. The old bundle sends most to weak.
4. `kronaxis-monitor decision_log=<log> bundle=<bundle>`: after phase 1, and after phase 2 (drift flagged; shadow
   measures the quality drop); it writes the graded rows as a `dataset=saved` directory, old + new combined.
5. kronaxis-train on the combined rows → kronaxis-export → `kronaxis-monitor ... candidate=<new bundle>` compares
   old and new on the fresh test rows (the promote decision) → phase 3: the new bundle served with phase-2
   traffic (new questions), shadow-evaluated again.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

from kronaxis_lab.data.fleet import Fleet
from kronaxis_lab.data.splits import DEFAULT_SPLIT, hash_splits, question_keys
from kronaxis_lab.data.tables import RoutingDataset
from kronaxis_lab.monitoring.decision_log import read_decision_log
from kronaxis_lab.monitoring.monitor import Reference, write_reference_sketch
from kronaxis_lab.monitoring.shadow import shadow_summary
from kronaxis_lab.pipelines import export, train
from kronaxis_lab.pipelines import monitor as monitor_pipeline
from kronaxis_lab.pipelines.common import CONFIG_DIR

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
FLEET = {"weak": {"tier": 0, "price_in": 0.5, "price_out": 1.5, "data_classes": ["*"]},
         "strong": {"tier": 1, "price_in": 10.0, "price_out": 30.0, "data_classes": ["*"]}}
EASY = ["What is {a} plus {b}?", "What is the sum of {a} and {b}?", "Add {a} and {b}: what is the total?",
        "What do you get when you add {a} to {b}?"]
HARD = ["Prove that the recurrence x(n+1) = x(n) + {a} with x(0) = {b} has a unique closed form and give x(10).",
        "Derive rigorously, lemma by lemma, the fixed point of the map t -> {a} - t/{b} and prove uniqueness.",
        "Prove by induction that the sum of the first {a} odd numbers is a perfect square; state it for n = {b}."]
SHIFT = ["What is the number of containers a freight train from {city} delivers if it loads {a} and unloads "
         "{b} at each of three stations?",
         "What is the dose in millilitres a pharmacist in {city} prepares from {a} tablets dissolved in {b} ml?",
         "What is the count of pallets left in the {city} warehouse after {a} arrive and {b} ship twice?"]
CITIES = ["Lyon", "Porto", "Graz", "Turku", "Leeds", "Bergen", "Split", "Cork", "Ghent", "Malmo"]
P_CORRECT = {"easy": {"weak": 0.95, "strong": 0.97}, "hard": {"weak": 0.1, "strong": 0.95},
             "shift": {"weak": 0.1, "strong": 0.95}}
N_TRAIN, N_PHASE = 360, 160  # training queries; requests per traffic phase
WINDOW = 80  # decisions per monitor window


# ---------------------------------------------------------------------------------------------------
# the world: training data, traffic and what each model answers
# ---------------------------------------------------------------------------------------------------
def _queries(kind: str, n: int, rng: np.random.Generator, prefix: str) -> pd.DataFrame:
    templates = {"easy": EASY, "hard": HARD, "shift": SHIFT}[kind]
    rows = []
    for i in range(n):
        a, b = int(rng.integers(2, 99)), int(rng.integers(2, 99))
        text = templates[i % len(templates)].format(a=a, b=b, city=CITIES[int(rng.integers(len(CITIES)))])
        rows.append({"query_id": f"{prefix}{i}", "text": text, "task": kind, "category": kind,
                     "gold": str(int(rng.integers(10, 9999)))})
    return pd.DataFrame(rows)


def _outcomes(q: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    """Per (query, model): correct with P_CORRECT; the answer text ends in the gold number, or in a wrong one."""
    rows = []
    for qid, task, gold in zip(q["query_id"], q["task"], q["gold"]):
        for m, spec in FLEET.items():
            ok = bool(rng.random() < P_CORRECT[task][m])
            n_in, n_out = 24, 12 if m == "weak" else 16
            answer = int(gold) if ok else int(gold) + int(rng.integers(1, 50))
            rows.append({"query_id": qid, "model": m, "response": f"Working it through, the answer is {answer}.",
                         "score": float(ok), "correct": ok, "input_tokens": n_in, "output_tokens": n_out,
                         "cost_usd": (n_in * spec["price_in"] + n_out * spec["price_out"]) / 1e6, "latency_s": 0.05,
                         "error": None})
    return pd.DataFrame(rows)


@dataclass
class World:
    train: RoutingDataset  # what the first bundle learns from
    phases: dict[str, pd.DataFrame]  # traffic queries per phase
    recorded: pd.DataFrame  # every (traffic query, model) answer the upstreams replay


def make_world(seed: int = 0) -> World:
    rng = np.random.default_rng(seed)
    q = pd.concat([_queries("easy", N_TRAIN // 2, rng, "te"), _queries("hard", N_TRAIN // 2, rng, "th")],
                  ignore_index=True)
    q["split"] = hash_splits(question_keys(q["text"]), DEFAULT_SPLIT["fractions"], DEFAULT_SPLIT["seed"]).values
    train = RoutingDataset(q, _outcomes(q, rng), Fleet.from_config({"models": FLEET}), name="arith_proofs")
    p1 = pd.concat([_queries("easy", N_PHASE // 2, rng, "p1e"), _queries("hard", N_PHASE // 2, rng, "p1h")],
                   ignore_index=True).sample(frac=1.0, random_state=seed).reset_index(drop=True)
    phases = {"phase1": p1, "phase2": _queries("shift", N_PHASE, rng, "p2s"),
              "phase3": _queries("shift", N_PHASE, rng, "p3s")}
    traffic = pd.concat(phases.values(), ignore_index=True)
    return World(train, phases, _outcomes(traffic, rng))


# ---------------------------------------------------------------------------------------------------
# processes and pipelines
# ---------------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proc:
    """A server subprocess on 127.0.0.1 (log file beside it), healthy when `health` answers 200."""

    def __init__(self, cmd: list[str], log: Path, port: int, health: str, timeout: float = 300) -> None:
        self.url, self.log = f"http://127.0.0.1:{port}", log
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_WAIT_POLICY": "PASSIVE"}
        self.proc = subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT, cwd=ROOT, env=env,
                                     start_new_session=True)
        deadline = time.time() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{cmd[:3]} exited with {self.proc.returncode}:\n{log.read_text()[-4000:]}")
            try:
                if httpx.get(self.url + health, timeout=2).status_code == 200:
                    return
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
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def compose(name: str, overrides: list[str], out: Path):
    """A root config of configs/ as its console script composes it, with the run dir set to `out`."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = hydra_compose(config_name=name, overrides=overrides, return_hydra_config=True)
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(out)
        del cfg["hydra"]
    return cfg


def train_and_export(dataset_dir: Path, work: Path, name: str) -> Path:
    train.run(compose("train", ["dataset=saved", f"dataset.path={dataset_dir}", "classifier=tfidf_logreg",
                                "classifier.show_progress=false"], work / f"train-{name}"))
    cfg = compose("export", [f"run_dir={work / f'train-{name}'}", "policy=threshold",
                             "+policies.threshold.params=[0.5]", "metrics.n_boot=50", "parity.n=48"],
                  work / f"export-{name}")
    return Path(export.run(cfg)["bundle_dir"])


def monitor(work: Path, name: str, log_dir: Path, bundle: Path, *extra: str, cli: bool = False) -> dict[str, Any]:
    """`kronaxis-monitor decision_log=<log> bundle=<bundle> hydra.run.dir=<out>` (the command, or its run(cfg))."""
    out = work / f"monitor-{name}"
    args = [f"decision_log={log_dir}", f"bundle={bundle}", f"window={WINDOW}", *extra]
    if cli:
        proc = subprocess.run([str(BIN / "kronaxis-monitor"), *args, f"hydra.run.dir={out}"], cwd=ROOT,
                              capture_output=True, text=True, timeout=600,
                              env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
        if proc.returncode != 0:
            raise RuntimeError(f"kronaxis-monitor failed:\n{proc.stderr[-4000:]}")
    else:
        monitor_pipeline.run(compose("monitor", args, out))
    return {"dir": out, **json.loads((out / "monitor.json").read_text())}


def replay_upstream(model: str, recorded: Path, work: Path) -> Proc:
    port = free_port()
    cmd = [sys.executable, "-m", "kronaxis_lab.backends.openai_server", "--backend-config",
           str(ROOT / "configs/backend/replay.yaml"), "--port", str(port), "--served-model-name", f"{model}-recorded",
           "--batch-window-ms", "2", f"model={model}", f"outcomes={recorded}"]
    return Proc(cmd, work / f"upstream-{model}.log", port, "/health", timeout=180)


def serve(bundle: Path, work: Path, name: str, ups: dict[str, Proc], log_dir: Path, reference: Path) -> Proc:
    """The command contract: kronaxis-serve bundle=<dir> ... decision_log.path=<log dir>."""
    conf = work / "conf" / "upstreams"
    conf.mkdir(parents=True, exist_ok=True)
    (conf / "recorded.yaml").write_text(json.dumps({
        "_target_": "kronaxis_lab.serving.upstreams.Upstreams",
        "models": {m: {"endpoints": [{"name": f"rec-{m}", "base_url": p.url + "/v1", "model": f"{m}-recorded"}]}
                   for m, p in ups.items()},
        "client": {"mode": "chat", "timeout_s": 60, "max_retries": 1}}))
    port = free_port()
    cmd = [str(BIN / "kronaxis-serve"), f"bundle={bundle}", "server.host=127.0.0.1", f"server.port={port}",
           f"hydra.run.dir={work / ('hydra-' + name)}", f"hydra.searchpath=[file://{work / 'conf'}]",
           "upstreams=recorded", "settings.session.use_user_field=false",  # `user` carries the query id
           f"decision_log.path={log_dir}", "decision_log.store_text=true", f"decision_log.drift_reference={reference}",
           f"decision_log.drift_window={WINDOW}", "decision_log.drift_every=40",
           "shadow.enabled=true", "shadow.sample_rate=1.0", "shadow.budget_usd_per_hour=1.0"]
    return Proc(cmd, work / f"serve-{name}.log", port, "/healthz")


def metric(text: str, name: str, labels: str = "") -> float | None:
    m = re.search(rf"^{re.escape(name)}{re.escape(labels)} (\S+)$", text, re.MULTILINE)
    return float(m.group(1)) if m else None


def send(router: Proc, q: pd.DataFrame) -> dict[str, Any]:
    """Every query of a phase as a chat request (`user` = its query id, `metadata.category` = its task); then
    wait until the shadow evaluated every sampled answer."""
    t0 = time.time()
    models = []
    with httpx.Client(base_url=router.url, timeout=60) as c:
        for qid, text, task in zip(q["query_id"], q["text"], q["task"]):
            r = c.post("/v1/chat/completions", json={"model": "kronaxis/auto", "user": qid, "max_tokens": 32,
                                                     "metadata": {"category": task},
                                                     "messages": [{"role": "user", "content": text}]})
            r.raise_for_status()
            models.append(r.headers["x-kronaxis-model"])
        deadline = time.time() + 300
        while True:
            m = c.get("/metrics").text
            sampled = metric(m, "kronaxis_shadow_requests_total", '{status="sampled"}') or 0
            done = sum(float(v) for s, v in re.findall(r'^kronaxis_shadow_requests_total\{status="(\w+)"\} (\S+)$', m,
                                                       re.MULTILINE) if s != "sampled")
            if done >= sampled or time.time() > deadline:
                break
            time.sleep(0.5)
    time.sleep(1.5)  # the decision log's writer flushes every 0.5 s
    return {"t_start": t0, "t_end": time.time(), "models": models, "metrics": m}


# ---------------------------------------------------------------------------------------------------
# the scenario
# ---------------------------------------------------------------------------------------------------
def _phase_numbers(log_dir: Path, t0: float, t1: float, premium: str) -> dict[str, Any]:
    data = read_decision_log(log_dir)
    d = data.decisions[(data.decisions["ts"] >= t0) & (data.decisions["ts"] <= t1)]
    sh = data.shadow[data.shadow["decision_id"].isin(d["id"])]
    return {"n": int(len(d)), "premium_share": float((d["model"] == premium).mean()),
            "usd_per_1k": float(1000 * pd.to_numeric(d["cost_usd"]).mean()),
            "shadow": shadow_summary(sh, n_boot=1000, seed=0)}


def run_scenario(work: Path, seed: int = 0) -> dict[str, Any]:
    work.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    world = make_world(seed)
    data_dir = world.train.save(work / "dataset")
    recorded = work / "recorded.parquet"
    world.recorded.to_parquet(recorded, index=False)
    old = train_and_export(data_dir, work, "old")
    ref = write_reference_sketch(Reference.build(world.train.queries[world.train.queries["split"] == "train"]).sketch,
                                 work / "reference_sketch.npz")
    ups = {m: replay_upstream(m, recorded, work) for m in FLEET}
    res: dict[str, Any] = {"seed": seed, "n_train": int(len(world.train.queries)), "n_phase": N_PHASE,
                           "window": WINDOW, "phases": {}}
    log_dir = work / "log"
    router = None
    try:
        router = serve(old, work, "old", ups, log_dir, ref)
        p1 = send(router, world.phases["phase1"])
        res["phases"]["phase1"] = _phase_numbers(log_dir, p1["t_start"], p1["t_end"], "strong")
        res["phases"]["phase1"]["gauge_drift_p_value"] = metric(p1["metrics"], "kronaxis_drift_p_value")
        res["monitor1"] = monitor(work, "1", log_dir, old, cli=True)
        p2 = send(router, world.phases["phase2"])
        res["phases"]["phase2"] = _phase_numbers(log_dir, p2["t_start"], p2["t_end"], "strong")
        res["phases"]["phase2"]["gauge_drift_p_value"] = metric(p2["metrics"], "kronaxis_drift_p_value")
        res["phases"]["phase2"]["gauges"] = {k: metric(p2["metrics"], f"kronaxis_shadow_{k}") for k in (
            "escalations_missed_rate", "premium_wasted_rate", "quality_vs_reference")}
    finally:
        if router is not None:
            router.stop()
    res["monitor2"] = monitor(work, "2", log_dir, old)
    combined = Path(res["monitor2"]["retrain"]["combined_dir"])
    new = train_and_export(combined, work, "new")
    res["monitor3"] = monitor(work, "3", log_dir, old, f"candidate={new}")
    log3 = work / "log-new"
    router = None
    try:
        router = serve(new, work, "new", ups, log3, ref)
        p3 = send(router, world.phases["phase3"])
        res["phases"]["phase3"] = _phase_numbers(log3, p3["t_start"], p3["t_end"], "strong")
    finally:
        if router is not None:
            router.stop()
        for p in ups.values():
            p.stop()
    res["bundles"] = {"old": json.loads((old / "router.json").read_text())["bundle_id"],
                      "new": json.loads((new / "router.json").read_text())["bundle_id"]}
    res["wall_s"] = time.time() - t_start
    return res


# ---------------------------------------------------------------------------------------------------
# the table
# ---------------------------------------------------------------------------------------------------
def _f(x: Any, pct: bool = False) -> str:
    if x is None or (isinstance(x, float) and not np.isfinite(x)):
        return "—"
    return f"{x:.1%}" if pct else f"{x:.3g}"


def _ci(s: dict | None, pct: bool = True) -> str:
    if not s or s.get("value") is None:
        return "—"
    lo, hi = s["ci"]
    return f"{_f(s['value'], pct)} [{_f(lo, pct)}, {_f(hi, pct)}]"


def markdown(res: dict[str, Any], command: str) -> str:
    m1, m2, m3 = res["monitor1"], res["monitor2"], res["monitor3"]
    ph = res["phases"]
    lines = [
        "# Closing the loop: decision log → shadow evaluation → drift monitor → retrain → promote",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores (shared), Python {platform.python_version()}. "
        f"Command: `{command}` ({res['wall_s']:.0f} s wall). The same scenario is tests/test_live_loop_e2e.py.",
        "",
        "Setup (benchmarks/monitoring.py): fleet weak (tier 0, $0.5/$1.5 per 1M tokens) and strong (tier 1, premium, "
        "$10/$30). A TF-IDF router (`classifier=tfidf_logreg`, threshold policy τ = 0.5) trained on "
        f"{res['n_train']} recorded arithmetic questions (both models right) and proof requests (weak right 10 %). "
        "Served by `kronaxis-serve ... decision_log.path=<log>` in front of two recorded-outcome upstreams "
        "(`ReplayBackend`), shadow evaluation of every answer (`shadow.sample_rate=1.0`: a sample in production; "
        "grader: agreement with the reference model's answer). "
        f"{res['n_phase']} requests per phase; windows of {res['window']} decisions. Phase 2 and 3: word problems "
        "(\"What is the number of containers a freight train ...\") the first bundle never saw; weak right 10 %.",
        "",
        "## Per phase",
        "",
        "| phase | bundle | premium share | $ per 1k | drift p (monitor, latest window) | drift gauge p | "
        "quality vs reference [95 % CI] | escalations missed [CI] | premium wasted [CI] | live CPAO ($) [CI] |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    drift = {"phase1": m1["drift"]["p_value"], "phase2": m2["drift"]["p_value"], "phase3": None}
    for name, bundle in (("phase1", "old"), ("phase2", "old"), ("phase3", "new")):
        p = ph[name]
        s = p["shadow"]
        lines.append(f"| {name} | {bundle} | {_f(p['premium_share'], True)} | {_f(p['usd_per_1k'])} | "
                     f"{_f(drift[name])} | {_f(p.get('gauge_drift_p_value'))} | {_ci(s.get('quality_vs_reference'))} | "
                     f"{_ci(s.get('escalations_missed_rate'))} | {_ci(s.get('premium_wasted_rate'))} | "
                     f"{_ci(s.get('cpao_live'), False)} |")
    lines += ["", "## Monitor", "",
              f"- after phase 1: drift detected **{m1['drift']['detected']}** (MMD p = {_f(m1['drift']['p_value'])}), "
              f"alerts {[a['alert'] for a in m1['alerts']] or 'none'}",
              f"- after phase 2: drift detected **{m2['drift']['detected']}** (MMD p = {_f(m2['drift']['p_value'])}, "
              f"score drift p = {_f((m2.get('score_drift') or {}).get('p_value'))}, category χ² p = "
              f"{_f((m2.get('category_mix') or {}).get('p_value'))}), alerts {[a['alert'] for a in m2['alerts']]}",
              f"- retraining rows: {m2['retrain']['fresh_queries']} fresh queries (splits {m2['retrain']['splits']}) "
              "+ the training dataset → `kronaxis-train dataset=saved dataset.path=<monitor>/retrain/combined`"]
    cmp_ = m3["compare"]
    lines += ["", f"## Old vs new bundle on the fresh `{cmp_['split']}` rows ({cmp_['n_queries']} queries)", "",
              "| bundle | accuracy [CI] | $ per 1k [CI] | premium share | escalations missed |", "|---|---|---|---|---|"]
    for label, b in cmp_["bundles"].items():
        lines.append(f"| {label} `{b['bundle_id']}` | {_ci(b['accuracy'])} | {_ci(b['usd_per_1k'], False)} | "
                     f"{_ci(b['premium_share'])} | {_ci(b['escalations_missed_rate'])} |")
    d = cmp_["differences"]["candidate"]
    lines += ["", f"candidate − current: accuracy {_ci(d['accuracy'])}, $ per 1k {_ci(d['usd_per_1k'], False)} → "
              f"promote: **{d['promote']}**", "",
              "## Reading the numbers", "",
              "- *quality vs reference* = mean routed score / mean reference score over the shadowed rows; with the "
              "agreement grader the reference (strong) answer scores 1 by construction, so a request routed to the "
              "reference counts as 100 % (phase 3). An LLM judge (`+grader@shadow.grader=llm_judge "
              "shadow.judge_model=<fleet model>`) rates both answers instead.",
              "- *escalations missed*: routed below the reference, failed where the reference passed (over requests "
              "routed below); *premium wasted*: routed to the reference tier while the cheaper model's answer agreed "
              "(over requests routed there); *live CPAO*: reported $ of the routed answers / routed answers that "
              "passed. CIs: percentile bootstrap over the phase's requests (1,000 resamples).",
              "- *drift p*: MMD permutation test of the latest window's query sketches against the bundle's training "
              "queries (`kronaxis-monitor`); *drift gauge p*: the server's own `kronaxis_drift_p_value` at the end "
              "of the phase (its last `decision_log.drift_window` decisions).",
              "- The promote decision is the replay of both bundles on the fresh test rows (recorded outcomes of "
              "the shadow-graded requests, never trained on): the candidate costs more per request because the "
              "shifted task needs the premium model; what it buys is the accuracy the old bundle lost.", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="outputs/benchmarks/monitoring")
    ap.add_argument("--write", default=None)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    res = run_scenario(Path(args.work), args.seed)
    md = markdown(res, ".venv/bin/python benchmarks/monitoring.py --write benchmarks/monitoring.md")
    print(md)
    if args.write:
        Path(args.write).write_text(md)
        Path(args.write).with_suffix(".json").write_text(json.dumps(
            {k: v for k, v in res.items() if not k.startswith("monitor")}
            | {k: {kk: res[k][kk] for kk in ("drift", "alerts", "premium_share", "shadow", "compare", "retrain")
                   if kk in res[k]} for k in ("monitor1", "monitor2", "monitor3")}, indent=2, default=str))


if __name__ == "__main__":
    main()
