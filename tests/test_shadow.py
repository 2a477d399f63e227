"""Shadow evaluation: the hourly $ budget holds, governance decides which endpoints may see a shadowed request,
both grading modes score the right answers, and the misrouting / quality / CPAO statistics (with bootstrap
CIs) are exact on a known-answer set. The router-level test shadows the governance corpus through a real app.
"""

from __future__ import annotations

import asyncio
import json
import random

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from kronaxis_lab.data.fleet import Fleet
from kronaxis_lab.monitoring.decision_log import read_decision_log
from kronaxis_lab.monitoring.settings import ShadowSettings
from kronaxis_lab.monitoring.shadow import HourlyBudget, ShadowEvaluator, ShadowJob, input_token_bound, shadow_summary
from kronaxis_lab.serving.detectors import default_detectors
from kronaxis_lab.serving.governance import GovernancePolicy, endpoints_from_fleet
from tests.conftest import CONFIGS, FIXTURES
from tests.test_serve_app import FakeBundle, ServerThread, chat, recording_upstream, router

FLEET = {"models": {"small": {"tier": 0, "price_in": 1.0, "price_out": 2.0, "data_classes": ["*"]},
                    "big": {"tier": 1, "price_in": 10.0, "price_out": 30.0, "data_classes": []},
                    "judge": {"tier": 2, "price_in": 5.0, "price_out": 15.0, "data_classes": ["email"]}},
         "premium": "big"}


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


class FakeUpstreams:
    """`call(model, body)`: answers per model (a function of the body), records every call; usage as given."""

    def __init__(self, answers: dict, usage: tuple[int, int] | None = (20, 10)) -> None:
        self.answers, self.usage, self.calls = answers, usage, []

    async def __call__(self, model: str, body: dict) -> dict:
        self.calls.append((model, body))
        text = self.answers[model](body) if callable(self.answers[model]) else self.answers[model]
        usage = self.usage if self.usage is not None else (input_token_bound(body["messages"]), body["max_tokens"])
        return {"choices": [{"message": {"role": "assistant", "content": text}}],
                "usage": {"prompt_tokens": usage[0], "completion_tokens": usage[1]}}


def evaluator(call, clock=None, fleet=FLEET, **settings) -> ShadowEvaluator:
    s = ShadowSettings(**{"enabled": True, "sample_rate": 1.0, **settings})
    f = Fleet.from_config(fleet)
    gov = GovernancePolicy(default_detectors(), endpoints=endpoints_from_fleet(f))
    return ShadowEvaluator(s, f, gov, call, available=list(fleet["models"]), clock=clock or Clock())


def job(i: int, routed: str = "small", answer: str = "The answer is 41.", classes=(), text: str = "What is 6*7?"):
    return ShadowJob(f"d{i}", routed, {"model": "kronaxis/auto", "messages": [{"role": "user", "content": text}],
                                        "max_tokens": 1000, "stream": True}, answer, list(classes), 1e-5, 20, 10)


def test_agreement_grader():
    from kronaxis_lab.monitoring.agreement import AnswerAgreementGrader, token_f1

    g = AnswerAgreementGrader()
    assert g.grade(["So the answer is 42.", "It is 41", "Paris, France", ""], ["#### 42", "42", "paris", ""]).tolist() \
        == [1.0, 0.0, pytest.approx(2 / 3), 1.0]
    assert token_f1("the cat sat", "a cat sat down") == pytest.approx(0.8)


def test_reference_mode_grades_the_cheaper_answer_against_the_reference():
    call = FakeUpstreams({"big": "The answer is 42.", "small": "I think 42"})
    ev = evaluator(call)
    low = asyncio.run(ev.evaluate(job(0)))  # routed small says 41, the reference says 42: escalation missed
    assert (low["routed_score"], low["other_score"], low["other_model"]) == (0.0, 1.0, "big")
    top = asyncio.run(ev.evaluate(job(1, routed="big", answer="42")))  # premium; the cheap probe also says 42
    assert (top["routed_score"], top["other_score"], top["other_model"]) == (1.0, 1.0, "small")
    sent = call.calls[0][1]
    assert sent["max_tokens"] == ShadowSettings().max_tokens and "stream" not in sent  # capped, not streamed
    s = shadow_summary(pd.DataFrame([low, top]), n_boot=0)
    assert s["escalations_missed_rate"]["value"] == 1.0 and s["premium_wasted_rate"]["value"] == 1.0


def test_judge_mode_rates_both_answers_with_the_mt_bench_judge():
    node = OmegaConf.to_container(OmegaConf.load(CONFIGS / "grader" / "llm_judge.yaml"))

    def judge(body: dict) -> str:
        prompt = body["messages"][-1]["content"]
        assert "[The Start of Assistant's Answer]" in prompt  # FastChat's single-answer template
        return "Rating: [[9]]" if "forty-two" in prompt else "Rating: [[3]]"

    call = FakeUpstreams({"big": "It is forty-two.", "judge": judge})
    ev = evaluator(call, grader=node, judge_model="judge")
    row = asyncio.run(ev.evaluate(job(0, answer="maybe 41")))
    assert row["mode"] == "judge" and row["status"] == "graded"
    assert (row["routed_score"], row["other_score"]) == (pytest.approx(0.3), pytest.approx(0.9))
    assert [m for m, _ in call.calls] == ["big", "judge", "judge"]


def test_the_hourly_budget_is_never_exceeded():
    """Upstreams that bill the worst case: shadow spend in the hour stops at the budget, skipped requests are
    counted, and an hour later shadowing resumes."""
    clock = Clock()
    call = FakeUpstreams({"big": "42"}, usage=None)  # usage = the worst-case bound itself
    ev = evaluator(call, clock, budget_usd_per_hour=0.1, max_tokens=100)
    rows = []
    for i in range(200):
        clock.t += 5.0  # 200 requests over 1000 s: all inside one hour
        rows.append(asyncio.run(ev.evaluate(job(i))))
    spent = sum(r["shadow_cost_usd"] for r in rows)
    graded = [r for r in rows if r["status"] == "graded"]
    assert 0 < len(graded) < 200 and spent <= 0.1 + 1e-12 and spent > 0.1 - 2 * ev.worst_case_usd(
        "big", job(0).body["messages"], 100)
    assert ev.stats["skipped_budget"] == 200 - len(graded)
    clock.t += 3600.0
    assert asyncio.run(ev.evaluate(job(999)))["status"] == "graded"


def test_hourly_budget_holds_in_every_window_under_random_traffic():
    """Generated reserve/settle sequences (settled cost ≤ reservation, as the bound guarantees): the spend of
    every sliding hour, checked by brute force, stays within the limit."""
    rng = random.Random(0)
    for trial in range(30):
        clock = Clock()
        b = HourlyBudget(rng.uniform(0.5, 5.0), clock)
        spent: list[tuple[float, float]] = []
        for _ in range(300):
            clock.t += rng.expovariate(1 / 60)
            worst = rng.uniform(0.01, 1.0)
            ticket = b.reserve(worst)
            if ticket is not None:
                actual = worst * rng.random()
                b.settle(ticket, actual)
                spent.append((clock.t, actual))
        for t0, _ in spent:
            assert sum(c for t, c in spent if t0 <= t < t0 + 3600) <= b.limit + 1e-9, trial


def test_governance_decides_which_endpoints_see_a_shadowed_request():
    call = FakeUpstreams({"big": "42", "small": "42", "judge": "[[5]]"})
    ev = evaluator(call)
    row = asyncio.run(ev.evaluate(job(0, classes=["email"])))  # big may receive no sensitive class
    assert row["status"] == "skipped_governance" and call.calls == [] and ev.stats["skipped_governance"] == 1
    # routed to big with an e-mail address: the cheap probe (small, "*") may receive it
    assert asyncio.run(ev.evaluate(job(1, routed="big", answer="42", classes=["email"])))["other_model"] == "small"
    # the judge may receive e-mail but not card numbers, found in the conversation or the answers
    node = OmegaConf.to_container(OmegaConf.load(CONFIGS / "grader" / "llm_judge.yaml"))
    ev = evaluator(call, grader=node, judge_model="judge")
    call.calls.clear()
    assert asyncio.run(ev.evaluate(job(2, routed="big", classes=["credit_card"])))["status"] == "skipped_governance"
    row = asyncio.run(ev.evaluate(job(3, routed="big", answer="card 4111 1111 1111 1111", classes=["email"])))
    assert row["status"] == "skipped_governance" and [m for m, _ in call.calls] == ["small"]


def known_rows() -> pd.DataFrame:
    """60 requests routed below the reference (15 escalations missed), 40 routed to it (10 premium wasted)."""
    rows = []
    for i in range(100):
        low = i < 60
        miss, waste = low and i < 15, not low and i < 70
        rows.append({"status": "graded", "routed_tier": 0 if low else 1, "other_tier": 1 if low else 0,
                     "routed_score": 0.0 if miss else 1.0, "other_score": 1.0 if low or waste else 0.0,
                     "pass_score": 0.5, "routed_cost_usd": 0.001 if low else 0.01,
                     "other_cost_usd": 0.01 if low else 0.001, "shadow_cost_usd": 0.01})
    rows.append({**rows[0], "status": "skipped_budget"})  # not graded: not counted
    return pd.DataFrame(rows)


def test_misrouting_rates_quality_and_cpao_on_a_known_answer_set():
    s = shadow_summary(known_rows(), n_boot=2000, seed=1)
    assert s["n_graded"] == 100 and s["n_routed_below_reference"] == 60 and s["n_rows"] == 101
    expect = {"escalations_missed_rate": 15 / 60, "premium_wasted_rate": 10 / 40, "quality_routed": 0.85,
              "quality_reference": 1.0, "quality_vs_reference": 0.85, "accuracy_routed": 0.85,
              "misrouted_share": 0.25,
              "cpao_live": (60 * 0.001 + 40 * 0.01) / 85, "cpao_reference": (100 * 0.01) / 100}
    for k, v in expect.items():
        assert s[k]["value"] == pytest.approx(v), k
    for k, n in (("escalations_missed_rate", 60), ("premium_wasted_rate", 40), ("quality_routed", 100)):
        lo, hi = s[k]["ci"]
        p, half = expect[k], 1.96 * np.sqrt(expect[k] * (1 - expect[k]) / n)  # the binomial normal interval
        assert lo < p < hi and abs((hi - lo) / 2 - half) < 0.35 * half, (k, lo, hi, half)
    assert s["quality_reference"]["ci"] == [1.0, 1.0]
    assert s["shadow_cost_usd"] == pytest.approx(1.01)


def test_router_never_shadows_sensitive_requests_to_a_disallowed_endpoint(tmp_path):
    """Every text of the governance corpus through the router with shadow evaluation on every answer: the
    routed model (small, may receive anything) answers; the reference (big, may receive nothing sensitive)
    receives exactly the corpus texts without findings, never one with; the rows land in the decision log."""
    corpus = [json.loads(line) for line in (FIXTURES / "governance_corpus.jsonl").read_text().splitlines()][::2]
    small, seen_small = recording_upstream("served-small")
    big, seen_big = recording_upstream("served-big")
    bundle = FakeBundle(data_classes={"small": ["*"], "big": []})
    with ServerThread(small) as s_up, ServerThread(big) as b_up:
        app = router(bundle, {"small": s_up.url, "big": b_up.url},
                     monitor={"decision_log": {"path": str(tmp_path)},
                              "shadow": {"enabled": True, "sample_rate": 1.0, "budget_usd_per_hour": 100.0}})
        with ServerThread(app) as srv:
            for row in corpus:
                assert chat(srv.url, [{"role": "user", "content": row["text"]}]).status_code == 200
            assert app.state.service.monitor.shadow.wait_idle(90)
    pol = GovernancePolicy(default_detectors())
    sensitive = {r["text"] for r, found in zip(corpus, pol.detect([r["text"] for r in corpus])) if found}
    to_big = {b["messages"][-1]["content"] for b in seen_big}
    assert len(seen_small) == len(corpus) and sensitive and not (to_big & sensitive)
    assert to_big == {r["text"] for r in corpus} - sensitive
    sh = read_decision_log(tmp_path).shadow
    graded = sh[sh["status"] == "graded"]
    assert len(graded) == len(to_big) and set(graded["other_model"]) == {"big"}
    assert (sh["status"] == "skipped_governance").sum() == len(sensitive) and len(sh) == len(corpus)
