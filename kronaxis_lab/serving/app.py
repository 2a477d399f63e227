"""The production router: an OpenAI-compatible FastAPI app over an exported bundle.

    app = create_app(load_bundle(dir), Upstreams(models={...}), ServeSettings())
    uvicorn.run(app, host="127.0.0.1", port=8080)          # or: kronaxis-serve bundle=<dir> server.port=8080

`create_app` wires a `RouterService` (the app's state: engine, upstreams, settings, metrics) into FastAPI: each
endpoint below is one of its methods.

Endpoints
- `POST /v1/chat/completions` — OpenAI chat body. `model`: "kronaxis/auto" (route with the bundle's policy),
  "kronaxis/<policy>:<param>" (route at another operating point), or a fleet model name (pass-through; governance
  still applies). The request is routed (see `engine.py`), forwarded through the chosen model's endpoint chain
  (retries, Retry-After, key rotation, endpoint fallback) and, when that whole chain fails, to the next allowed
  model. `stream: true` passes the upstream's SSE through. The upstream's answer comes back unchanged, with
  headers `x-kronaxis-model`, `x-kronaxis-tier`, `x-kronaxis-scores` (JSON: model → P̂),
  `x-kronaxis-reasons` (JSON list), `x-kronaxis-policy`, `x-kronaxis-endpoint` (which endpoint of the chain
  answered), `x-kronaxis-route` (signed routing token, when a session key was given: echo it on the next turn)
  and, only with `settings.expose_data_classes`, `x-kronaxis-data-classes` (sensitive classes found, if any).
- `POST /v1/route` — decision only: `{"messages": [...]}` → `{model, tier, scores, reasons, ...}`; a batch
  `{"requests": [{"messages": ...}, ...]}` → `{"results": [...]}`.
- `GET /healthz`, `GET /metrics` (Prometheus), `GET /v1/models`.
- `GET /v1/models/{id}`, `POST /v1/completions`, `POST /v1/responses`, `POST /v1/embeddings`: `openai_surface.py`.

Errors are OpenAI-style `{"error": {message, type, param, code}}`: 400 malformed JSON / fields (NaN or Infinity,
numbers that overflow, lone surrogates in any string or key, wrong types or out-of-range values of the OpenAI
parameters, a malformed `kronaxis/<policy>:<param>`), 401 missing/invalid router API key and 429 over the key's
rate limit (`auth.py`), 404 unknown model, 413 oversized body, 403 governance refusal, 502 every upstream
failed, 503 no upstreams configured. Body parsing and the governance scan run in worker threads
(`RoutingEngine.off_loop`), never on the event loop. Request content (bodies, upstream error bodies, exception
messages), headers and API keys are never logged nor used as metric labels.
"""

# no `from __future__ import annotations`: FastAPI must see the real `Request` class in route signatures
import asyncio
import json
import logging
import math
import os
import time
import traceback
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Callable, Mapping

import numpy as np
import pydantic_core
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from kronaxis_lab.backends.base import estimate_tokens
from kronaxis_lab.export.metadata import TAG_HEADER
from kronaxis_lab.monitoring.live import LiveMonitor
from kronaxis_lab.monitoring.settings import MonitorSettings
from kronaxis_lab.serving.auth import CURRENT_KEY_ID, AuthMiddleware, KeyStore, RateLimiter, auth_enabled
from kronaxis_lab.serving.components import build_governance
from kronaxis_lab.serving.detectors import warm_up as detectors_warm_up
from kronaxis_lab.serving.engine import SURROGATE, Conversation, Decision, PolicySpec, RequestError, RoutingEngine
from kronaxis_lab.serving.governance import GovernancePolicy
from kronaxis_lab.serving.metrics import RouterMetrics
from kronaxis_lab.serving.openai_surface import OpenAISurface
from kronaxis_lab.serving.protocols import RouterBundle
from kronaxis_lab.serving.settings import ServeConfigError, ServeSettings, SessionSettings
from kronaxis_lab.serving.stickiness import StickinessGuard
from kronaxis_lab.serving.upstreams import Upstreams

log = logging.getLogger(__name__)

CHAT_PATH = "/chat/completions"
ROUTER_FIELDS = ("route_token",)  # request fields the router reads and does not forward upstream
CLIENT_ERROR_STATUS = {400, 413, 422}  # an upstream refusing these refuses the request, not the router
OFF_LOOP_BYTES = 32_768  # bodies at least this large are parsed in a scan thread (smaller: not worth the hop)

_NUM = (int, float)
# OpenAI chat parameters the router checks before forwarding: name → (JSON types, lo, hi); null is allowed for
# each. A wrong type or range is the client's 400 here, not an upstream 4xx that would end as a 502.
CHAT_PARAMS: dict[str, tuple] = {
    "temperature": (_NUM, 0, 2), "top_p": (_NUM, 0, 1), "presence_penalty": (_NUM, -2, 2),
    "frequency_penalty": (_NUM, -2, 2), "n": (int, 1, 128), "max_tokens": (int, 1, 2**31 - 1),
    "max_completion_tokens": (int, 1, 2**31 - 1), "seed": (int, -(2**63), 2**63 - 1), "top_logprobs": (int, 0, 20),
    "logprobs": (bool,), "stream": (bool,), "parallel_tool_calls": (bool,), "store": (bool,), "user": (str,),
    "service_tier": (str,), "reasoning_effort": (str,), "route_token": (str,), "stop": ((str, list),),
    "tools": (list,), "tool_choice": ((str, dict),), "response_format": (dict,), "stream_options": (dict,),
    "metadata": (dict,), "logit_bias": (dict,), "modalities": (list,),
}


def _header_json(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=True, separators=(",", ":"))


class DecisionResponse(JSONResponse):
    """A JSON response rendered by pydantic-core (FastAPI's own serialiser, in Rust): the same compact UTF-8 JSON
    as `JSONResponse` at about a third of its CPU on a 64-decision body. Decisions hold no NaN; were one there it
    would be written as null, still valid JSON."""

    def render(self, content: Any) -> bytes:
        return pydantic_core.to_json(content, inf_nan_mode="null")


def decision_headers(d: Decision, expose_data_classes: bool = False) -> dict[str, str]:
    h = {
        "x-kronaxis-model": d.model or "",
        "x-kronaxis-tier": "" if d.tier is None else str(d.tier),
        "x-kronaxis-scores": _header_json(d.scores),
        "x-kronaxis-reasons": _header_json(d.reasons),
        "x-kronaxis-policy": d.policy if d.param is None else f"{d.policy}:{d.param:g}",
    }
    if d.data_classes and expose_data_classes:  # opt-in: it tells a client what tripped the detectors
        h["x-kronaxis-data-classes"] = ",".join(d.data_classes)
    if d.route_token:
        h["x-kronaxis-route"] = d.route_token
    return h


def reply_text(data: Any) -> str:
    """The text of an upstream's chat (or legacy completion) answer, "" when it has none."""
    try:
        choice = data["choices"][0]
        return (choice["message"]["content"] if "message" in choice else choice["text"]) or ""
    except (KeyError, IndexError, TypeError):
        return ""


def sse_from_completion(data: Mapping[str, Any], include_usage: bool = False) -> list[bytes]:
    """A whole chat completion as the SSE chunks a streaming client reads (a cascade judges the reply before
    returning any of it): role + content, the finish reason, usage when asked for, [DONE]."""
    base = {"id": data.get("id", "chatcmpl-kronaxis"), "object": "chat.completion.chunk",
            "created": data.get("created", int(time.time())), "model": data.get("model", "")}
    out = []
    for i, ch in enumerate(data.get("choices") or []):
        msg = ch.get("message") or {}
        out.append({**base, "choices": [{"index": i, "delta": {"role": msg.get("role", "assistant"),
                                                                "content": msg.get("content") or ""},
                                         "finish_reason": None}]})
        out.append({**base, "choices": [{"index": i, "delta": {}, "finish_reason": ch.get("finish_reason", "stop")}]})
    if include_usage and data.get("usage"):
        out.append({**base, "choices": [], "usage": data["usage"]})
    return [f"data: {json.dumps(c)}\n\n".encode() for c in out] + [b"data: [DONE]\n\n"]


class _StreamMeter:
    """Reads the SSE bytes passing through: the `usage` chunk if the upstream sends one, else content chars."""

    def __init__(self) -> None:
        self._buf = b""
        self.usage: dict[str, Any] | None = None
        self.chars = 0

    def feed(self, chunk: bytes) -> None:
        self._buf += chunk
        *lines, self._buf = self._buf.split(b"\n")
        for line in lines:
            line = line.strip()
            if not line.startswith(b"data:") or line.endswith(b"[DONE]"):
                continue
            try:
                obj = json.loads(line[5:])
            except ValueError:
                continue
            if isinstance(obj, dict):
                if obj.get("usage"):
                    self.usage = obj["usage"]
                for ch in obj.get("choices") or []:
                    ch = ch or {}
                    content = (ch.get("delta") or {}).get("content", ch.get("text"))  # chat | legacy completion
                    self.chars += len(content) if isinstance(content, str) else 0


# --------------------------------------------------------------------------------------------------
# Reading requests
# --------------------------------------------------------------------------------------------------
def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:24]} overflows a double")
    return value


def _type_name(types: Any) -> str:
    names = {bool: "boolean", int: "integer", float: "number", str: "string", list: "array", dict: "object"}
    flat = [t for x in (types if isinstance(types, tuple) else (types,))
            for t in (x if isinstance(x, tuple) else (x,))]
    return " or ".join(dict.fromkeys("number" if t is float else names[t] for t in flat))


def check_strings(body: Any) -> None:
    """400 for a lone surrogate in any string or key (no tokenizer or upstream accepts one); iterative."""
    stack: list[tuple[Any, str]] = [(body, "")]
    while stack:
        x, path = stack.pop()
        if isinstance(x, str):
            if SURROGATE.search(x):
                raise RequestError(400, f"{path or 'body'} contains a lone surrogate (not valid Unicode text)",
                                   param=path or None, code="invalid_unicode")
        elif isinstance(x, dict):
            for k, v in x.items():
                if SURROGATE.search(k):
                    raise RequestError(400, f"a key of {path or 'the body'} contains a lone surrogate",
                                       param=path or None, code="invalid_unicode")
                stack.append((v, f"{path}.{k}" if path else k))
        elif isinstance(x, list):
            stack.extend((v, f"{path}[{i}]") for i, v in enumerate(x))


def parse_json(raw: bytes) -> dict[str, Any]:
    """A request body as a JSON object: strict JSON (no NaN / Infinity, no number overflowing a double) whose
    strings and keys are valid Unicode (`check_strings`)."""
    try:
        body = json.loads(raw, parse_constant=_reject_constant, parse_float=_finite)
    except (ValueError, UnicodeDecodeError) as e:
        raise RequestError(400, f"request body is not valid JSON: {e}") from None
    except RecursionError:
        raise RequestError(400, "request body is nested too deeply") from None
    if not isinstance(body, dict):
        raise RequestError(400, f"request body must be a JSON object, got {type(body).__name__}")
    check_strings(body)
    return body


def check_params(body: Mapping[str, Any], params: Mapping[str, tuple] = CHAT_PARAMS) -> None:
    """400 naming the field when an OpenAI parameter has the wrong JSON type or is out of range."""
    for name, (types, *bounds) in params.items():
        v = body.get(name)
        if v is None:
            continue
        if isinstance(v, bool) != (types is bool) or not isinstance(v, types):
            raise RequestError(400, f"'{name}' must be {_type_name(types)}, got {type(v).__name__}", param=name)
        if bounds and not bounds[0] <= v <= bounds[1]:
            raise RequestError(400, f"'{name}' must be between {bounds[0]} and {bounds[1]}", param=name)
    stop = body.get("stop")
    if isinstance(stop, list) and not all(isinstance(x, str) for x in stop):
        raise RequestError(400, "'stop' must be a string or an array of strings", param="stop")
    for v in (body.get("logit_bias") or {}).values():
        if isinstance(v, bool) or not isinstance(v, _NUM) or not -100 <= v <= 100:
            raise RequestError(400, "'logit_bias' values must be numbers between -100 and 100", param="logit_bias")


async def read_raw(request: Request, limit: int) -> bytes:
    """The body's bytes, at most `limit` (413 beyond, even without a content-length); 400 if empty."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise RequestError(413, f"request body of {declared} bytes exceeds the limit of {limit}", code="body_too_large")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(413, f"request body exceeds the limit of {limit} bytes", code="body_too_large")
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw.strip():
        raise RequestError(400, "request body is empty; expected a JSON object")
    return raw


async def read_json(request: Request, limit: int) -> dict[str, Any]:
    """The body as a checked JSON object (`read_raw` + `parse_json`), parsed on the calling thread."""
    return parse_json(await read_raw(request, limit))


def session_key(request: Request | None, body: Mapping[str, Any], s: SessionSettings) -> str | None:
    """The stickiness session key: the session header, else (if enabled) the OpenAI `user` field."""
    key = request.headers.get(s.header) if request is not None else None
    if not key and s.use_user_field:
        user = body.get("user")
        key = user if isinstance(user, str) else None
    return key or None


# --------------------------------------------------------------------------------------------------
# The service: state + one method per endpoint
# --------------------------------------------------------------------------------------------------
class RouterService:
    """The router's state and request handlers (see `create_app` for the arguments)."""

    def __init__(self, bundle: RouterBundle, upstreams: Upstreams, settings: ServeSettings,
                 governance: GovernancePolicy, stickiness: Callable[[str], StickinessGuard] | None,
                 policies: Mapping[str, Any] | None, keys: KeyStore | None = None,
                 monitor: MonitorSettings | None = None) -> None:
        self.bundle, self.upstreams, self.settings = bundle, upstreams, settings
        self.keys = keys  # None: no client authentication
        self.metrics = RouterMetrics()
        self.engine = RoutingEngine(bundle, governance, stickiness, settings, policies, self.metrics)
        self.stickiness = stickiness is not None and settings.session.enabled
        upstreams.check_fleet(self.engine.names)
        self.available = np.array([n in upstreams for n in self.engine.names], dtype=bool)
        m = monitor or MonitorSettings()  # decision log + shadow evaluation (kronaxis_lab/monitoring/live.py)
        self.cascade = getattr(bundle, "cascade", None)  # export/cascade.py; a test fake bundle may have none
        md = getattr(bundle, "metadata", None)  # export/metadata.py
        self.tag_field = None if md is None else md.field
        self.monitor = LiveMonitor(m.decision_log, m.shadow, bundle, governance, self.engine.classify_text,
                                   self.metrics.registry, self.shadow_call, upstreams.names)

    @asynccontextmanager
    async def lifespan(self, app: FastAPI) -> AsyncIterator[None]:
        # ONNX session + first run before the first request, not during it
        await asyncio.to_thread(self.bundle.warmup, self.settings.variant)
        await asyncio.to_thread(detectors_warm_up)  # Unicode tables + phone metadata, off the first request
        await self.engine.batcher.start()
        await self.monitor.start()
        try:
            yield
        finally:
            await self.monitor.stop()
            await self.engine.batcher.stop()
            await self.upstreams.aclose()
            self.engine.close()

    # -- errors ------------------------------------------------------------------------------------
    def error_response(self, e: RequestError) -> JSONResponse:
        self.metrics.errors.labels(status=str(e.status)).inc()
        return JSONResponse(e.body(), status_code=e.status)

    async def on_request_error(self, request: Request, e: RequestError) -> JSONResponse:
        return self.error_response(e)

    async def on_http_error(self, request: Request, e: StarletteHTTPException) -> JSONResponse:
        kind = "not_found" if e.status_code == 404 else "invalid_request_error"
        return self.error_response(RequestError(e.status_code, str(e.detail), type=kind))

    async def on_internal_error(self, request: Request, e: Exception) -> JSONResponse:
        # the traceback's frames, not the exception's message (it may quote request content)
        log.error("internal error on %s: %s\n%s", request.url.path, type(e).__name__,
                  "".join(traceback.format_tb(e.__traceback__)))
        return self.error_response(RequestError(500, "internal router error", type="internal_error"))

    # -- requests ----------------------------------------------------------------------------------
    async def body(self, request: Request) -> dict[str, Any]:
        """The checked JSON body (`parse_json`); a large one is parsed off the event loop."""
        raw = await read_raw(request, self.settings.limits.max_body_bytes)
        return parse_json(raw) if len(raw) < OFF_LOOP_BYTES else await self.engine.off_loop(parse_json, raw)

    def conversation(self, body: Mapping[str, Any], request: Request | None, where: str = "messages") -> Conversation:
        """The conversation of `body`, with its session key and routing token (headers first, then body fields)."""
        s = self.settings
        token = request.headers.get(s.session.token_header) if request is not None else None
        if token is None and isinstance(body.get("route_token"), str):
            token = body["route_token"]
        forwarded = {k: v for k, v in body.items() if k not in ("model", "route_token")}
        conv = Conversation.from_messages(body.get("messages"), s.limits.max_messages, where,
                                          session_key(request, body, s.session), token, body=forwarded)
        if self.tag_field is not None:  # the bundle blends a request tag: header first, then OpenAI `metadata`
            tag = request.headers.get(TAG_HEADER) if request is not None else None
            meta = body.get("metadata")
            if tag is None and isinstance(meta, dict) and isinstance(meta.get(self.tag_field), str):
                tag = meta[self.tag_field]
            conv.tag = tag[:256] if tag else None
        return conv

    # -- POST /v1/route: decision only -------------------------------------------------------------
    async def route(self, request: Request) -> Any:
        body = await self.body(request)
        t0 = time.perf_counter()
        if "requests" in body:
            return await self.route_batch(body, t0)
        spec, forced = self.engine.parse_model(body.get("model"))
        conv = self.conversation(body, request)
        [d] = await self.engine.decide([conv], spec, forced)
        self.metrics.decision_latency.observe(time.perf_counter() - t0)
        self.monitor.decided([conv], [d], "route", [body], time.perf_counter() - t0)
        self.metrics.requests.labels(endpoint="route", model=d.model or "refused", tier=str(d.tier)).inc()
        expose = self.settings.expose_data_classes
        return DecisionResponse(d.to_json(expose), headers=decision_headers(d, expose))

    async def route_batch(self, body: Mapping[str, Any], t0: float) -> DecisionResponse:
        """`{"requests": [...]}`: items grouped by operating point, each group decided as one batch."""
        items, limit = body["requests"], self.settings.limits.max_route_batch
        if not isinstance(items, list) or not items:
            raise RequestError(400, "'requests' must be a non-empty list of {\"messages\": [...]} objects",
                               param="requests")
        if len(items) > limit:
            raise RequestError(400, f"'requests' has {len(items)} items, more than {limit}", param="requests")
        groups: dict[tuple[PolicySpec | None, int | None], list[int]] = {}
        convs = []
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                raise RequestError(400, f"requests[{i}] must be an object", param=f"requests[{i}]")
            key = self.engine.parse_model(item.get("model", body.get("model")))
            convs.append(self.conversation(item, None, f"requests[{i}].messages"))
            groups.setdefault(key, []).append(i)
        results: list[Any] = [None] * len(items)
        decided = await asyncio.gather(*(self.engine.decide([convs[i] for i in idx], spec, forced)
                                         for (spec, forced), idx in groups.items()))
        for idx, ds in zip(groups.values(), decided):
            for i, d in zip(idx, ds):
                results[i] = {**d.to_json(self.settings.expose_data_classes),
                              **({"route_token": d.route_token} if d.route_token else {})}
        self.metrics.decision_latency.observe(time.perf_counter() - t0)
        order = [i for idx in groups.values() for i in idx]
        self.monitor.decided([convs[i] for i in order], [d for ds in decided for d in ds], "route_batch",
                             [items[i] for i in order], time.perf_counter() - t0)
        self.metrics.requests.labels(endpoint="route_batch", model="*", tier="*").inc()
        return DecisionResponse({"results": results})

    # -- POST /v1/chat/completions: route and forward ----------------------------------------------
    async def chat_completions(self, request: Request) -> Any:
        body = await self.body(request)
        spec, forced = self.engine.parse_model(body.get("model"))
        conv = self.conversation(body, request)
        check_params(body)
        stream = bool(body.get("stream"))
        if not self.upstreams:
            raise RequestError(503, "no upstreams are configured for this router: it can only answer POST /v1/route. "
                               "Start it with upstreams=<configs/upstreams/NAME> mapping fleet models to endpoints.",
                               type="service_unavailable", code="no_upstreams")
        t0 = time.perf_counter()
        [d] = await self.engine.decide([conv], spec, forced, available=self.available)
        self.metrics.decision_latency.observe(time.perf_counter() - t0)
        if d.refused:
            self.monitor.failed(conv, d, 403, body)
            what = f"data of class(es) {d.data_classes}" if self.settings.expose_data_classes else "sensitive data"
            raise RequestError(403, f"refused by governance: the conversation carries {what}, which no available "
                               "endpoint may receive", type="governance_refused", code="data_class_not_allowed")
        fwd = {k: v for k, v in body.items() if k not in ROUTER_FIELDS}
        if self.cascade is not None and forced is None and d.model == self.cascade.first and self.cascadable(fwd):
            return await self.cascade_forward(d, conv, fwd, stream)
        return await self.forward(d, conv, fwd, stream)

    # -- a bundle's cascade: call the first model, judge its reply, escalate ---------------------------
    def cascadable(self, body: Mapping[str, Any]) -> bool:
        """A cascade judges one text reply: not tool calls, not n > 1 choices."""
        return not body.get("tools") and not body.get("functions") and body.get("n") in (None, 1)

    async def cascade_forward(self, d: Decision, conv: Conversation, body: dict[str, Any], stream: bool) -> Response:
        """`export/cascade.py`: the first model's (and any also-called model's) reply, not streamed; kept when the
        signal trusts it (`BundleCascade.keep`, the code the bundle replay runs), else the request goes on to
        `second` through `forward` (its fallbacks, its stream). Every call made is accounted."""
        cas, names = self.cascade, self.engine.names
        idx = [names.index(m) for m in cas.calls]
        allowed = np.ones(len(names), bool) if d.allowed is None else d.allowed
        if not all(self.available[j] and allowed[j] for j in idx):  # an also-called model is off limits here
            d.reasons.append("cascade: skipped (a model it calls is not available for this request)")
            self.metrics.cascade.labels(outcome="skipped").inc()
            return await self.forward(d, conv, body, stream)
        plain = {k: v for k, v in body.items() if k not in ("stream", "stream_options")}
        t_up = time.perf_counter()
        metas: list[dict[str, Any]] = [{} for _ in idx]
        answers = await asyncio.gather(*(self.call_upstream(m, plain, False, meta)
                                         for m, meta in zip(cas.calls, metas)), return_exceptions=True)
        if isinstance(answers[0], BaseException):  # the first model failed: the plain path retries and falls back
            self.metrics.upstream_errors.labels(model=cas.first).inc()
            log.warning("cascade: upstream %s failed: %s", cas.first, type(answers[0]).__name__)
            d.reasons.append("cascade: first call failed")
            self.metrics.cascade.labels(outcome="skipped").inc()
            return await self.forward(d, conv, body, stream)
        replies = [reply_text(a) for a in answers]
        text = self.engine.classify_text(conv.user_turns)
        keep = bool((await self.engine.off_loop(cas.keep, [text], [replies[0]], [[r] for r in replies[1:]]))[0])
        second = names.index(cas.second)
        if not keep and not (self.available[second] and allowed[second]):
            keep = True
            d.reasons.append(f"cascade: {cas.second} may not receive this request: kept {cas.first}")
        for m, a in zip(cas.calls[1:], answers[1:]):  # the also-called models: charged, never returned
            if not isinstance(a, BaseException):
                self.account(m, a.get("usage") if isinstance(a, dict) else None, conv, len(reply_text(a)))
        if not keep:
            self.account(cas.first, answers[0].get("usage") if isinstance(answers[0], dict) else None, conv,
                         len(replies[0]))
            d.reasons.append(f"cascade: {cas.signal.name} did not trust {cas.first}'s reply -> {cas.second}")
            d.model, d.tier = cas.second, int(self.engine.tiers[second])
            self.metrics.cascade.labels(outcome="escalated").inc()
            return await self.forward(d, conv, body, stream)
        d.reasons.append(f"cascade: {cas.signal.name} kept {cas.first}'s reply")
        self.metrics.cascade.labels(outcome="kept").inc()
        self.monitor.routed(conv, d, body, not stream, time.perf_counter() - t_up, "chat")
        headers = decision_headers(d, self.settings.expose_data_classes)
        if metas[0].get("endpoint"):
            headers["x-kronaxis-endpoint"] = str(metas[0]["endpoint"])
        self.metrics.requests.labels(endpoint="chat", model=cas.first, tier=str(d.tier)).inc()
        self.metrics.upstream_latency.labels(model=cas.first).observe(time.perf_counter() - t_up)
        if not stream:
            return self.reply(answers[0], cas.first, conv, headers)
        self.account(cas.first, answers[0].get("usage") if isinstance(answers[0], dict) else None, conv,
                     len(replies[0]), replies[0])
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        return StreamingResponse(iter(sse_from_completion(answers[0], include_usage)), media_type="text/event-stream",
                                 headers=headers)

    async def forward(self, d: Decision, conv: Conversation, body: dict[str, Any], stream: bool,
                      path: str = CHAT_PATH) -> Response:
        """The chosen model's endpoint chain; when it all fails, the next allowed model's (`fallback_order`)."""
        order = [d.model] + ([self.engine.names[j] for j in self.engine.fallback_order(d)]
                             if self.settings.fallback_across_models else [])
        rejected = 0  # models whose upstream refused the request itself (400/413/422): the client's error
        for k, model in enumerate(order):
            meta: dict[str, Any] = {}
            t_up = time.perf_counter()
            try:
                answer = await self.call_upstream(model, body, stream, meta, path)
            except Exception as e:  # noqa: BLE001 - the backend scrubs keys from its messages
                self.metrics.upstream_errors.labels(model=model).inc()
                self.metrics.fallbacks.labels(kind="endpoint").inc(meta.get("fallbacks", 0))
                log.warning("upstream %s failed: %s: %s", model, type(e).__name__, e)  # no body text: upstreams.py
                rejected += meta.get("rejected_status") in CLIENT_ERROR_STATUS
                continue
            self.metrics.fallbacks.labels(kind="endpoint").inc(meta.get("fallbacks", 0))
            if k:
                self.metrics.fallbacks.labels(kind="model").inc()
                d.reasons.append(f"fallback: {', '.join(order[:k])} failed -> {model}")
                d.model, d.tier = model, int(self.engine.tiers[self.engine.names.index(model)])
            self.monitor.routed(conv, d, body, path == CHAT_PATH and not stream, time.perf_counter() - t_up,
                                path.strip("/").split("/")[0])
            headers = decision_headers(d, self.settings.expose_data_classes)
            if meta.get("endpoint"):
                headers["x-kronaxis-endpoint"] = str(meta["endpoint"])
            self.metrics.requests.labels(endpoint=path.strip("/").split("/")[0], model=model, tier=str(d.tier)).inc()
            if stream:
                first, agen = answer
                return StreamingResponse(self.relay(first, agen, model, conv), media_type="text/event-stream",
                                         headers=headers)
            self.metrics.upstream_latency.labels(model=model).observe(time.perf_counter() - t_up)
            return self.reply(answer, model, conv, headers)
        self.monitor.failed(conv, d, 400 if rejected == len(order) else 502, body, path.strip("/").split("/")[0])
        if rejected == len(order):
            raise RequestError(400, f"every upstream rejected this request as invalid (models tried: {order}): "
                               "check its parameters", code="upstream_rejected_request")
        # endpoint URLs and upstream error summaries stay in the log; the client learns which models were tried
        raise RequestError(502, f"every upstream failed for this request (models tried: {order})",
                           type="upstream_error", code="upstream_failed")

    async def call_upstream(self, model: str, body: dict[str, Any], stream: bool, meta: dict[str, Any],
                            path: str = CHAT_PATH) -> Any:
        """The upstream's JSON answer, or (first SSE chunk, the rest) when streaming: a failure raises here."""
        backend = self.upstreams.get(model)
        if not stream:
            return await backend.aforward(body, path=path, meta=meta)
        agen = backend.astream(body, path=path, meta=meta)
        return await agen.__anext__(), agen

    def reply(self, data: Any, model: str, conv: Conversation, headers: dict[str, str]) -> JSONResponse:
        text = reply_text(data)
        self.account(model, data.get("usage") if isinstance(data, dict) else None, conv, len(text), text)
        return JSONResponse(data, headers=headers)

    async def relay(self, first: bytes, agen: Any, model: str, conv: Conversation) -> AsyncIterator[bytes]:
        """The upstream's SSE stream, unchanged; its usage (or length) is accounted when it ends."""
        meter = _StreamMeter()
        try:
            meter.feed(first)
            yield first
            async for chunk in agen:
                meter.feed(chunk)
                yield chunk
        finally:
            await agen.aclose()
            self.account(model, meter.usage, conv, meter.chars)

    def account(self, model: str, usage: Mapping[str, Any] | None, conv: Conversation, out_chars: int,
                text: str | None = None) -> None:
        """Cost and savings metrics from the upstream's usage, else estimated from the text lengths; the decision
        log record (and the shadow sample: `text` = the answer, when not streamed)."""
        usage = usage or {}
        n_in, n_out = usage.get("prompt_tokens"), usage.get("completion_tokens")
        if not isinstance(n_in, (int, float)):
            n_in = estimate_tokens(len(conv.full_text))
        if not isinstance(n_out, (int, float)):
            n_out = estimate_tokens(out_chars)
        cost, premium = self.engine.usage_cost(model, float(n_in), float(n_out))
        self.metrics.record_cost(model, cost, premium, CURRENT_KEY_ID.get())
        self.monitor.answered(conv, model, n_in, n_out, cost, premium, text)

    async def shadow_call(self, model: str, body: dict[str, Any]) -> Any:
        """A shadow evaluation's upstream call (monitoring/shadow.py): the model's endpoint chain, not streamed."""
        return await self.call_upstream(model, body, False, {}, CHAT_PATH)

    # -- operations --------------------------------------------------------------------------------
    async def healthz(self) -> dict[str, Any]:
        e = self.engine
        if self.keys is not None and CURRENT_KEY_ID.get() is None:
            return {"status": "ok"}  # open to liveness probes; the details only with a key
        return {"status": "ok", "pid": os.getpid(),  # which router process answered (server.workers > 1)
                "bundle": str(self.bundle.dir), "models": e.names,
                "tiers": [int(t) for t in e.tiers], "premium": e.premium,
                "policy": {"name": e.policy_name, "param": e.policy_param},
                "upstreams": self.upstreams.names, "batching": self.settings.batching.model_dump(),
                "stickiness": self.stickiness}

    async def prometheus(self) -> Response:
        data, ctype = self.metrics.render()
        return Response(data, media_type=ctype)

    async def models(self) -> dict[str, Any]:
        ids = list(self.settings.auto_models) + [n for n in self.engine.names if n in self.upstreams]
        return {"object": "list", "data": [{"id": i, "object": "model", "created": 0, "owned_by": "kronaxis"}
                                           for i in ids]}


def create_app(
    bundle: RouterBundle,
    upstreams: Upstreams | Mapping[str, Any] | None = None,
    settings: ServeSettings | Mapping[str, Any] | None = None,
    *,
    governance: GovernancePolicy | None = None,
    stickiness: Callable[[str], StickinessGuard] | None = None,
    policies: Mapping[str, Any] | None = None,
    host: str | None = None,
    environ: Mapping[str, str] | None = None,
    monitor: MonitorSettings | Mapping[str, Any] | None = None,
) -> FastAPI:
    """FastAPI router app over `bundle` (see the module docstring).

    Args:
        bundle: a loaded bundle (`kronaxis_lab.export.bundle.load_bundle`), or anything with its `RouterBundle` API.
        upstreams: `Upstreams` (or its kwargs); None/empty = decisions only.
        settings: `ServeSettings` (or its dict).
        governance: a `GovernancePolicy`; None = the bundle's router.json governance, else the default detectors
            (`governance.default_detectors`) with endpoints from the fleet's data_classes.
        stickiness: operating-point key → `StickinessGuard` (see `components.stickiness_factory`); None = off.
        policies: policy name → Hydra config, for `kronaxis/<name>:<param>` overrides.
        host: the address the app will listen on (`kronaxis-serve` passes `server.host`); with
            `settings.auth.enabled: null` a loopback host and no configured key mean no authentication, anything
            else (None included: the host is unknown) means every request needs a key (`auth.py`).
        environ: where `settings.auth.keys_env` is read (None = os.environ).
        monitor: `MonitorSettings` (or its dict: `decision_log`, `shadow`); None = no decision log, no shadow.
    """
    settings = ServeSettings.from_config(settings)
    keys = KeyStore.load(settings.auth, environ)
    if not auth_enabled(settings.auth, host, keys):
        keys = None
    elif not len(keys):
        raise ServeConfigError(f"authentication is on (server.host={host}; settings.auth.enabled="
                               f"{settings.auth.enabled}) but no router API key is configured: set "
                               f"{settings.auth.keys_env or 'settings.auth.keys_env'}=<key>[,<key>...] or "
                               "settings.auth.keys_file, or settings.auth.enabled=false to serve without keys")
    if upstreams is None or isinstance(upstreams, Mapping):
        upstreams = Upstreams(**dict(upstreams or {}))
    if governance is None:
        governance = build_governance(None, bundle)
    svc = RouterService(bundle, upstreams, settings, governance, stickiness, policies, keys,
                        MonitorSettings.from_config(monitor))
    app = FastAPI(title="kronaxis router", lifespan=svc.lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service = svc
    app.state.engine, app.state.metrics, app.state.upstreams, app.state.settings = (
        svc.engine, svc.metrics, upstreams, settings)
    app.add_exception_handler(RequestError, svc.on_request_error)
    app.add_exception_handler(StarletteHTTPException, svc.on_http_error)
    app.add_exception_handler(Exception, svc.on_internal_error)
    if keys is not None:
        rl = settings.auth.rate_limit
        log.info("client authentication on: %d router API key(s), ids %s", len(keys), keys.ids)
        app.add_middleware(AuthMiddleware, keys=keys, limiter=RateLimiter(rl.requests_per_minute, rl.burst),
                           metrics=svc.metrics,
                           open_paths=("/healthz",) if settings.auth.protect_metrics else ("/healthz", "/metrics"))
    else:
        log.info("client authentication off (host %s, settings.auth.enabled=%s)", host, settings.auth.enabled)
    # the hot paths as plain Starlette routes: they read and check their own bodies and return Responses, so
    # FastAPI's dependency solving (it parses the cookie header of every request) would only add CPU
    app.add_route("/v1/route", svc.route, methods=["POST"])
    app.add_route("/v1/chat/completions", svc.chat_completions, methods=["POST"])
    app.add_api_route("/healthz", svc.healthz, methods=["GET"])
    app.add_api_route("/metrics", svc.prometheus, methods=["GET"])
    app.add_api_route("/v1/models", svc.models, methods=["GET"])
    OpenAISurface(svc, ROUTER_FIELDS).register(app)  # /v1/models/{id}, /v1/completions, /v1/responses, /v1/embeddings
    return app
