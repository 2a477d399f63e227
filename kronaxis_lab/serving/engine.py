"""The routing decision, batch-first: conversation → classifier → policy → stickiness → governance.

For n conversations at once (one chat request, or a batch POST /v1/route), `RoutingEngine.decide` runs:

1. **classify** (`classify`) — the classifier reads the last user turn (what it was trained on), with earlier user
   turns appended as context (`settings.classify`); texts of concurrent requests share one ONNX call
   (micro-batching: the batcher's worker thread runs `classify`, then `choose`, once per micro-batch).
2. **policy** (`choose`; `propose` awaits both and records the reasons) — the bundle's policy at its calibrated
   parameter (`bundle.decide`), or a per-request override `kronaxis/<policy>:<param>` (policy built from the
   bundle's or the serve config's policy YAML). A client-forced model skips 1–2 (`passthrough`); a classifier
   failure fails open to the premium model or answers 503 (`fail_open`, per `settings.classifier_failure`).
3. **stickiness** (`stick`) — requests with a session key (header or OpenAI `user`) never go below the tier of
   their earlier turns (derived from the request itself, so every process agrees) or of a valid routing token:
   tier = max(proposed, floor); a raised tier takes the cheapest model of at least that tier.
4. **governance** (`govern` → `GovernancePolicy.guard`) — data classes found anywhere in the conversation (every
   string it carries) restrict the models that may receive it; a disallowed choice moves to the cheapest allowed
   model of at least its tier, else the strongest allowed one, else the request is refused. Governance runs
   last: it can veto anything. The scan runs in the engine's scan threads (`off_loop`), never on the event loop.

Requests are checked before they reach any stage: lone surrogates, unknown roles and malformed or out-of-range
`kronaxis/<policy>:<param>` values are 400s (`RequestError`), never a classifier failure that fails open.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import re
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from hydra.utils import instantiate

from kronaxis_lab.routing.policies import Policy
from kronaxis_lab.serving.batching import InferenceBatcher
from kronaxis_lab.serving.detectors import BodyScanner
from kronaxis_lab.serving.governance import GovernanceDecision, GovernancePolicy
from kronaxis_lab.serving.metrics import RouterMetrics
from kronaxis_lab.serving.protocols import RouterBundle
from kronaxis_lab.serving.settings import ServeConfigError, ServeSettings
from kronaxis_lab.serving.stickiness import StickinessGuard

log = logging.getLogger(__name__)


class RequestError(ValueError):
    """A client error, answered as an OpenAI-style error body with `status`."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code or str(self.status)}}


# --------------------------------------------------------------------------------------------------
# Requests
# --------------------------------------------------------------------------------------------------
ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})  # the OpenAI chat roles
SURROGATE = re.compile("[\ud800-\udfff]")  # a lone surrogate: not Unicode text, no tokenizer or upstream takes it
# a policy parameter: an ASCII decimal number (float() would also take "1_0", "١", "nan" and "-inf"), or +inf
PARAM = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]{1,3})?|[+]?inf", re.ASCII)


def _content_text(content: Any, where: str) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list):
        parts = []
        for k, p in enumerate(content):
            if not isinstance(p, dict):
                raise RequestError(400, f"{where}[{k}] must be an object (a content part)", param=f"{where}[{k}]")
            if p.get("type", "text") == "text":
                if not isinstance(p.get("text", ""), str):
                    raise RequestError(400, f"{where}[{k}].text must be a string", param=f"{where}[{k}].text")
                parts.append(p.get("text", ""))
        return "\n".join(parts)
    raise RequestError(400, f"{where} must be a string, a list of content parts or null, got {type(content).__name__}",
                       param=where)


def _strings(obj: Any) -> list[str]:
    """Every string inside a JSON value (content, names, tool-call arguments, URLs): what governance scans.
    Iterative, so a deeply nested body cannot exhaust the recursion limit."""
    out, stack = [], [obj]
    while stack:
        x = stack.pop()
        if isinstance(x, str):
            out.append(x)
        elif isinstance(x, dict):
            stack.extend(reversed(list(x.values())))
        elif isinstance(x, list):
            stack.extend(reversed(x))
    return out


@dataclass
class Conversation:
    """One request's conversation. `user_turns` are never empty (see `from_messages`)."""

    user_turns: list[str]
    full_text: str  # every string of every message
    session_key: str | None = None
    route_token: str | None = None
    body: Any = None  # what is forwarded (every field but `model`): the governance scan reads all of it
    tag: str | None = None  # request metadata tag for a bundle that blends one (export/metadata.py)

    @classmethod
    def from_messages(cls, messages: Any, max_messages: int, where: str = "messages",
                      session_key: str | None = None, route_token: str | None = None,
                      body: Any = None) -> "Conversation":
        if messages is None:
            raise RequestError(400, f"'{where}' is required", param=where)
        if not isinstance(messages, list) or not messages:
            raise RequestError(400, f"'{where}' must be a non-empty list of messages", param=where)
        if len(messages) > max_messages:
            raise RequestError(400, f"'{where}' has {len(messages)} messages, more than the limit {max_messages}",
                               param=where)
        turns, last_text = [], ""
        for k, m in enumerate(messages):
            if not isinstance(m, dict):
                raise RequestError(400, f"{where}[{k}] must be an object with 'role' and 'content'",
                                   param=f"{where}[{k}]")
            role = m.get("role")
            if not isinstance(role, str) or role not in ROLES:
                raise RequestError(400, f"{where}[{k}].role must be one of {sorted(ROLES)}", param=f"{where}[{k}].role")
            text = _content_text(m.get("content"), f"{where}[{k}].content")
            if text.strip():
                last_text = text
                if role == "user":
                    turns.append(text)
        if not last_text:
            raise RequestError(400, f"'{where}' contains no text to route on", param=where)
        full = "\n".join(s for m in messages for k, v in m.items() if k != "role" for s in _strings(v))
        if SURROGATE.search(full):  # the HTTP layer rejects these earlier; this guards library callers
            raise RequestError(400, f"'{where}' contains a lone surrogate (not valid Unicode text)", param=where,
                               code="invalid_unicode")
        return cls(user_turns=turns or [last_text], full_text=full, session_key=session_key or None,
                   route_token=route_token or None, body=body)


@dataclass(frozen=True)
class PolicySpec:
    """A per-request operating point: `kronaxis/<name>:<param>`."""

    name: str
    param: float

    @property
    def key(self) -> str:
        return f"{self.name}:{self.param:g}"


@dataclass
class Decision:
    model: str | None
    tier: int | None
    scores: dict[str, float]
    reasons: list[str]
    policy: str
    param: float | None
    data_classes: list[str] = field(default_factory=list)
    refused: bool = False
    route_token: str | None = None
    allowed: np.ndarray | None = None  # (m,) models this request may still go to (cross-model fallback)

    def to_json(self, expose_data_classes: bool = False) -> dict[str, Any]:
        """The decision as JSON; `data_classes` is null unless exposed (`ServeSettings.expose_data_classes`)."""
        param = self.param if self.param is None or math.isfinite(self.param) else str(self.param)  # JSON: "inf"
        return {"model": self.model, "tier": self.tier, "scores": self.scores, "reasons": self.reasons,
                "policy": self.policy, "param": param,
                "data_classes": self.data_classes if expose_data_classes else None, "refused": self.refused}


class _NeedTiers(Exception):
    def __init__(self, prefixes: list[tuple[str, ...]]) -> None:
        self.prefixes = prefixes


@dataclass
class _Draft:
    """A batch's decisions in the making: stages 1–2 fill it, stickiness raises `pref`, governance reads it."""

    pref: np.ndarray  # (n,) proposed model index per conversation
    policy: str
    param: float | None
    reasons: list[list[str]]
    scores: list[dict[str, float]]
    sticky: bool  # stickiness applies (not to client-forced models, nor without classifier tiers)
    route_tokens: list[str | None] = field(init=False)  # set by stickiness for keyed rows

    def __post_init__(self) -> None:
        self.route_tokens = [None] * len(self.pref)


# --------------------------------------------------------------------------------------------------
# Engine
# --------------------------------------------------------------------------------------------------
class RoutingEngine:
    """Routing decisions over a loaded bundle.

    Args:
        bundle: a `RouterBundle` (`load_bundle(dir)`).
        governance: the `GovernancePolicy` that vetoes models per data class.
        stickiness_factory: variant key → `StickinessGuard` (one guard per policy operating point, so tiers
            memoised under one threshold never leak into another); None disables stickiness.
        settings: `ServeSettings`.
        policies: policy name → Hydra config (with `_target_`) usable in `kronaxis/<name>:<param>`.
        metrics: optional `RouterMetrics`.
    """

    def __init__(self, bundle: RouterBundle, governance: GovernancePolicy,
                 stickiness_factory: Callable[[str], StickinessGuard] | None, settings: ServeSettings,
                 policies: Mapping[str, Any] | None = None, metrics: RouterMetrics | None = None) -> None:
        self.bundle, self.governance, self.settings, self.metrics = bundle, governance, settings, metrics
        self.metadata = getattr(bundle, "metadata", None)  # export/metadata.py; a test fake bundle may have none
        self.scanner = BodyScanner(governance)
        self.names: list[str] = [str(n) for n in bundle.model_names]
        fleet = bundle.fleet
        missing = [n for n in self.names if n not in fleet.names]
        if missing:
            raise ServeConfigError(f"bundle {bundle.dir}: models {missing} are not in its fleet")
        specs = [fleet[n] for n in self.names]
        self.tiers = np.array([s.tier for s in specs], dtype=np.int64)
        self.price_in = np.array([s.price_in for s in specs]) / 1e6  # USD per token
        self.price_out = np.array([s.price_out for s in specs]) / 1e6
        self.premium = str(bundle.premium)
        if self.premium not in self.names:
            raise ServeConfigError(f"bundle premium model {self.premium!r} is not one of {self.names}")
        self.premium_idx = self.names.index(self.premium)
        self.policy_name = str(bundle.policy_name)
        self.policy_param = None if bundle.param is None else float(bundle.param)  # router.json may say "inf"
        # per-request policies: the serve config's, and the bundle's own (run by bundle.decide)
        own = dict(bundle.meta.get("policy") or {}).get("config")
        self.policy_configs = {**dict(policies or {}), self.policy_name: own}
        self._policies: dict[str, Policy] = {}
        self._stickiness_factory = stickiness_factory
        self._guards: dict[str, StickinessGuard] = {}
        b = settings.batching
        # the worker thread runs classifier + policy per micro-batch (key = the request's operating point)
        self.batcher = InferenceBatcher(self.classify, self.choose, b.max_batch, b.max_wait_ms, b.enabled,
                                        workers=b.workers, on_batch=metrics.batch_size.observe if metrics else None)
        # body parsing and the governance scan run here, never on the event loop (/healthz stays responsive)
        self.scan_pool = ThreadPoolExecutor(settings.scan_threads, thread_name_prefix="kronaxis-scan")

    async def off_loop(self, fn: Callable[..., Any], *args: Any) -> Any:
        """`fn(*args)` in the scan threads."""
        return await asyncio.get_running_loop().run_in_executor(self.scan_pool, functools.partial(fn, *args))

    def close(self) -> None:
        self.scan_pool.shutdown(wait=False, cancel_futures=True)

    # -- request interpretation --------------------------------------------------------------------
    def parse_model(self, model: Any) -> tuple[PolicySpec | None, int | None]:
        """`model` field → (policy override or None, forced model index or None)."""
        s = self.settings
        if model is None:
            if s.default_model is None:
                raise RequestError(400, "'model' is required", param="model")
            model = s.default_model
        if not isinstance(model, str):
            raise RequestError(400, "'model' must be a string", param="model")
        if model in s.auto_models:
            return None, None
        if model in self.names:
            return None, self.names.index(model)
        if model.startswith(s.policy_prefix):
            return self._parse_policy(model), None
        raise RequestError(404, f"model {model!r} does not exist: use {s.auto_models[0]!r}, "
                           f"'{s.policy_prefix}<policy>:<param>' or a fleet model {self.names}",
                           param="model", code="model_not_found")

    def _parse_policy(self, model: str) -> PolicySpec:
        """`kronaxis/<name>:<param>` → PolicySpec (`kronaxis/<bundle policy>` = its calibrated parameter)."""
        s = self.settings
        name, _, param = model[len(s.policy_prefix):].partition(":")
        if name not in self.policy_configs or name == "":
            raise RequestError(404, f"unknown routing policy {name!r} in model {model!r}; available: "
                               f"{sorted(self.policy_configs)} (or {s.auto_models[0]!r})",
                               param="model", code="model_not_found")
        if not param:
            if name == self.policy_name and self.policy_param is not None:
                return PolicySpec(name, float(self.policy_param))
            raise RequestError(400, f"model {model!r} needs an operating parameter: "
                               f"'{s.policy_prefix}{name}:<number>'", param="model")
        value = float(param) if len(param) <= 32 and PARAM.fullmatch(param) else None
        if value is None or (math.isinf(value) and "inf" not in param):  # 1e999 overflows to inf: not "inf"
            raise RequestError(400, f"model {model!r}: the parameter must be a decimal number (ASCII digits, "
                               "e.g. 0.5, 2e-3) or inf", param="model")
        self._check_param(name, value, model)
        return PolicySpec(name, value)

    def _check_param(self, name: str, value: float, model: str) -> None:
        """400 unless the policy accepts `value`: one choice on a dummy row, so an out-of-range parameter is the
        client's error here instead of a classifier-time failure (which would fail open)."""
        if self.policy_configs.get(name) is None:
            return  # the bundle's own policy without a config: bundle.decide validates
        m = len(self.names)
        try:
            idx = self._policy(name).choose(np.full((1, m), 0.5), np.tile(self.price_in + self.price_out, (1, 1)),
                                            [value])
            np.asarray(idx, dtype=np.int64)
        except RequestError:
            raise
        except (ValueError, TypeError, ArithmeticError):
            raise RequestError(400, f"model {model!r}: parameter {value:g} is out of the range policy {name!r} "
                               "accepts", param="model") from None

    def classify_text(self, turns: Sequence[str]) -> str:
        """Last user turn, then up to `context_turns` earlier ones (most recent first), bounded in length."""
        c = self.settings.classify
        ctx = [t[: c.context_max_chars] for t in reversed(turns[max(0, len(turns) - 1 - c.context_turns):-1])]
        return c.separator.join([turns[-1], *ctx])[: c.max_chars]

    # -- the decision ------------------------------------------------------------------------------
    async def decide(self, convs: Sequence[Conversation], spec: PolicySpec | None = None, forced: int | None = None,
                     available: np.ndarray | None = None) -> list[Decision]:
        """Decisions for a batch, stage by stage (module docstring). `available` (m,) bool: models that can be
        called (have an upstream); None = all."""
        draft = self.passthrough(len(convs), forced) if forced is not None else await self.propose(convs, spec)
        if draft.sticky:
            await self.stick(convs, spec, draft)
        return await self.govern(convs, draft, available)

    # -- 1 + 2: classify and policy ----------------------------------------------------------------
    def classify(self, texts: list[str]) -> np.ndarray:
        """(n, m) P̂ for the texts of one micro-batch (runs in the batcher's worker thread)."""
        return self.bundle.predict_proba(texts, self.settings.variant)

    def choose(self, P: np.ndarray, texts: Sequence[str], spec: PolicySpec | None) -> np.ndarray:
        """Model index per row of P̂ under the bundle's policy (at its parameter, or the override's) or
        another configured policy (runs in the batcher's worker thread, once per operating point)."""
        texts = list(texts)
        if spec is None:
            idx = self.bundle.decide(P, texts)
        elif spec.name == self.policy_name:
            idx = self.bundle.decide(P, texts, param=spec.param)
        else:
            idx = self._policy(spec.name).choose(P, self.bundle.expected_cost(texts), [spec.param])[0]
        idx = np.asarray(idx, dtype=np.int64).reshape(-1)
        if idx.shape != (P.shape[0],) or (len(idx) and (idx.min() < 0 or idx.max() >= len(self.names))):
            raise RuntimeError(f"policy returned invalid model indices {idx.tolist()} for {P.shape[0]} queries")
        return idx

    def _policy(self, name: str) -> Policy:
        if name not in self._policies:
            try:
                self._policies[name] = instantiate(self.policy_configs[name]).bind(self.bundle.fleet, None)
            except Exception as e:  # noqa: BLE001 - e.g. a policy that needs per-query task labels
                raise RequestError(400, f"policy {name!r} cannot be used per request: {type(e).__name__}: {e}",
                                   param="model") from None
        return self._policies[name]

    async def propose(self, convs: Sequence[Conversation], spec: PolicySpec | None) -> _Draft:
        """Stages 1–2 for a batch: the policy's model per conversation, with its P̂ as scores."""
        n = len(convs)
        try:
            P, pref = await self.batcher.predict([self.classify_text(c.user_turns) for c in convs], spec)
            if P.shape != (n, len(self.names)):
                raise RuntimeError(f"classifier returned shape {P.shape}, expected {(n, len(self.names))}")
        except RequestError:
            raise
        except Exception as e:  # noqa: BLE001 - fail open (premium) or 503, per settings
            return self.fail_open(n, e)
        md, tags = self.metadata, [c.tag for c in convs]
        if md is not None and any(t is not None for t in tags):  # tagged requests: the bundle's blend, re-decided
            try:
                P = md.apply(P, tags)
                rows = [i for i, t in enumerate(tags) if t is not None]
                texts = [self.classify_text(convs[i].user_turns) for i in rows]
                pref = np.array(pref, dtype=np.int64)
                pref[rows] = await self.off_loop(self.choose, P[rows], texts, spec)
            except RequestError:
                raise
            except Exception as e:  # noqa: BLE001 - fail open, as a classifier failure
                return self.fail_open(n, e)
        policy, param = (self.policy_name, self.policy_param) if spec is None else (spec.name, spec.param)
        shown = param if param is None else f"{float(param):g}"
        # Python floats and ints once per batch: numpy scalar indexing per row and model costs more than the rest
        names, rows, picks = self.names, np.asarray(P, dtype=float).tolist(), np.asarray(pref).tolist()
        head = f"policy {policy}({shown}) -> "
        reasons = [[f"{head}{names[j]} (P={row[j]:.3f})"] for row, j in zip(rows, picks)]
        scores = [dict(zip(names, [round(x, 4) for x in row])) for row in rows]
        return _Draft(pref.copy(), policy, param, reasons, scores, sticky=True)  # later stages adjust pref

    def passthrough(self, n: int, forced: int) -> _Draft:
        """A client-named fleet model replaces stages 1–2 (governance still applies)."""
        return _Draft(np.full(n, forced, dtype=np.int64), "passthrough", None,
                      [[f"model {self.names[forced]} requested by the client"] for _ in range(n)],
                      [{} for _ in range(n)], sticky=False)

    def fail_open(self, n: int, error: Exception) -> _Draft:
        """Classifier (or policy) failure: the premium model for every row, or 503 (`settings.classifier_failure`)."""
        if self.metrics:
            self.metrics.classifier_failures.inc()
        log.error("classifier failed: %s", type(error).__name__)  # not the message: it may quote the text
        if self.settings.classifier_failure == "error":
            raise RequestError(503, "the routing classifier is unavailable", type="service_unavailable",
                               code="classifier_unavailable") from None
        why = f"classifier failed ({type(error).__name__}): fail-open to premium {self.premium}"
        return _Draft(np.full(n, self.premium_idx, dtype=np.int64), "fail_open", None, [[why] for _ in range(n)],
                      [{} for _ in range(n)], sticky=False)

    # -- 3: stickiness -----------------------------------------------------------------------------
    def stickiness_guard(self, spec: PolicySpec | None) -> StickinessGuard | None:
        """The guard of this operating point (None when stickiness is off)."""
        if self._stickiness_factory is None or not self.settings.session.enabled:
            return None
        key = "default" if spec is None else spec.key
        g = self._guards.get(key)
        if g is None:
            if len(self._guards) >= 64:  # bound memory under many distinct per-request operating points
                self._guards.pop(next(iter(self._guards)))
            g = self._guards[key] = self._stickiness_factory(key)
        return g

    async def stick(self, convs: Sequence[Conversation], spec: PolicySpec | None, draft: _Draft) -> None:
        """Raise keyed rows to tier = max(proposed, floor of earlier turns, token tier); issue routing tokens."""
        guard = self.stickiness_guard(spec)
        keyed = [i for i, c in enumerate(convs) if c.session_key] if guard is not None else []
        if not keyed:
            return
        pref = draft.pref
        keys = [str(convs[i].session_key) for i in keyed]
        all_turns = self.settings.session.scheme == "all_turns"
        turns = [convs[i].user_turns if all_turns else convs[i].user_turns[:1] for i in keyed]
        known = {tuple(convs[i].user_turns): int(self.tiers[pref[i]]) for i in keyed}
        floor = await self._floor(guard, keys, turns, known, spec)
        firsts = [convs[i].user_turns[0] for i in keyed]
        routed = guard.apply(keys, firsts, self.tiers[pref[keyed]], floor,
                             tokens=[convs[i].route_token for i in keyed])
        sticky_tier = np.empty(len(keyed), dtype=np.int64)
        for k, i in enumerate(keyed):
            if routed[k] > self.tiers[pref[i]]:
                pref[i] = self._lift(int(pref[i]), int(routed[k]))
                draft.reasons[i].append(f"sticky: session floor tier {int(routed[k])} -> {self.names[pref[i]]}")
                if self.metrics:
                    self.metrics.sticky_escalations.inc()
            sticky_tier[k] = max(int(routed[k]), int(self.tiers[pref[i]]))
        for i, token in zip(keyed, guard.issue_tokens(keys, firsts, sticky_tier)):
            draft.route_tokens[i] = token

    async def _floor(self, guard: StickinessGuard, keys: list[str], turns: list[list[str]],
                     known: dict[tuple[str, ...], int], spec: PolicySpec | None) -> np.ndarray:
        """`guard.floor` whose tier_fn classifies the prefixes it misses (batched, awaited outside the guard)."""
        for _ in range(4):
            def tier_fn(prefixes: list[tuple[str, ...]]) -> list[int]:
                missing = [p for p in prefixes if p not in known]
                if missing:
                    raise _NeedTiers(missing)
                return [known[p] for p in prefixes]

            try:
                return guard.floor(keys, turns, tier_fn)
            except _NeedTiers as need:
                uniq = list(dict.fromkeys(need.prefixes))
                _, idx = await self.batcher.predict([self.classify_text(list(p)) for p in uniq], spec)
                known.update(zip(uniq, (int(t) for t in self.tiers[idx])))
        raise RuntimeError("stickiness floor did not settle")  # only if the cache thrashes between awaits

    def _lift(self, pref: int, min_tier: int) -> int:
        """`pref` if its tier is high enough, else the cheapest model of at least `min_tier`."""
        if self.tiers[pref] >= min_tier:
            return pref
        ok = np.flatnonzero(self.tiers >= min_tier)
        if not len(ok):
            return int(np.argmax(self.tiers))
        price = self.price_in + self.price_out
        return int(ok[np.lexsort((self.tiers[ok], price[ok]))[0]])

    # -- 4: governance -----------------------------------------------------------------------------
    async def govern(self, convs: Sequence[Conversation], draft: _Draft,
                     available: np.ndarray | None) -> list[Decision]:
        """`GovernancePolicy.guard` over each request's whole forwarded body (every key, string and number,
        values split across fields: `detectors.BodyScanner`); the final decisions."""
        # scanned off the event loop (whatever the size), so other requests and /healthz keep flowing meanwhile;
        # scan and guard in one hop (a thread hop costs about as much CPU as the guard itself)
        g = await self.off_loop(self.scan_and_guard, convs, draft.pref, available)
        out = [self._decision(i, draft, g) for i in range(len(convs))]
        if self.metrics:  # one increment per (model, tier) of the batch, not one label lookup per decision
            for (model, tier), k in Counter((d.model, d.tier) for d in out if d.model is not None).items():
                self.metrics.decisions.labels(model=model, tier=str(tier)).inc(k)
        return out

    def scan_and_guard(self, convs: Sequence[Conversation], pref: np.ndarray,
                       available: np.ndarray | None) -> GovernanceDecision:
        """The governance scan of each request's body, then `GovernancePolicy.guard` (runs in a scan thread)."""
        counts = self.scanner.count_many([c.full_text if c.body is None else c.body for c in convs])
        return self.governance.guard([c.full_text for c in convs], pref, self.names, self.tiers,
                                     self.price_in + self.price_out,
                                     None if available is None else np.asarray(available, dtype=bool), counts=counts)

    def _decision(self, i: int, draft: _Draft, g: GovernanceDecision) -> Decision:
        p, chosen, classes = int(draft.pref[i]), g.chosen[i], sorted(g.found[i])
        reasons = draft.reasons[i]
        shown = classes if self.settings.expose_data_classes else "sensitive data"  # what a client may learn
        if classes:
            reasons.append(f"governance: found {shown}")
        if chosen != p:
            blocked = not g.allowed[i, p]  # else: p has no upstream
            why = (f"governance: {self.names[p]} may not receive {shown}" if blocked
                   else f"no upstream configured for {self.names[p]}")
            reasons.append(f"{why}; no allowed model available: refused" if chosen is None
                           else f"{why} -> {self.names[chosen]}")
            if self.metrics and blocked:
                action = "refused" if chosen is None else "rerouted"
                for c in classes or ["unknown"]:
                    self.metrics.governance_blocks.labels(action=action, data_class=c).inc()
        return Decision(model=None if chosen is None else self.names[chosen],
                        tier=None if chosen is None else int(self.tiers[chosen]),
                        scores=draft.scores[i], reasons=reasons, policy=draft.policy,
                        param=None if draft.param is None else float(draft.param), data_classes=classes,
                        refused=chosen is None, route_token=draft.route_tokens[i],
                        allowed=g.mask[i].copy())

    # -- after the decision ------------------------------------------------------------------------
    def fallback_order(self, decision: Decision) -> list[int]:
        """Other allowed models for a failed upstream: same-or-higher tiers cheapest first, then lower tiers
        strongest first."""
        if decision.allowed is None or decision.model is None:
            return []
        cur = self.names.index(decision.model)
        price = self.price_in + self.price_out
        ok = [j for j in np.flatnonzero(decision.allowed) if j != cur]
        up = sorted((j for j in ok if self.tiers[j] >= self.tiers[cur]), key=lambda j: (price[j], self.tiers[j], j))
        down = sorted((j for j in ok if self.tiers[j] < self.tiers[cur]), key=lambda j: (-self.tiers[j], price[j], j))
        return [int(j) for j in up + down]

    def usage_cost(self, model: str, input_tokens: float, output_tokens: float) -> tuple[float, float]:
        """(cost of `model`, cost of the premium model) for the same token counts, USD."""
        j = self.names.index(model)
        p = self.premium_idx
        return (input_tokens * self.price_in[j] + output_tokens * self.price_out[j],
                input_tokens * self.price_in[p] + output_tokens * self.price_out[p])
