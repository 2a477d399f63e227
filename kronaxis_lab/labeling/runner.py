"""The label runner: queries × fleet → outcome table (one row per query × model).

Per model:
1. every query becomes a `GenRequest` from the task's prompt template in the model's style (chat for
   instruct models, completion for base models); governance scans it (every string of the request) and a
   request carrying a data class the model may not receive (fleet `data_classes`) is not sent: its row gets
   `error = "governance: data class <class> not allowed for <model>"` (no content), whatever the cache holds;
2. requests whose cache key is already in the `CallCache` are not sent again (resume);
3. the rest are grouped by generation settings and sorted by prompt length (less padding and fewer wasted
   decoding steps for batching backends), cut into chunks of `chunk_size` and sent with at most
   `max_concurrency` chunks in flight (asyncio); each finished chunk is committed to the cache *before*
   it counts as done, then the model's tqdm bar advances;
4. after generation (all models), each (model, task) group is graded in one batched `grade` call
   (graders may run their own event loop or subprocesses, so they run outside the generation loop).

Cost per row = input_tokens · price_in + output_tokens · price_out (fleet prices, USD per 1M tokens).
A failed call is a row with `error` set (score NaN, correct False), never a dropped row. Rows a grader
could not score (NaN) get `error = "grading: ..."`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from kronaxis_lab.backends.base import Backend, GenRequest, GenResult
from kronaxis_lab.data.fleet import Fleet
from kronaxis_lab.labeling.cache import CallCache, GroupCommitter, key_maker
from kronaxis_lab.labeling.prompts import PromptBook
from kronaxis_lab.serving.detectors import default_detectors
from kronaxis_lab.serving.governance import ALL, GovernancePolicy, endpoints_from_fleet

log = logging.getLogger(__name__)

BackendFactory = Callable[[], Backend]


class LabelError(ValueError):
    """A labelling setup problem (missing backend or grader, bad config); the message says what to fix."""


@dataclass
class ModelPlan:
    """How one fleet model is labelled."""

    name: str
    backend: Backend | BackendFactory  # an instance, or a factory called only if some call is not cached
    style: str = "chat"  # chat | completion (see kronaxis_lab.labeling.prompts)
    identity: Mapping[str, Any] = field(default_factory=dict)  # backend config minus non-semantic keys
    chunk_size: int | None = None  # requests per backend call; None → the backend's batch_size, else 1


@dataclass
class LabelResult:
    outcomes: pd.DataFrame  # OUTCOME_COLUMNS + task, cached, retries, fallbacks, finish_reason
    summary: pd.DataFrame  # one row per model
    by_task: pd.DataFrame  # model × task accuracy
    stats: dict[str, Any]


class LabelRunner:
    """Labels a queries table with every model of `plans`; see the module docstring.

    Args:
        fleet: prices (cost) and tiers (summary order).
        plans: one `ModelPlan` per model to label (names must be fleet models).
        prompts: task templates.
        graders: task → `Grader` (an instance with `grade(responses, golds, queries)`).
        cache: the resumable call store.
        max_concurrency: backend calls in flight per model.
        parallel_models: label all models at once (remote endpoints) instead of one after another
            (local models that share the CPU/GPU).
        correct_threshold: `correct = score ≥ threshold` (per task override in `correct_thresholds`).
        governance: which model may receive which sensitive data class; None = the router's default detectors
            (`detectors.default_detectors`) with the fleet's per-model `data_classes`.
    """

    def __init__(
        self,
        fleet: Fleet,
        plans: Sequence[ModelPlan],
        prompts: PromptBook,
        graders: Mapping[str, Any],
        cache: CallCache,
        max_concurrency: int = 4,
        parallel_models: bool = False,
        correct_threshold: float = 0.5,
        correct_thresholds: Mapping[str, float] | None = None,
        progress: bool = True,
        governance: GovernancePolicy | None = None,
    ):
        if max_concurrency < 1:
            raise LabelError(f"max_concurrency must be >= 1, got {max_concurrency}")
        unknown = [p.name for p in plans if p.name not in fleet.names]
        if unknown:
            raise LabelError(f"model(s) {unknown} are not in the fleet {fleet.names}")
        if not plans:
            raise LabelError("no models to label")
        self.fleet, self.plans, self.prompts = fleet, list(plans), prompts
        self.graders, self.cache = dict(graders), cache
        self.max_concurrency, self.parallel_models = int(max_concurrency), bool(parallel_models)
        self.correct_threshold = float(correct_threshold)
        self.correct_thresholds = dict(correct_thresholds or {})
        self.progress = progress
        self.governance = governance or GovernancePolicy(default_detectors(), endpoints=endpoints_from_fleet(fleet))
        self.backend_counters_: dict[str, dict[str, Any]] = {}
        self.calls_: dict[str, int] = {}
        self.gen_wall_s_: dict[str, float] = {}
        self.grader_stats_: dict[tuple[str, str], dict[str, Any]] = {}

    # -- public ----------------------------------------------------------------------------------------
    def check(self, queries: pd.DataFrame) -> None:
        """Fail before any call if a task has no prompt template or grader."""
        tasks = sorted(set(queries["task"].fillna("default")))
        self.prompts.check_tasks(tasks)
        missing = [t for t in tasks if t not in self.graders]
        if missing:
            raise LabelError(f"no grader for task(s) {missing}: add +grader@graders.{missing[0]}=<name> (a file of "
                             "configs/grader/) or a `- /grader@graders.<task>: <name>` line to configs/label.yaml, "
                             "or grade every task alike with grader=<name>")

    def run(self, queries: pd.DataFrame) -> LabelResult:
        self.check(queries)
        queries = queries.reset_index(drop=True)
        records = queries.to_dict("records")
        requests = {p.name: [self.prompts.request(q, p.style) for q in records] for p in self.plans}
        blocked = self._governance_blocks(requests)
        results = asyncio.run(self._generate_all(requests, blocked))
        frame = self._frame(queries, requests, results)
        frame = self._grade(queries, frame)
        summary, by_task = self._summaries(frame)
        stats = {"cache_hits": self.cache.hits, "cache_misses": self.cache.misses, "calls": dict(self.calls_),
                 "generation_wall_s": dict(self.gen_wall_s_), "backend_counters": self.backend_counters_,
                 "grader_stats": {f"{m}/{t}": st for (m, t), st in self.grader_stats_.items()}}
        return LabelResult(frame, summary, by_task, stats)

    # -- generation ------------------------------------------------------------------------------------
    def _governance_blocks(self, requests: dict[str, list[GenRequest]]) -> dict[str, dict[int, GenResult]]:
        """Per model: row → the governance error of each request it may not receive (each text scanned once)."""
        gov, out = self.governance, {}
        found: dict[str, set[str]] = {}
        for p in self.plans:
            allow = gov.endpoints.get(p.name, gov.default_allowed)
            if allow == ALL:
                out[p.name] = {}
                continue
            texts = [_request_text(r) for r in requests[p.name]]
            new = list(dict.fromkeys(t for t in texts if t not in found))
            found.update(zip(new, gov.detect(new)))
            out[p.name] = {i: GenResult(error=f"governance: data class {sorted(bad)[0]} not allowed for {p.name}")
                           for i, t in enumerate(texts) if (bad := found[t] - allow)}
            if out[p.name]:
                log.info("%s: %d request(s) not sent: they carry data classes the model may not receive",
                         p.name, len(out[p.name]))
        return out

    async def _generate_all(self, requests: dict[str, list[GenRequest]],
                            blocked: dict[str, dict[int, GenResult]]) -> dict[str, list[GenResult]]:
        self._committer = GroupCommitter(self.cache)
        if self.parallel_models:
            done = await asyncio.gather(*(self._generate(p, requests[p.name], i, blocked[p.name])
                                          for i, p in enumerate(self.plans)))
            return {p.name: r for p, r in zip(self.plans, done)}
        return {p.name: await self._generate(p, requests[p.name], 0, blocked[p.name]) for p in self.plans}

    async def _generate(self, plan: ModelPlan, reqs: list[GenRequest], position: int,
                        blocked: Mapping[int, GenResult]) -> list[GenResult]:
        """Results per request; `blocked` rows (governance) are never looked up, sent or cached."""
        if blocked:
            sent = [i for i in range(len(reqs)) if i not in blocked]
            res = await self._generate(plan, [reqs[i] for i in sent], position, {}) if sent else []
            out: list[GenResult] = [blocked[i] if i in blocked else GenResult() for i in range(len(reqs))]
            for i, r in zip(sent, res):
                out[i] = r
            return out
        key = key_maker(plan.name, plan.identity)
        keys = [key(r) for r in reqs]
        cached = self.cache.get_many(list(dict.fromkeys(keys)))
        results: list[GenResult | None] = [cached.get(k) for k in keys]
        # identical requests (same prompt text under two query ids) are sent once
        todo_keys = list(dict.fromkeys(k for k in keys if k not in cached))
        first = {k: i for i, k in reversed(list(enumerate(keys)))}
        mult = Counter(keys)
        n_cached = sum(r is not None for r in results)
        self.calls_[plan.name] = 0
        bar = tqdm(total=len(reqs), initial=n_cached, desc=f"label {plan.name}", unit="call",
                   position=position, disable=not self.progress, dynamic_ncols=True)
        if n_cached:
            log.info("%s: %d/%d calls already in the cache", plan.name, n_cached, len(reqs))
        if not todo_keys:
            bar.close()
            return list(results)  # type: ignore[arg-type]
        backend = plan.backend() if callable(plan.backend) and not isinstance(plan.backend, Backend) else plan.backend
        chunk = plan.chunk_size or int(getattr(backend, "batch_size", 1) or 1)
        # chunks of alike requests: same generation settings (a batching backend pads every row to the longest
        # prompt and decodes to the largest max_tokens of its batch), longest prompts first
        todo_keys.sort(key=lambda k: _batch_key(reqs[first[k]]))
        chunks = [todo_keys[i:i + chunk] for i in range(0, len(todo_keys), chunk)]
        sem = asyncio.Semaphore(self.max_concurrency)
        by_key: dict[str, GenResult] = {}
        t0 = time.perf_counter()

        async def one(ck: list[str]) -> None:
            batch = [reqs[first[k]] for k in ck]
            async with sem:
                try:
                    out = await backend.agenerate(batch)
                    if len(out) != len(batch):
                        raise RuntimeError(f"backend returned {len(out)} results for {len(batch)} requests")
                except Exception as e:  # the contract says no raise; if one does, rows carry it
                    log.exception("%s: backend call failed", plan.name)
                    out = [GenResult(error=f"backend: {type(e).__name__}: {e}") for _ in batch]
            await self._committer.commit(plan.name, zip(ck, batch, out))  # committed before it counts as done
            self.calls_[plan.name] += len(batch)
            for k, r in zip(ck, out):
                by_key[k] = r
            bar.update(sum(mult[k] for k in ck))

        try:
            await asyncio.gather(*(one(c) for c in chunks))
        finally:
            bar.close()
            self.gen_wall_s_[plan.name] = time.perf_counter() - t0
            counters = getattr(backend, "counters", None)
            if isinstance(counters, Mapping):
                self.backend_counters_[plan.name] = dict(counters)
            await _close(backend)
        return [r if r is not None else by_key[k] for r, k in zip(results, keys)]

    # -- outcome rows ----------------------------------------------------------------------------------
    def _frame(self, queries: pd.DataFrame, requests: dict[str, list[GenRequest]],
               results: dict[str, list[GenResult]]) -> pd.DataFrame:
        parts = []
        for p in self.plans:
            res = results[p.name]
            meta = [r.meta or {} for r in res]
            parts.append(pd.DataFrame({
                "query_id": queries["query_id"].to_numpy(),
                "model": p.name,
                "task": queries["task"].fillna("default").to_numpy(),
                "response": [r.text if not r.error else (r.text or None) for r in res],
                "input_tokens": [int(r.input_tokens) for r in res],
                "output_tokens": [int(r.output_tokens) for r in res],
                "latency_s": [float(r.latency_s) for r in res],
                "error": [r.error or None for r in res],
                "cached": [bool(m.get("cached")) for m in meta],
                "retries": [int(m.get("retries") or 0) for m in meta],
                "fallbacks": [int(m.get("fallbacks") or 0) for m in meta],
                "finish_reason": [m.get("finish_reason") for m in meta],
            }))
        frame = pd.concat(parts, ignore_index=True)
        frame["cost_usd"] = self.fleet.cost(frame["model"].tolist(), frame["input_tokens"].to_numpy(float),
                                            frame["output_tokens"].to_numpy(float))
        frame["score"] = np.nan
        frame["correct"] = False
        return frame

    def _grade(self, queries: pd.DataFrame, frame: pd.DataFrame) -> pd.DataFrame:
        golds = queries.set_index("query_id")["gold"]
        texts = queries.set_index("query_id")["text"]
        self.grader_stats_ = {}
        ok = frame["error"].isna()
        for (model, task), idx in frame[ok].groupby(["model", "task"]).groups.items():
            rows = frame.loc[idx]
            grader = self.graders[task]
            qids = rows["query_id"]
            try:
                scores = np.asarray(grader.grade(rows["response"].fillna("").tolist(),
                                                 [_none(g) for g in golds.loc[qids].tolist()],
                                                 texts.loc[qids].tolist()), dtype=float)
            except ValueError as e:  # bad gold / bad grader input: a dataset or config problem, say where
                raise LabelError(f"grading task '{task}' for model '{model}' with {type(grader).__name__} "
                                 f"failed: {e}") from e
            if scores.shape != (len(rows),):
                raise LabelError(f"{type(grader).__name__} returned {scores.shape} scores for {len(rows)} responses")
            stats = dict(getattr(grader, "last_stats_", {}) or {})
            self.grader_stats_[(model, task)] = stats
            frame.loc[idx, "score"] = np.clip(scores, 0.0, 1.0)
            failed = np.isnan(scores)
            if failed.any():
                frame.loc[idx[failed], "error"] = f"grading: {type(grader).__name__} gave no score"
        thr = frame["task"].map(self.correct_thresholds).fillna(self.correct_threshold)
        frame["correct"] = frame["error"].isna() & (frame["score"].fillna(0.0) >= thr)
        return frame

    # -- summaries -------------------------------------------------------------------------------------
    def _summaries(self, frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
        rows = []
        for name in [p.name for p in self.plans]:
            f = frame[frame["model"] == name]
            ok = f[f["error"].isna()]
            counters = self.backend_counters_.get(name, {})
            rows.append({
                "model": name,
                "tier": self.fleet[name].tier,
                "n": len(f),
                "accuracy": float(ok["score"].mean()) if len(ok) else math.nan,
                "correct": int(f["correct"].sum()),
                "errors": int(f["error"].notna().sum()),
                "no_answer": self._no_answer(name),
                "mean_input_tokens": float(f["input_tokens"].mean()) if len(f) else math.nan,
                "mean_output_tokens": float(f["output_tokens"].mean()) if len(f) else math.nan,
                "total_usd": float(f["cost_usd"].sum()),
                "mean_latency_s": float(ok["latency_s"].mean()) if len(ok) else math.nan,
                "p95_latency_s": float(ok["latency_s"].quantile(0.95)) if len(ok) else math.nan,
                "calls": int(self.calls_.get(name, 0)),
                "cached": int(f["cached"].sum()),
                "retries": int(f["retries"].sum()),
                "fallbacks": int(f["fallbacks"].sum()),
                "backend_retries": int(counters.get("retries", 0)),
                "backend_fallbacks": int(counters.get("fallbacks", 0)),
            })
        summary = pd.DataFrame(rows)
        by_task = (frame.assign(ok=frame["error"].isna())
                   .groupby(["model", "task"], sort=False)
                   .agg(n=("query_id", "size"), accuracy=("score", "mean"), correct=("correct", "sum"),
                        errors=("ok", lambda s: int((~s).sum())),
                        mean_output_tokens=("output_tokens", "mean"), total_usd=("cost_usd", "sum"))
                   .reset_index())
        by_task.insert(6, "no_answer", [self._no_answer(m, t) for m, t in zip(by_task["model"], by_task["task"])])
        return summary, by_task

    def _no_answer(self, model: str, task: str | None = None) -> int:
        """Responses in which the grader found no answer at all (its `last_stats_["no_answer"]`)."""
        return sum(int(st.get("no_answer", 0) or 0) for (m, t), st in self.grader_stats_.items()
                   if m == model and (task is None or t == task))


def _request_text(req: GenRequest) -> str:
    """Every string a request sends (prompt, or each message's content and other string fields)."""
    if req.prompt is not None:
        return req.prompt
    parts: list[str] = []
    stack: list[Any] = list(reversed(req.messages or []))
    while stack:
        x = stack.pop()
        if isinstance(x, str):
            parts.append(x)
        elif isinstance(x, Mapping):
            stack.extend(reversed([v for k, v in x.items() if k != "role"]))
        elif isinstance(x, (list, tuple)):
            stack.extend(reversed(x))
    return "\n".join(parts)


def _batch_key(req: GenRequest) -> tuple:
    n = len(req.prompt) if req.prompt is not None else sum(len(m.get("content") or "") for m in req.messages or [])
    return (req.max_tokens, req.temperature, tuple(req.stop or ()), -n)


def _none(x: Any) -> Any:
    """pandas' NA/NaN → None, so graders see 'no gold' uniformly."""
    if x is None:
        return None
    try:
        return None if pd.isna(x) is True else x
    except (TypeError, ValueError):
        return x


async def _close(backend: Backend) -> None:
    aclose = getattr(backend, "aclose", None)
    try:
        if aclose is not None:
            await aclose()
        else:
            backend.close()
    except Exception:  # closing must not lose finished work
        log.warning("closing backend %s failed", getattr(backend, "model", "?"), exc_info=True)
