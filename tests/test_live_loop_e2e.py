"""The whole loop on 127.0.0.1 (issue 13): a served bundle logs its decisions, shadow evaluation measures its
answers, the monitor flags a shift of the traffic, retraining on the shadow-graded rows recovers the quality and
the promote decision is measured. The scenario is benchmarks/monitoring.py (`run_scenario`; its numbers are
benchmarks/monitoring.md): real `kronaxis-serve ... decision_log.path=<dir>` and `kronaxis-monitor` processes,
recorded-outcome upstreams, a TF-IDF bundle trained and exported by the real pipelines.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.monitoring import N_PHASE, run_scenario
from kronaxis_lab.monitoring.decision_log import read_decision_log


@pytest.fixture(scope="module")
def res(tmp_path_factory) -> dict:
    return run_scenario(tmp_path_factory.mktemp("live_loop"))


def _ci(stat: dict) -> tuple[float, float]:
    return tuple(stat["ci"])


@pytest.mark.slow
def test_the_decision_log_holds_every_decision(res):
    m1 = res["monitor1"]
    log_dir = Path(m1["files"][0]).parent
    data = read_decision_log(log_dir)
    assert len(data.decisions) == 2 * N_PHASE and data.decisions["text"].notna().all()  # store_text=true
    assert (data.decisions["upstream_status"] == 200).all() and data.decisions["cost_usd"].gt(0).all()
    assert set(data.decisions["bundle_id"]) == {res["bundles"]["old"]}
    assert len(data.shadow) == 2 * N_PHASE and (data.shadow["status"] == "graded").all()


@pytest.mark.slow
def test_phase_1_is_not_flagged(res):
    m1, p1 = res["monitor1"], res["phases"]["phase1"]
    assert m1["n_decisions"] == N_PHASE and m1["drift"]["detected"] is False and m1["drift"]["p_value"] > 0.05
    assert not m1["alerts"], m1["alerts"]
    assert p1["gauge_drift_p_value"] > 0.05  # the server's own gauge agrees
    assert p1["shadow"]["quality_vs_reference"]["value"] > 0.9 and 0.3 < p1["premium_share"] < 0.7


@pytest.mark.slow
def test_phase_2_shift_is_flagged_and_the_quality_drop_measured(res):
    m2, p1, p2 = res["monitor2"], res["phases"]["phase1"], res["phases"]["phase2"]
    assert m2["drift"]["detected"] is True and m2["drift"]["p_value"] < 0.01
    assert {"drift_p_value", "escalations_missed_rate", "quality_vs_reference", "category_p_value"} <= \
        {a["alert"] for a in m2["alerts"]}
    assert p2["gauge_drift_p_value"] < 0.01
    assert p2["gauges"]["escalations_missed_rate"] > 0.3  # the server's rolling misrouting gauge
    # the drop, with intervals that do not overlap
    assert _ci(p2["shadow"]["quality_vs_reference"])[1] < _ci(p1["shadow"]["quality_vs_reference"])[0]
    assert _ci(p2["shadow"]["escalations_missed_rate"])[0] > _ci(p1["shadow"]["escalations_missed_rate"])[1]
    assert p2["shadow"]["cpao_live"]["value"] > 2 * p1["shadow"]["cpao_live"]["value"]


@pytest.mark.slow
def test_retraining_on_the_fresh_rows_recovers_and_the_promotion_is_measured(res):
    rt = res["monitor2"]["retrain"]
    assert rt["fresh_queries"] == 2 * N_PHASE and Path(rt["combined_dir"], "outcomes.parquet").is_file()
    cmp_ = res["monitor3"]["compare"]
    cur, cand = cmp_["bundles"]["current"], cmp_["bundles"]["candidate"]
    assert _ci(cand["accuracy"])[0] > _ci(cur["accuracy"])[1]
    assert cand["escalations_missed_rate"]["value"] < cur["escalations_missed_rate"]["value"]
    assert cmp_["differences"]["candidate"]["promote"] is True
    p2, p3 = res["phases"]["phase2"], res["phases"]["phase3"]  # the new bundle serving shifted traffic
    assert _ci(p3["shadow"]["accuracy_routed"])[0] > _ci(p2["shadow"]["accuracy_routed"])[1]
    assert p3["shadow"]["quality_vs_reference"]["value"] > 0.95 and res["bundles"]["new"] != res["bundles"]["old"]
