"""The label runner and its call cache, with in-process fake backends (no model, no network)."""

import asyncio
import sqlite3
from collections import Counter

import numpy as np
import pandas as pd
import pytest

from kronaxis_lab.backends.base import Backend, GenRequest, GenResult
from kronaxis_lab.data.fleet import Fleet
from kronaxis_lab.data.tables import RoutingDataset, validate_outcomes
from kronaxis_lab.grading.multiple_choice import MultipleChoiceGrader
from kronaxis_lab.grading.numeric import NumericMatchGrader
from kronaxis_lab.labeling.cache import CallCache, GroupCommitter, call_key
from kronaxis_lab.labeling.prompts import PromptBook
from kronaxis_lab.labeling.runner import LabelError, LabelRunner, ModelPlan

FLEET = Fleet.from_config({"models": {
    "small": {"tier": 0, "price_in": 1.0, "price_out": 2.0},
    "big": {"tier": 1, "price_in": 10.0, "price_out": 30.0},
}})
BOOK = PromptBook({"gsm8k": {"user": "{text}", "completion": "Q: {text}\nA:", "max_tokens": 32},
                   "mmlu": {"user": "{text}\nLetter?", "max_tokens": 4}})


def queries(n_math=4, n_mc=2):
    rows = [{"query_id": f"m{i}", "text": f"What is {i} + {i}?", "task": "gsm8k", "gold": f"#### {2 * i}",
             "split": "test"} for i in range(n_math)]
    rows += [{"query_id": f"c{i}", "text": f"Pick one\nA. x\nB. y{i}", "task": "mmlu", "gold": "B", "split": "train"}
             for i in range(n_mc)]
    return pd.DataFrame(rows)


class FakeBackend(Backend):
    """Answers maths prompts with the right number when `smart`, else 0; MC with B (smart) or A.

    Counts every request it receives (by prompt text); `fail` = request ids that come back errored.
    """

    def __init__(self, model, smart=True, fail=(), delay=0.0, raise_on=None, **config):
        self.model, self.smart, self.fail, self.delay, self.raise_on = model, smart, set(fail), delay, raise_on
        self.seen: Counter = Counter()
        self.batches: list[int] = []
        self.closed = False

    def _text(self, req):
        return req.prompt if req.prompt is not None else req.messages[-1]["content"]

    async def agenerate(self, requests):
        self.batches.append(len(requests))
        if self.delay:
            await asyncio.sleep(self.delay)
        out = []
        for r in requests:
            text = self._text(r)
            self.seen[text] += 1
            if self.raise_on and self.raise_on in text:
                raise RuntimeError("backend exploded")
            if r.request_id in self.fail:
                out.append(GenResult(error="HTTP 500: upstream down", latency_s=0.5, meta={"retries": 2}))
                continue
            if "Pick one" in text:
                answer = "B" if self.smart else "A"
            else:
                n = int(text.split("What is ")[1].split(" +")[0])
                answer = f"The answer is {2 * n if self.smart else 0}"
            out.append(GenResult(text=answer, input_tokens=len(text.split()), output_tokens=len(answer.split()),
                                 latency_s=0.01,
                                 meta={"finish_reason": "stop", "retries": 1 if r.request_id == "m1" else 0}))
        return out

    def close(self):
        self.closed = True


GRADERS = {"gsm8k": NumericMatchGrader(), "mmlu": MultipleChoiceGrader()}


def runner(tmp_path, backends, **kw):
    plans = [ModelPlan(name, b, style=kw.pop(f"style_{name}", "chat"), identity={"_target_": name})
             for name, b in backends.items()]
    cache = CallCache(tmp_path / "cache.sqlite")
    return LabelRunner(FLEET, plans, BOOK, GRADERS, cache, progress=False, **kw), cache


def test_outcomes_scores_costs_and_summary(tmp_path):
    small, big = FakeBackend("small", smart=False), FakeBackend("big", smart=True)
    r, cache = runner(tmp_path, {"small": small, "big": big})
    res = r.run(queries())
    out = validate_outcomes(res.outcomes, "label", FLEET.names)  # the table contract holds
    assert len(out) == 12 and out["error"].isna().all()
    big_rows = out[out.model == "big"].set_index("query_id")
    small_rows = out[out.model == "small"].set_index("query_id")
    # smart model: all right; dumb one: right only on "0 + 0" (answers 0)
    assert big_rows["score"].tolist() == [1.0] * 6 and big_rows["correct"].all()
    assert small_rows["score"].tolist() == [1, 0, 0, 0, 0, 0]
    # cost = in·price_in + out·price_out per 1M tokens; "What is 2 + 2?" = 5 words, "The answer is 4" = 4 words
    row = big_rows.loc["m2"]
    assert row["input_tokens"] == 5 and row["output_tokens"] == 4
    assert row["cost_usd"] == pytest.approx((5 * 10 + 4 * 30) / 1e6)
    s = res.summary.set_index("model")
    assert s.loc["big", "accuracy"] == 1.0 and s.loc["small", "accuracy"] == pytest.approx(1 / 6)
    assert s.loc["big", "calls"] == 6 and s.loc["big", "cached"] == 0 and s.loc["big", "retries"] == 1
    assert s.loc["big", "total_usd"] == pytest.approx(out[out.model == "big"]["cost_usd"].sum())
    bt = res.by_task.set_index(["model", "task"])
    assert bt.loc[("small", "mmlu"), "accuracy"] == 0.0 and bt.loc[("big", "gsm8k"), "correct"] == 4
    assert small.closed and big.closed
    # RoutingDataset builds from it: train / replay read exactly this
    ds = RoutingDataset(queries(), res.outcomes, FLEET)
    assert ds.matrices("test").scores.shape == (4, 2)


def test_resume_repeats_no_finished_call_and_changes_are_misses(tmp_path):
    b1 = FakeBackend("big")
    r, cache = runner(tmp_path, {"big": b1})
    first = r.run(queries())
    assert sum(b1.seen.values()) == 6 and cache.count("big") == 6
    cache.close()
    b2 = FakeBackend("big")
    r2, cache2 = runner(tmp_path, {"big": b2})
    again = r2.run(queries())
    assert sum(b2.seen.values()) == 0  # everything came from the cache
    assert again.summary.loc[0, "cached"] == 6 and again.summary.loc[0, "calls"] == 0
    pd.testing.assert_frame_equal(first.outcomes.drop(columns=["cached"]), again.outcomes.drop(columns=["cached"]))
    # a new query → one call; a changed template → every call of that task is a miss
    b3 = FakeBackend("big")
    r3, _ = runner(tmp_path, {"big": b3})
    r3.prompts = PromptBook({"gsm8k": {"user": "{text} Think.", "max_tokens": 32},
                             "mmlu": {"user": "{text}\nLetter?", "max_tokens": 4}})
    r3.run(queries(n_math=5))
    assert sum(b3.seen.values()) == 5 and all(t.endswith("Think.") for t in b3.seen)


def test_backend_factory_not_called_when_all_cached(tmp_path):
    r, cache = runner(tmp_path, {"big": FakeBackend("big")})
    r.run(queries())
    cache.close()
    calls = []
    r2, _ = runner(tmp_path, {"big": lambda: calls.append(1) or FakeBackend("big")})
    r2.run(queries())
    assert calls == []  # no model is loaded when nothing is left to generate


def test_errors_are_rows_and_retried_on_resume(tmp_path):
    b = FakeBackend("big", fail={"m2", "c0"})
    r, cache = runner(tmp_path, {"big": b})
    res = r.run(queries())
    out = res.outcomes.set_index("query_id")
    assert len(out) == 6  # nothing dropped
    assert out.loc["m2", "error"].startswith("HTTP 500") and np.isnan(out.loc["m2", "score"])
    assert not out.loc["m2", "correct"] and out["error"].notna().sum() == 2
    assert res.summary.loc[0, "errors"] == 2 and res.summary.loc[0, "accuracy"] == 1.0
    validate_outcomes(res.outcomes)
    assert cache.count("big", errors=True) == 2
    cache.close()
    b2 = FakeBackend("big")
    r2, _ = runner(tmp_path, {"big": b2})
    res2 = r2.run(queries())
    assert sum(b2.seen.values()) == 2  # only the two failed calls are made again
    assert res2.outcomes["error"].isna().all()


class Shrug(FakeBackend):
    async def agenerate(self, requests):
        out = await super().agenerate(requests)
        return [GenResult(text="no idea", input_tokens=r.input_tokens, output_tokens=2) if "What is 1 " in self._text(q)
                else r for q, r in zip(requests, out)]


def test_no_answer_counts_come_from_the_graders(tmp_path):
    r, _ = runner(tmp_path, {"big": Shrug("big")})
    res = r.run(queries())
    assert res.summary.loc[0, "no_answer"] == 1 and res.summary.loc[0, "accuracy"] == pytest.approx(5 / 6)
    bt = res.by_task.set_index("task")
    assert bt.loc["gsm8k", "no_answer"] == 1 and bt.loc["mmlu", "no_answer"] == 0
    assert res.stats["grader_stats"]["big/gsm8k"]["no_answer"] == 1


def test_a_raising_backend_errors_its_chunk_only(tmp_path):
    b = FakeBackend("big", raise_on="What is 3 ")
    plans = [ModelPlan("big", b, identity={}, chunk_size=1)]
    r = LabelRunner(FLEET, plans, BOOK, GRADERS, CallCache(tmp_path / "c.sqlite"), progress=False)
    out = r.run(queries()).outcomes.set_index("query_id")
    assert out.loc["m3", "error"] == "backend: RuntimeError: backend exploded"
    assert out["error"].notna().sum() == 1 and out.drop(index="m3")["score"].eq(1.0).all()


def test_chunking_concurrency_and_dedup(tmp_path):
    b = FakeBackend("big", delay=0.05)
    q = queries(n_math=10, n_mc=0)
    q.loc[9, "text"] = q.loc[8, "text"]  # same prompt under two ids: sent once, both rows filled
    plans = [ModelPlan("big", b, identity={}, chunk_size=3)]
    r = LabelRunner(FLEET, plans, BOOK, GRADERS, CallCache(tmp_path / "c.sqlite"), max_concurrency=2, progress=False)
    res = r.run(q)
    assert sorted(b.batches) == [3, 3, 3]  # 9 distinct prompts in chunks of 3
    assert max(b.seen.values()) == 1 and len(res.outcomes) == 10
    assert res.outcomes.set_index("query_id").loc["m9", "response"] == "The answer is 16"


def test_completion_style_for_base_models(tmp_path):
    b = FakeBackend("small")
    r, _ = runner(tmp_path, {"small": b}, style_small="completion")
    r.run(queries(n_math=2, n_mc=0))
    assert set(b.seen) == {"Q: What is 0 + 0?\nA:", "Q: What is 1 + 1?\nA:"}


def test_missing_grader_or_template_fails_before_any_call(tmp_path):
    b = FakeBackend("big")
    plans = [ModelPlan("big", b, identity={})]
    r = LabelRunner(FLEET, plans, BOOK, {"gsm8k": NumericMatchGrader()}, CallCache(tmp_path / "c.sqlite"),
                    progress=False)
    with pytest.raises(LabelError, match=r"no grader for task\(s\) \['mmlu'\]"):
        r.run(queries())
    assert not b.seen
    with pytest.raises(LabelError, match="not in the fleet"):
        LabelRunner(FLEET, [ModelPlan("gpt-9", b)], BOOK, GRADERS, CallCache(tmp_path / "c.sqlite"))


def test_bad_gold_names_task_and_model(tmp_path):
    q = queries(n_math=2, n_mc=0)
    q.loc[1, "gold"] = "seven"
    r, _ = runner(tmp_path, {"big": FakeBackend("big")})
    with pytest.raises(LabelError, match=r"grading task 'gsm8k' for model 'big'.*gold is not a number"):
        r.run(q)


def test_cache_key_and_storage(tmp_path):
    req = GenRequest(messages=[{"role": "user", "content": "hi"}], max_tokens=8, request_id="a")
    same = GenRequest(messages=[{"role": "user", "content": "hi"}], max_tokens=8, request_id="b")
    k = call_key("m", {"_target_": "x"}, req)
    assert k == call_key("m", {"_target_": "x"}, same)  # the opaque request id is not part of the call
    for other in (call_key("m2", {"_target_": "x"}, req), call_key("m", {"_target_": "y"}, req),
                  call_key("m", {"_target_": "x"}, GenRequest(messages=req.messages, max_tokens=9)),
                  call_key("m", {"_target_": "x"}, GenRequest(messages=req.messages, max_tokens=8, temperature=0.5)),
                  call_key("m", {"_target_": "x"}, GenRequest(messages=req.messages, max_tokens=8, stop=["\n"])),
                  call_key("m", {"_target_": "x"}, GenRequest(prompt="hi", max_tokens=8))):
        assert other != k
    path = tmp_path / "sub" / "c.sqlite"
    with CallCache(path) as c:
        c.put_many("m", [(k, req, GenResult(text="yo", input_tokens=3, output_tokens=1, latency_s=0.2,
                                            meta={"finish_reason": "stop"}))])
    conn = sqlite3.connect(path)  # a separate connection sees the committed row; the file is in WAL mode
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("SELECT text, input_tokens FROM calls").fetchall() == [("yo", 3)]
    conn.close()
    with CallCache(path) as c:
        hit = c.get_many([k, "nope"])
        assert list(hit) == [k] and hit[k].text == "yo" and hit[k].meta["cached"] and hit[k].latency_s == 0.2
    # a shared cache serves hits and they are copied into the run's own cache
    with CallCache(tmp_path / "run.sqlite", read_only_fallbacks=[path]) as run:
        assert run.get_many([k])[k].text == "yo" and run.count() == 1
    (tmp_path / "junk.sqlite").write_text("this is not a database" * 100)
    with pytest.raises(ValueError, match="not a usable label cache"):
        CallCache(tmp_path / "junk.sqlite")


def test_group_commit_persists_every_waiter_and_reports_failures(tmp_path):
    cache = CallCache(tmp_path / "g.sqlite")
    committer = GroupCommitter(cache)
    reqs = [GenRequest(prompt=f"p{i}", request_id=str(i)) for i in range(50)]

    async def one(i):
        await asyncio.sleep(0.001 * (i % 5))
        await committer.commit("m", [(f"k{i}", reqs[i], GenResult(text=str(i)))])
        return f"k{i}" in cache.get_many([f"k{i}"])  # this call's row is on disk when commit returns

    async def main():
        return await asyncio.gather(*(one(i) for i in range(50)))

    seen = asyncio.run(main())
    assert cache.count() == 50 and all(seen)
    assert committer.transactions < 50  # calls finishing together shared transactions
    cache.close()  # a write on a closed database fails every waiter of that batch

    async def broken():
        await committer.commit("m", [("x", reqs[0], GenResult(text="x"))])

    with pytest.raises(Exception, match="closed"):
        asyncio.run(broken())
