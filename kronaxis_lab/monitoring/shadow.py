"""Shadow evaluation: a sampled share of routed chat requests answered again and graded, off the request path.

    shadow = ShadowEvaluator(ShadowSettings(enabled=True, sample_rate=0.05, budget_usd_per_hour=2.0,
                                            grader={...}), fleet, governance, call=svc.call_upstream_json,
                             available=upstreams.names, sink=decision_log.record_shadow)
    await shadow.start()
    shadow.offer(job)          # after the routed answer went back to the client: O(1), never blocks or raises
    shadow_summary(rows)       # realised quality, misrouting rates, live CPAO, each with a bootstrap CI

**Which second answer.** A request routed *below* the reference model (default: the bundle's premium) is also
sent to the reference; one routed *to* the reference tier is also sent to the cheapest allowed model below it
(`probe_cheaper`). Each shadowed row thus holds the routed answer and one counterfactual answer.

**Grading.** With an `LLMJudgeGrader` node (configs/grader/llm_judge.yaml: FastChat's MT-Bench single-answer
prompts) both answers are rated by `judge_model` through its upstream (the grader's `build_messages` and
`parse_rating`; score = rating / rating_max). With any other grader the cheaper answer is graded with the
reference answer as its gold and the reference scores 1 (default: `agreement.AnswerAgreementGrader`, the same
final number, else token F1).

**Misrouting** (per graded row; s = score, pass = `pass_score`):
- escalation missed: routed below the reference, s_routed < pass ≤ s_reference  (rate over rows routed below);
- premium call wasted: routed to the reference tier, s_cheaper ≥ pass            (rate over rows routed there).
**Live CPAO** = Σ routed cost / #{s_routed ≥ pass}; **quality vs reference** = mean s_routed / mean s_reference.
Every number comes with a percentile bootstrap CI over the graded rows (`shadow_summary`).

**Never on the request path, never over budget, never past governance.** `offer` samples and queues (a full
queue skips); workers run on the event loop after the response was sent. Before every shadow call the worst-case
cost — input ≤ its UTF-8 bytes + 16 tokens per message (a byte-level BPE token covers at least one byte),
output ≤ the capped max_tokens — is reserved against the sliding-hour budget (`HourlyBudget`); a call that does
not fit is skipped, and the reservation is settled to the upstream's reported usage afterwards. Every model a
shadow call sends the conversation (or, for the judge, the answers) to must be allowed by the governance policy
for every data class found in them; otherwise the row is skipped (counted).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
from hydra.utils import instantiate

from kronaxis_lab.data.fleet import Fleet
from kronaxis_lab.grading.base import Grader
from kronaxis_lab.grading.llm_judge import LLMJudgeGrader
from kronaxis_lab.monitoring.settings import ShadowSettings
from kronaxis_lab.serving.governance import GovernancePolicy

log = logging.getLogger(__name__)

TOKENS_PER_MESSAGE = 16  # chat-template overhead bound per message (role markers, separators)
HOUR_S = 3600.0
Call = Callable[[str, dict[str, Any]], Awaitable[Mapping[str, Any]]]


class HourlyBudget:
    """$ spent in any sliding window of `window_s` seconds stays ≤ `usd_per_hour` (reserve before, settle after)."""

    def __init__(self, usd_per_hour: float, clock: Callable[[], float] = time.monotonic,
                 window_s: float = HOUR_S) -> None:
        self.limit, self.clock, self.window_s = float(usd_per_hour), clock, float(window_s)
        self._entries: dict[int, list[float]] = {}  # ticket → [t, usd]
        self._next = 0

    def _purge(self, now: float) -> None:
        for k in [k for k, (t, _) in self._entries.items() if now - t >= self.window_s]:
            del self._entries[k]

    def spent(self) -> float:
        """$ reserved or spent in the current window."""
        self._purge(self.clock())
        return float(sum(usd for _, usd in self._entries.values()))

    def reserve(self, usd: float) -> int | None:
        """A ticket for a call of worst-case cost `usd`, or None when it does not fit in the window."""
        now = self.clock()
        self._purge(now)
        if self.spent() + max(usd, 0.0) > self.limit + 1e-12:
            return None
        self._next += 1
        self._entries[self._next] = [now, max(usd, 0.0)]
        return self._next

    def settle(self, ticket: int, usd: float) -> None:
        """Replace a reservation by the call's actual cost (kept at the reservation's time)."""
        if ticket in self._entries:
            self._entries[ticket][1] = max(usd, 0.0)


@dataclass
class ShadowJob:
    """What the server hands over for one answered chat request (held in memory only, never logged)."""

    decision_id: str
    routed_model: str
    body: dict[str, Any]  # the chat body forwarded upstream (messages, sampling parameters, `user`, ...)
    answer: str  # the routed answer's text
    data_classes: Sequence[str] = ()  # classes governance found in the conversation
    routed_cost_usd: float | None = None
    routed_input_tokens: int | None = None
    routed_output_tokens: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def answer_text(data: Mapping[str, Any]) -> str:
    """The first choice's text of an OpenAI chat/completion answer ("" when it has none)."""
    try:
        choice = data["choices"][0]
        return str((choice["message"]["content"] if "message" in choice else choice["text"]) or "")
    except (KeyError, IndexError, TypeError):
        return ""


def _usage(data: Mapping[str, Any]) -> tuple[int | None, int | None]:
    u = data.get("usage") if isinstance(data, Mapping) else None
    u = u if isinstance(u, Mapping) else {}
    n_in, n_out = u.get("prompt_tokens"), u.get("completion_tokens")
    return (int(n_in) if isinstance(n_in, (int, float)) else None,
            int(n_out) if isinstance(n_out, (int, float)) else None)


def _message_text(content: Any) -> str:
    if isinstance(content, list):
        return "\n".join(str(p.get("text", "")) for p in content if isinstance(p, Mapping))
    return "" if content is None else str(content)


def input_token_bound(messages: Sequence[Mapping[str, Any]]) -> int:
    """Upper bound on a chat prompt's tokens (module docstring)."""
    return sum(len(_message_text(m.get("content")).encode("utf-8", "surrogatepass")) + TOKENS_PER_MESSAGE
               for m in messages)


class ShadowEvaluator:
    """Samples answered chat requests and grades a second answer for each (module docstring).

    Args:
        settings: `ShadowSettings`.
        fleet: the bundle's fleet (names, tiers, prices; its premium is the default reference).
        governance: the serving `GovernancePolicy` (which model may receive which data class).
        call: `(model, chat body) -> awaitable upstream JSON` (the server's upstream chain; raises on failure).
        available: models with an upstream (only those can be shadow targets).
        grader: a built `Grader` (None: built from `settings.grader`).
        sink: receives each shadow row (`decision_log.SHADOW_COLUMNS`), e.g. `DecisionLog.record_shadow`.
        on_row: receives each graded row too (the server's gauges).
        clock: for the budget window.
    """

    def __init__(self, settings: ShadowSettings, fleet: Fleet, governance: GovernancePolicy, call: Call,
                 available: Sequence[str], grader: Grader | None = None,
                 sink: Callable[[dict[str, Any]], Any] | None = None,
                 on_row: Callable[[dict[str, Any]], Any] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings, self.fleet, self.governance, self.call = settings, fleet, governance, call
        self.available = set(available)
        self.reference = settings.reference_model or fleet.premium
        if self.reference not in fleet.names:
            raise ValueError(f"shadow.reference_model {self.reference!r} is not in the fleet {fleet.names}")
        if settings.judge_model is not None and settings.judge_model not in fleet.names:
            raise ValueError(f"shadow.judge_model {settings.judge_model!r} is not in the fleet {fleet.names}: the "
                             "judge needs a price (budget) and a governance entry")
        if grader is None:
            grader = instantiate(settings.grader, _convert_="all")
        self.grader = grader
        self.judged = isinstance(grader, LLMJudgeGrader)
        if self.judged and settings.judge_model is None:
            raise ValueError("shadow.grader is an LLM judge: set shadow.judge_model")
        self.mode = "judge" if self.judged else "reference"
        self.budget = HourlyBudget(settings.budget_usd_per_hour, clock)
        self.sink, self.on_row = sink, on_row
        self.rng = random.Random(settings.seed)
        self.p_in, self.p_out = fleet.prices()
        self.stats: collections.Counter[str] = collections.Counter()
        self.rows: collections.deque[dict[str, Any]] = collections.deque(maxlen=settings.window)
        self._queue: asyncio.Queue[ShadowJob] | None = None
        self._workers: list[asyncio.Task] = []
        self._idle = threading.Condition()  # jobs queued or running, for `wait_idle` from any thread
        self._in_flight = 0

    # -- request side ------------------------------------------------------------------------------
    def offer(self, job: ShadowJob) -> bool:
        """Sample and queue (non-blocking); True when the job was queued."""
        self.stats["offered"] += 1
        if self._queue is None or self.rng.random() >= self.settings.sample_rate:
            return False
        try:
            self._queue.put_nowait(job)
        except asyncio.QueueFull:
            self.stats["skipped_queue_full"] += 1
            return False
        with self._idle:
            self._in_flight += 1
        self.stats["sampled"] += 1
        return True

    def wait_idle(self, timeout: float = 60.0) -> bool:
        """Block (any thread but the event loop's) until no sampled job is queued or running; False on timeout."""
        with self._idle:
            return self._idle.wait_for(lambda: self._in_flight == 0, timeout)

    # -- lifecycle ---------------------------------------------------------------------------------
    async def start(self) -> None:
        self._queue = asyncio.Queue(self.settings.queue_size)
        self._workers = [asyncio.create_task(self._work(), name=f"kronaxis-shadow-{k}")
                         for k in range(self.settings.concurrency)]

    async def stop(self) -> None:
        for w in self._workers:
            w.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers, self._queue = [], None
        with self._idle:  # jobs still queued are abandoned
            self._in_flight = 0
            self._idle.notify_all()

    async def _work(self) -> None:
        assert self._queue is not None
        while True:
            job = await self._queue.get()
            try:
                await self.evaluate(job)
            except Exception as e:  # noqa: BLE001 - a shadow failure is counted, never raised
                self.stats["errors"] += 1
                log.warning("shadow evaluation failed: %s", type(e).__name__)  # no message: it may quote text
            finally:
                self._queue.task_done()
                with self._idle:
                    self._in_flight -= 1
                    self._idle.notify_all()

    # -- one job -----------------------------------------------------------------------------------
    def tier(self, model: str) -> int:
        return int(self.fleet[model].tier)

    def counterfactual(self, job: ShadowJob) -> str | None:
        """The second model (module docstring), or None when there is none to ask."""
        if self.tier(job.routed_model) < self.tier(self.reference):
            return self.reference if self.reference in self.available else None
        if not self.settings.probe_cheaper:
            return None
        below = [m for m in self.fleet.models if m.tier < self.tier(job.routed_model) and m.name in self.available
                 and self.may_receive(m.name, job.data_classes)]
        return min(below, key=lambda m: (m.price_in + m.price_out, m.tier)).name if below else None

    def may_receive(self, model: str, classes: Sequence[str]) -> bool:
        """Governance: `model` may receive every class in `classes`."""
        found = [set(classes)]
        return bool(self.governance.filter(np.ones((1, 1), dtype=bool), found, [model])[0, 0])

    def worst_case_usd(self, model: str, messages: Sequence[Mapping[str, Any]], max_tokens: int) -> float:
        j = self.fleet.index(model)
        return float(input_token_bound(messages) * self.p_in[j] + max_tokens * self.p_out[j])

    def cost_usd(self, model: str, data: Mapping[str, Any], fallback: float) -> float:
        n_in, n_out = _usage(data)
        if n_in is None or n_out is None:
            return fallback
        j = self.fleet.index(model)
        return float(n_in * self.p_in[j] + n_out * self.p_out[j])

    def shadow_body(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """The forwarded body, non-streamed, one choice, max_tokens capped."""
        cap = self.settings.max_tokens
        out = {k: v for k, v in body.items() if k not in ("stream", "stream_options", "n", "max_completion_tokens")}
        asked = body.get("max_completion_tokens") or body.get("max_tokens")
        out["max_tokens"] = min(int(asked), cap) if isinstance(asked, int) and asked > 0 else cap
        return out

    async def _paid_call(self, model: str, body: dict[str, Any], row: dict[str, Any]) -> Mapping[str, Any] | None:
        """One budgeted upstream call; None when the budget has no room (the row is marked)."""
        worst = self.worst_case_usd(model, body.get("messages") or [], int(body["max_tokens"]))
        ticket = self.budget.reserve(worst)
        if ticket is None:
            row["status"] = "skipped_budget"
            return None
        try:
            data = await self.call(model, body)
        except Exception:
            self.budget.settle(ticket, worst)  # an upstream may have charged for a failed call
            row["shadow_cost_usd"] += worst
            raise
        cost = self.cost_usd(model, data, worst)
        self.budget.settle(ticket, cost)
        row["shadow_cost_usd"] += cost
        return data

    async def evaluate(self, job: ShadowJob) -> dict[str, Any]:
        """Shadow one job; its row (also sent to `sink`): status graded | ungradable | error | skipped_budget |
        skipped_governance | skipped_no_counterfactual (the skipped ones made no call, or no further call)."""
        other = self.counterfactual(job)
        row: dict[str, Any] = {
            "decision_id": job.decision_id, "status": "error", "mode": self.mode, "reference_model": self.reference,
            "routed_model": job.routed_model, "routed_tier": self.tier(job.routed_model), "routed_score": None,
            "other_model": other, "other_tier": None if other is None else self.tier(other), "other_score": None,
            "pass_score": self.settings.pass_score, "routed_cost_usd": job.routed_cost_usd,
            "routed_input_tokens": job.routed_input_tokens, "routed_output_tokens": job.routed_output_tokens,
            "shadow_cost_usd": 0.0}
        if other is None:
            row["status"] = "skipped_no_counterfactual"
            return self._emit(row)
        needs = [other] + ([self.settings.judge_model] if self.judged else [])
        if not all(self.may_receive(m, job.data_classes) for m in needs):
            row["status"] = "skipped_governance"
            return self._emit(row)
        try:
            body = self.shadow_body(job.body)
            t0 = time.perf_counter()
            data = await self._paid_call(other, body, row)
            if data is None:
                return self._emit(row)
            row["other_latency_s"] = time.perf_counter() - t0
            row["other_input_tokens"], row["other_output_tokens"] = _usage(data)
            row["other_cost_usd"] = self.cost_usd(other, data, row["shadow_cost_usd"])
            other_answer = answer_text(data)
            scores = await (self.judge(job, other_answer, row) if self.judged else self.against_reference(
                job, other, other_answer))
            if scores is None:
                return self._emit(row)
            row["routed_score"], row["other_score"] = scores
            row["status"] = "graded" if all(s is not None and math.isfinite(s) for s in scores) else "ungradable"
        except Exception as e:  # noqa: BLE001 - counted; the row says error
            log.warning("shadow call failed: %s", type(e).__name__)
        return self._emit(row)

    async def against_reference(self, job: ShadowJob, other: str, other_answer: str) -> tuple[float, float]:
        """Reference mode: the cheaper answer graded with the reference answer as gold; the reference scores 1."""
        routed_low = self.tier(job.routed_model) < self.tier(other)
        cheap, ref = (job.answer, other_answer) if routed_low else (other_answer, job.answer)
        query = _message_text((job.body.get("messages") or [{}])[-1].get("content"))
        [s] = await asyncio.to_thread(self.grader.grade, [cheap], [ref], [query])
        s = float(s)
        return (s, 1.0) if routed_low else (1.0, s)

    async def judge(self, job: ShadowJob, other_answer: str, row: dict[str, Any]) -> tuple[float, float] | None:
        """Judge mode: both answers rated by `judge_model` (MT-Bench single-answer grading)."""
        g: LLMJudgeGrader = self.grader  # type: ignore[assignment]
        judge = str(self.settings.judge_model)
        # the answers go to the judge too: its governance must cover what they carry
        found = await asyncio.to_thread(self.governance.detect, [job.answer, other_answer])
        if not self.may_receive(judge, sorted(set(job.data_classes) | found[0] | found[1])):
            row["status"] = "skipped_governance"
            return None
        conv = [{"role": str(m.get("role", "user")), "content": _message_text(m.get("content"))}
                for m in job.body.get("messages") or []]
        out = []
        for answer in (job.answer, other_answer):
            msgs = g.build_messages(answer, conv, None)
            body = {"messages": msgs, "max_tokens": min(g.max_tokens, self.settings.judge_max_tokens),
                    "temperature": g.temperature}
            data = await self._paid_call(judge, body, row)
            if data is None:
                return None
            r = g.parse_rating(answer_text(data))
            out.append(r / g.rating_max if math.isfinite(r) and g.rating_min <= r <= g.rating_max else math.nan)
        return out[0], out[1]

    def _emit(self, row: dict[str, Any]) -> dict[str, Any]:
        self.stats[row["status"]] += 1
        self.stats["spend_usd_micro"] += int(round(row["shadow_cost_usd"] * 1e6))
        if self.sink is not None:
            self.sink(row)
        if row["status"] == "graded":
            self.rows.append(row)
            if self.on_row is not None:
                self.on_row(row)
        return row

    def summary(self, n_boot: int = 0) -> dict[str, Any]:
        """`shadow_summary` of the rolling window of graded rows (point estimates without `n_boot`)."""
        return shadow_summary(pd.DataFrame(list(self.rows)), n_boot=n_boot)


# --------------------------------------------------------------------------------------------------
# statistics
# --------------------------------------------------------------------------------------------------
def _ci(values: np.ndarray, ci: float) -> list[float | None]:
    v = values[np.isfinite(values)]
    if not v.size:
        return [None, None]
    lo, hi = np.percentile(v, [100 * (1 - ci) / 2, 100 * (1 + ci) / 2])
    return [float(lo), float(hi)]


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num, den = np.asarray(num, float), np.asarray(den, float)
    return np.divide(num, den, out=np.full(np.shape(num), np.nan), where=den > 0)


def misrouting_flags(rows: pd.DataFrame) -> pd.DataFrame:
    """Per graded row: routed_low (routed below the other model's tier), escalation_missed, premium_wasted,
    routed_correct, reference_score (the higher-tier answer's), reference_cost_usd, reference_correct."""
    r = rows[rows["status"] == "graded"].copy()
    s_r, s_o = r["routed_score"].astype(float), r["other_score"].astype(float)
    p = r["pass_score"].astype(float)
    low = r["routed_tier"].astype(int) < r["other_tier"].astype(int)
    out = pd.DataFrame(index=r.index)
    out["routed_low"] = low
    out["escalation_missed"] = low & (s_r < p) & (s_o >= p)
    out["premium_wasted"] = ~low & (s_o >= p)
    out["routed_score"] = s_r
    out["routed_correct"] = s_r >= p
    out["reference_score"] = np.where(low, s_o, s_r)
    out["reference_correct"] = out["reference_score"] >= p
    out["routed_cost_usd"] = pd.to_numeric(r["routed_cost_usd"], errors="coerce")
    out["reference_cost_usd"] = np.where(low, pd.to_numeric(r["other_cost_usd"], errors="coerce"),
                                         out["routed_cost_usd"])
    return out


def shadow_summary(rows: pd.DataFrame, n_boot: int = 1000, ci: float = 0.95, seed: int = 0) -> dict[str, Any]:
    """Realised quality, misrouting rates and live CPAO of graded shadow rows (module docstring), each as
    {value, ci: [lo, hi]} with a percentile bootstrap over rows (`n_boot` = 0: no CI)."""
    if rows is None or not len(rows) or "status" not in rows:
        return {"n_graded": 0}
    f = misrouting_flags(rows)
    n = len(f)
    if not n:
        return {"n_graded": 0, "n_rows": int(len(rows))}
    low = f["routed_low"].to_numpy(bool)
    cols = {k: f[k].to_numpy(float) for k in ("escalation_missed", "premium_wasted", "routed_score",
                                               "routed_correct", "reference_score", "reference_correct",
                                               "routed_cost_usd", "reference_cost_usd")}

    def stats(idx: np.ndarray) -> dict[str, np.ndarray]:
        """Every statistic for each resample row of idx (B, n)."""
        lo = low[idx]
        take = {k: v[idx] for k, v in cols.items()}
        return {
            "quality_routed": take["routed_score"].mean(axis=1),
            "quality_reference": take["reference_score"].mean(axis=1),
            "quality_vs_reference": _ratio(take["routed_score"].sum(axis=1), take["reference_score"].sum(axis=1)),
            "accuracy_routed": take["routed_correct"].mean(axis=1),
            "escalations_missed_rate": _ratio((take["escalation_missed"] * lo).sum(axis=1), lo.sum(axis=1)),
            "premium_wasted_rate": _ratio((take["premium_wasted"] * ~lo).sum(axis=1), (~lo).sum(axis=1)),
            "misrouted_share": (take["escalation_missed"] + take["premium_wasted"]).mean(axis=1),
            "cpao_live": _ratio(np.nansum(take["routed_cost_usd"], axis=1), take["routed_correct"].sum(axis=1)),
            "cpao_reference": _ratio(np.nansum(take["reference_cost_usd"], axis=1),
                                     take["reference_correct"].sum(axis=1)),
        }

    point = stats(np.arange(n)[None, :])
    boot = stats(np.random.default_rng(seed).integers(0, n, size=(n_boot, n))) if n_boot > 0 else None
    out: dict[str, Any] = {"n_graded": n, "n_rows": int(len(rows)), "n_routed_below_reference": int(low.sum()),
                           "n_routed_to_reference_tier": int((~low).sum()), "ci_level": ci, "n_boot": n_boot}
    for k, v in point.items():
        value = float(v[0]) if np.isfinite(v[0]) else None
        out[k] = {"value": value, "ci": _ci(boot[k], ci) if boot is not None else [None, None]}
    out["shadow_cost_usd"] = float(pd.to_numeric(rows.get("shadow_cost_usd"), errors="coerce").fillna(0).sum())
    return out
