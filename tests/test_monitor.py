"""kronaxis-monitor on synthetic decision logs: a shifted query distribution is flagged, a same-distribution one is
not; category mix, shadow quality and alerts; report.md, monitor.json and the PNG plots are written; the
two-sample tests are calibrated (p-values of same-distribution samples are not small) and the mix test exact."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kronaxis_lab.data.fleet import Fleet
from kronaxis_lab.data.tables import RoutingDataset
from kronaxis_lab.monitoring.decision_log import DecisionLog
from kronaxis_lab.monitoring.drift import mix_test, mmd_test, windows
from kronaxis_lab.monitoring.monitor import evaluate_alerts
from kronaxis_lab.monitoring.settings import DecisionLogSettings
from kronaxis_lab.pipelines.monitor import run
from kronaxis_lab.serving.detectors import default_detectors
from kronaxis_lab.serving.governance import GovernancePolicy
from tests.conftest import ROOT, compose

THINGS = ["cats", "rivers", "tea", "clouds", "bridges", "music", "stars", "trains", "gardens", "coffee"]
COOKING = ["What colour is {}?", "Tell me a fun fact about {}.", "Say hello to {} in French.",
           "Write a short poem about {}."]
LEGAL = ["Under which statute may a tenant withhold rent for {} defects?",
         "Draft an indemnification clause covering liability for damaged {}.",
         "Is an oral contract for the sale of {} enforceable under the statute of frauds?"]
FLEET = Fleet.from_config({"models": {"small": {"tier": 0, "price_in": 1, "price_out": 2},
                                      "big": {"tier": 1, "price_in": 10, "price_out": 30}}})


def texts(templates: list[str], n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [f"{rng.choice(templates).format(rng.choice(THINGS))} ({int(rng.integers(1000))})" for _ in range(n)]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    t = texts(COOKING, 400, 0)
    q = pd.DataFrame({"query_id": [f"q{i}" for i in range(len(t))], "text": t, "task": "chat",
                      "category": ["chat"] * len(t), "split": "train"})
    o = pd.DataFrame([{"query_id": f"q{i}", "model": m, "score": 1.0, "correct": True, "input_tokens": 10, "output_tokens": 10,
                       "cost_usd": 1e-5} for i in range(len(t)) for m in FLEET.names])
    return RoutingDataset(q, o, FLEET, name="ref").save(tmp_path_factory.mktemp("ref") / "ds")


def write_log(path: Path, batches: list[tuple[list[str], str | None, str]], shadow: list[dict] | None = None) -> Path:
    log = DecisionLog(DecisionLogSettings(path=str(path), store_text=True), redact=GovernancePolicy(default_detectors()).redact).start()
    k, ts = 0, 1.7e9
    for batch, category, model in batches:
        for t in batch:
            ts += 1.0
            log.record({"id": f"d{k}", "ts": ts, "endpoint": "chat", "model": model, "tier": FLEET[model].tier,
                        "policy": "threshold", "param": 0.5, "scores": {"small": 0.8, "big": 0.9},
                        "reasons": ["policy"], "cost_usd": 1e-4 if model == "small" else 1e-3, "upstream_status": 200},
                       text=t, category=category)
            k += 1
    for row in shadow or []:
        log.record_shadow(row)
    assert log.flush(30)
    log.close()
    return path


def monitor(tmp_path: Path, log_dir: Path, reference: Path, *extra: str) -> dict:
    cfg = compose("monitor", [f"decision_log={log_dir}", f"reference={reference}", "window=100",
                              "drift.permutations=200", "shadow.n_boot=300", *extra], tmp_path / "out")
    return run(cfg)


def test_same_distribution_is_not_flagged(tmp_path, reference):
    log_dir = write_log(tmp_path / "log", [(texts(COOKING, 300, 3), "chat", "small")])
    res = monitor(tmp_path, log_dir, reference)
    r = res["result"]
    assert r["n_decisions"] == 300 and r["drift"]["detected"] is False and r["drift"]["p_value"] > 0.05
    assert (r["windows"]["drift_p_value"] > 0.01).all() and len(r["windows"]) == 3
    assert r["category_mix"]["live_share"] == {"chat": 1.0} and r["category_mix"]["p_value"] is None  # one category
    assert not r["alerts"]
    assert r["premium_share"] is None  # no bundle: no premium model known


def test_a_shift_is_flagged_with_report_json_and_plots(tmp_path, reference):
    shadow = [{"decision_id": f"d{i}", "ts": 1.8e9 + i, "status": "graded", "mode": "reference",
               "reference_model": "big", "routed_model": "small", "routed_tier": 0, "other_model": "big",
               "other_tier": 1, "routed_score": float(i % 4 != 0), "other_score": 1.0, "pass_score": 0.5,
               "routed_cost_usd": 1e-4, "other_cost_usd": 1e-3, "shadow_cost_usd": 1e-3} for i in range(200, 280)]
    log_dir = write_log(tmp_path / "log", [(texts(COOKING, 200, 2), "chat", "small"),
                                           (texts(LEGAL, 200, 3), "legal", "small")], shadow)
    res = monitor(tmp_path, log_dir, reference)
    r, paths = res["result"], res["paths"]
    assert r["drift"]["detected"] is True and r["drift"]["p_value"] < 0.01
    p = r["windows"]["drift_p_value"].tolist()
    assert p[0] > 0.01 and p[1] > 0.01 and p[2] < 0.01 and p[3] < 0.01  # the shift starts at window 2
    assert r["category_mix"]["p_value"] < 1e-6 and r["category_mix"]["live_share"]["legal"] == 0.5
    s = r["shadow"]
    assert s["n_graded"] == 80 and s["escalations_missed_rate"]["value"] == pytest.approx(0.25)
    lo, hi = s["escalations_missed_rate"]["ci"]
    assert lo < 0.25 < hi
    fired = {a["alert"] for a in r["alerts"]}
    assert {"drift_p_value", "category_p_value", "escalations_missed_rate", "quality_vs_reference"} <= fired
    out = Path(paths["report"]).parent
    for name in ("report.md", "monitor.json", "mix_over_time.png", "cost_over_time.png", "drift_over_time.png",
                 "category_mix.png", "shadow.png", "reference_sketch.npz"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert (out / "mix_over_time.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    js = json.loads((out / "monitor.json").read_text())
    assert js["n_decisions"] == 400 and js["drift"]["detected"] is True and "premium_share" in js
    assert js["shadow"]["escalations_missed_rate"]["ci"] == [lo, hi] and len(js["windows"]) == 4
    md = (out / "report.md").read_text()
    assert "**drift_p_value**" in md and "| escalations missed rate |" in md and "![shadow](shadow.png)" in md


def test_command_contract(tmp_path, reference):
    """`kronaxis-monitor decision_log=<log dir> ... hydra.run.dir=<out>` writes report.md, monitor.json, plots."""
    log_dir = write_log(tmp_path / "log", [(texts(LEGAL, 150, 4), None, "big")])
    exe = Path(sys.executable).with_name("kronaxis-monitor")
    cmd = [str(exe)] if exe.is_file() else [sys.executable, "-m", "kronaxis_lab.pipelines.monitor"]
    out = tmp_path / "cli"
    proc = subprocess.run([*cmd, f"decision_log={log_dir}", f"reference={reference}", f"hydra.run.dir={out}",
                           "drift.permutations=100", "fail_on_alert=true"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 1, proc.stderr[-2000:]  # the shift fires an alert: exit status 1 as asked
    js = json.loads((out / "monitor.json").read_text())
    assert js["drift"]["detected"] is True and js["n_decisions"] == 150 and (out / "report.md").is_file()
    assert '"detected": true' in proc.stdout
    bad = subprocess.run([*cmd, f"decision_log={tmp_path / 'nope'}", f"hydra.run.dir={out}-2"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "no decision log" in bad.stderr and "Traceback" not in bad.stderr


def test_mmd_is_calibrated_and_powerful():
    rng = np.random.default_rng(0)
    null_p = [mmd_test(rng.normal(size=(80, 8)), rng.normal(size=(60, 8)), 200, seed=s)["p_value"] for s in range(40)]
    assert 0.02 <= np.mean(np.array(null_p) < 0.1) <= 0.25 and min(null_p) >= 1 / 201
    shifted = mmd_test(rng.normal(size=(80, 8)), rng.normal(size=(60, 8)) + 0.8, 200)
    assert shifted["p_value"] == pytest.approx(1 / 201) and shifted["mmd2"] > 0
    assert mmd_test(np.zeros((1, 3)), np.zeros((5, 3)))["p_value"] is None
    with pytest.raises(ValueError, match="samples"):
        mmd_test(np.zeros((4, 3)), np.zeros((4, 2)))


def test_mix_test_windows_and_alerts():
    from scipy.stats import chi2_contingency

    t = mix_test({"a": 50, "b": 50}, {"a": 80, "b": 20, "c": 0})
    assert t["p_value"] == pytest.approx(chi2_contingency([[50, 50], [80, 20]])[1]) and t["dof"] == 1
    assert t["live_share"] == {"a": 0.8, "b": 0.2}
    assert mix_test({"a": 5}, {"a": 7})["p_value"] is None
    assert [(s.start, s.stop) for s in windows(240, 100)] == [(0, 100), (100, 240)]  # a short tail joins
    assert [(s.start, s.stop) for s in windows(260, 100)] == [(0, 100), (100, 200), (200, 260)]
    res = {"drift": {"p_value": 0.001}, "premium_share_delta": 0.05, "shadow": {"quality_vs_reference": {"value": 0.7}}}
    fired = evaluate_alerts(res, {"drift_p_value": 0.01, "premium_share_delta": 0.1, "quality_vs_reference": 0.9,
                                  "escalations_missed_rate": 0.1, "usd_per_1k_ratio": None})
    assert [a["alert"] for a in fired] == ["drift_p_value", "quality_vs_reference"]
