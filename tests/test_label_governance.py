"""Labelling respects governance: a question carrying a data class that a fleet model may not receive
(fleet `data_classes`) is never sent to that model; its outcome row says why, without the content."""

from __future__ import annotations

import logging

import pandas as pd

from kronaxis_lab.backends.base import Backend, GenResult
from kronaxis_lab.data.fleet import Fleet
from kronaxis_lab.grading.numeric import NumericMatchGrader
from kronaxis_lab.labeling.cache import CallCache
from kronaxis_lab.labeling.prompts import PromptBook
from kronaxis_lab.labeling.runner import LabelRunner, ModelPlan

CARD, EMAIL = "4111 1111 1111 1111", "dana.whitfield@example.com"
QUESTIONS = {
    "benign": "What is 2 + 2?",
    "card": f"My card {CARD} was charged twice, 12 + 12 dollars. What is the total?",
    "email": f"Mail {EMAIL}: what is 3 + 3?",
    "system": "What is 5 + 5?",  # sensitive only in the chat template's system prompt (below)
}
BOOK = PromptBook({"gsm8k": {"system": "Reply to ops@internal.example.", "user": "{text}",
                             "completion": "Q: {text}\nA:", "max_tokens": 16}})


class RecordingBackend(Backend):
    """Answers "4"; records every text it was sent."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.sent: list[str] = []

    async def agenerate(self, requests):
        out = []
        for r in requests:
            text = r.prompt if r.prompt is not None else "\n".join(m["content"] for m in r.messages)
            self.sent.append(text)
            out.append(GenResult(text="4", input_tokens=3, output_tokens=1))
        return out


def _queries(names: list[str]) -> pd.DataFrame:
    return pd.DataFrame([{"query_id": n, "text": QUESTIONS[n], "task": "gsm8k", "gold": "#### 4", "split": "test"}
                         for n in names])


def _run(tmp_path, models: dict[str, list[str]], names: list[str], styles: dict[str, str] | None = None):
    fleet = Fleet.from_config({"models": {m: {"tier": i, "price_in": 1.0, "price_out": 1.0, "data_classes": dc}
                                          for i, (m, dc) in enumerate(models.items())}})
    backends = {m: RecordingBackend(m) for m in models}
    plans = [ModelPlan(m, backends[m], style=(styles or {}).get(m, "completion"), identity={"_target_": m})
             for m in models]
    runner = LabelRunner(fleet, plans, BOOK, {"gsm8k": NumericMatchGrader()}, CallCache(tmp_path / "c.sqlite"),
                         progress=False)
    res = runner.run(_queries(names))
    return res, backends


def test_disallowed_classes_are_never_sent_and_rows_say_why(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    res, b = _run(tmp_path, {"internal": ["*"], "mail_ok": ["email"], "external": []}, ["benign", "card", "email"])
    # what each model received
    assert len(b["internal"].sent) == 3  # "*": everything
    assert not any(CARD in t for t in b["mail_ok"].sent) and any(EMAIL in t for t in b["mail_ok"].sent)
    assert b["external"].sent == ["Q: What is 2 + 2?\nA:"]  # data_classes: [] → only the benign question
    rows = res.outcomes.set_index(["model", "query_id"])
    assert rows.loc[("external", "card"), "error"] == "governance: data class credit_card not allowed for external"
    assert rows.loc[("external", "email"), "error"] == "governance: data class email not allowed for external"
    assert rows.loc[("mail_ok", "card"), "error"] == "governance: data class credit_card not allowed for mail_ok"
    assert pd.isna(rows.loc[("mail_ok", "email"), "error"]) and pd.isna(rows.loc[("external", "benign"), "error"])
    blocked = rows[rows["error"].fillna("").str.startswith("governance")]
    assert (blocked["cost_usd"] == 0).all() and not blocked["correct"].any() and blocked["score"].isna().all()
    assert len(res.outcomes) == 9  # a blocked question is a row, never a dropped one
    for value in (CARD, EMAIL):  # no content in the rows' errors or the logs
        assert not res.outcomes["error"].fillna("").str.contains(value, regex=False).any()
        assert value not in caplog.text


def test_the_scan_covers_what_is_sent_not_only_the_question(tmp_path):
    """The chat template adds a system prompt with an e-mail address: chat-style requests carry the class."""
    res, b = _run(tmp_path, {"internal": ["*"], "external": []}, ["system"], styles={"external": "chat"})
    assert b["external"].sent == []
    row = res.outcomes.set_index(["model", "query_id"]).loc[("external", "system")]
    assert row["error"] == "governance: data class email not allowed for external"


def test_a_cached_answer_does_not_bypass_governance(tmp_path):
    """A call cached before the model's data_classes were narrowed is not served: the outcome table follows the
    current policy whatever the cache holds."""
    _run(tmp_path, {"external": ["*"]}, ["card"])  # allowed then: sent and cached
    res, b = _run(tmp_path, {"external": []}, ["card"])
    assert b["external"].sent == []
    assert res.outcomes.loc[0, "error"] == "governance: data class credit_card not allowed for external"


def test_fleet_default_allows_everything(tmp_path):
    """Fleet models without `data_classes` may receive every class (the fleet default): nothing changes."""
    fleet = Fleet.from_config({"models": {"m": {"tier": 0, "price_in": 1.0, "price_out": 1.0}}})
    backend = RecordingBackend("m")
    runner = LabelRunner(fleet, [ModelPlan("m", backend, style="completion")], BOOK, {"gsm8k": NumericMatchGrader()},
                         CallCache(tmp_path / "c.sqlite"), progress=False)
    res = runner.run(_queries(["card", "email"]))
    assert len(backend.sent) == 2 and res.outcomes["error"].isna().all()
