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
  answered), `x-kronaxis-data-classes` (sensitive classes found, if any) and `x-kronaxis-route` (signed routing
  token, when a session key was given: echo it on the next turn).
- `POST /v1/route` — decision only: `{"messages": [...]}` → `{model, tier, scores, reasons, ...}`; a batch
  `{"requests": [{"messages": ...}, ...]}` → `{"results": [...]}`.
- `GET /healthz`, `GET /metrics` (Prometheus), `GET /v1/models`.

Errors are OpenAI-style `{"error": {message, type, param, code}}`: 400 malformed JSON / fields, 404 unknown
model, 413 oversized body, 403 governance refusal, 502 every upstream failed, 503 no upstreams configured.
Request bodies, headers and API keys are never logged.
"""

# no `from __future__ import annotations`: FastAPI must see the real `Request` class in route signatures
import asyncio
import json
import logging
import time
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Callable, Mapping

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from kronaxis_lab.backends.base import estimate_tokens
from kronaxis_lab.serving.components import build_governance
from kronaxis_lab.serving.engine import Conversation, Decision, PolicySpec, RequestError, RoutingEngine
from kronaxis_lab.serving.governance import GovernancePolicy
from kronaxis_lab.serving.metrics import RouterMetrics
from kronaxis_lab.serving.protocols import RouterBundle
from kronaxis_lab.serving.settings import ServeSettings, SessionSettings
from kronaxis_lab.serving.stickiness import StickinessGuard
from kronaxis_lab.serving.upstreams import Upstreams

log = logging.getLogger(__name__)

CHAT_PATH = "/chat/completions"
ROUTER_FIELDS = ("route_token",)  # request fields the router reads and does not forward upstream


def _header_json(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=True, separators=(",", ":"))


def decision_headers(d: Decision) -> dict[str, str]:
    h = {
        "x-kronaxis-model": d.model or "",
        "x-kronaxis-tier": "" if d.tier is None else str(d.tier),
        "x-kronaxis-scores": _header_json(d.scores),
        "x-kronaxis-reasons": _header_json(d.reasons),
        "x-kronaxis-policy": d.policy if d.param is None else f"{d.policy}:{d.param:g}",
    }
    if d.data_classes:
        h["x-kronaxis-data-classes"] = ",".join(d.data_classes)
    if d.route_token:
        h["x-kronaxis-route"] = d.route_token
    return h


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
                    content = ((ch or {}).get("delta") or {}).get("content")
                    self.chars += len(content) if isinstance(content, str) else 0


# --------------------------------------------------------------------------------------------------
# Reading requests
# --------------------------------------------------------------------------------------------------
async def read_json(request: Request, limit: int) -> dict[str, Any]:
    """The body as a JSON object, at most `limit` bytes (413 beyond, even without a content-length)."""
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
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise RequestError(400, f"request body is not valid JSON: {e}") from None
    except RecursionError:
        raise RequestError(400, "request body is nested too deeply") from None
    if not isinstance(body, dict):
        raise RequestError(400, f"request body must be a JSON object, got {type(body).__name__}")
    return body


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
                 policies: Mapping[str, Any] | None) -> None:
        self.bundle, self.upstreams, self.settings = bundle, upstreams, settings
        self.metrics = RouterMetrics()
        self.engine = RoutingEngine(bundle, governance, stickiness, settings, policies, self.metrics)
        self.stickiness = stickiness is not None and settings.session.enabled
        upstreams.check_fleet(self.engine.names)
        self.available = np.array([n in upstreams for n in self.engine.names], dtype=bool)

    @asynccontextmanager
    async def lifespan(self, app: FastAPI) -> AsyncIterator[None]:
        # ONNX session + first run before the first request, not during it
        await asyncio.to_thread(self.bundle.warmup, self.settings.variant)
        await self.engine.batcher.start()
        try:
            yield
        finally:
            await self.engine.batcher.stop()
            await self.upstreams.aclose()

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
        log.error("internal error on %s: %s", request.url.path, type(e).__name__, exc_info=e)
        return self.error_response(RequestError(500, "internal router error", type="internal_error"))

    # -- requests ----------------------------------------------------------------------------------
    async def body(self, request: Request) -> dict[str, Any]:
        return await read_json(request, self.settings.limits.max_body_bytes)

    def conversation(self, body: Mapping[str, Any], request: Request | None, where: str = "messages") -> Conversation:
        """The conversation of `body`, with its session key and routing token (headers first, then body fields)."""
        s = self.settings
        token = request.headers.get(s.session.token_header) if request is not None else None
        if token is None and isinstance(body.get("route_token"), str):
            token = body["route_token"]
        return Conversation.from_messages(body.get("messages"), s.limits.max_messages, where,
                                          session_key(request, body, s.session), token)

    # -- POST /v1/route: decision only -------------------------------------------------------------
    async def route(self, request: Request) -> Any:
        body = await self.body(request)
        t0 = time.perf_counter()
        if "requests" in body:
            return await self.route_batch(body, t0)
        spec, forced = self.engine.parse_model(body.get("model"))
        [d] = await self.engine.decide([self.conversation(body, request)], spec, forced)
        self.metrics.decision_latency.observe(time.perf_counter() - t0)
        self.metrics.requests.labels(endpoint="route", model=d.model or "refused", tier=str(d.tier)).inc()
        return JSONResponse(d.to_json(), headers=decision_headers(d))

    async def route_batch(self, body: Mapping[str, Any], t0: float) -> JSONResponse:
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
                results[i] = {**d.to_json(), **({"route_token": d.route_token} if d.route_token else {})}
        self.metrics.decision_latency.observe(time.perf_counter() - t0)
        self.metrics.requests.labels(endpoint="route_batch", model="*", tier="*").inc()
        return JSONResponse({"results": results})

    # -- POST /v1/chat/completions: route and forward ----------------------------------------------
    async def chat_completions(self, request: Request) -> Any:
        body = await self.body(request)
        spec, forced = self.engine.parse_model(body.get("model"))
        conv = self.conversation(body, request)
        stream = body.get("stream", False)
        if not isinstance(stream, bool):
            raise RequestError(400, "'stream' must be true or false", param="stream")
        if not self.upstreams:
            raise RequestError(503, "no upstreams are configured for this router: it can only answer POST /v1/route. "
                               "Start it with upstreams=<configs/upstreams/NAME> mapping fleet models to endpoints.",
                               type="service_unavailable", code="no_upstreams")
        t0 = time.perf_counter()
        [d] = await self.engine.decide([conv], spec, forced, available=self.available)
        self.metrics.decision_latency.observe(time.perf_counter() - t0)
        if d.refused:
            raise RequestError(403, f"refused by governance: the conversation carries data of class(es) "
                               f"{d.data_classes}, which no available endpoint may receive",
                               type="governance_refused", code="data_class_not_allowed")
        return await self.forward(d, conv, {k: v for k, v in body.items() if k not in ROUTER_FIELDS}, stream)

    async def forward(self, d: Decision, conv: Conversation, body: dict[str, Any], stream: bool) -> Response:
        """The chosen model's endpoint chain; when it all fails, the next allowed model's (`fallback_order`)."""
        order = [d.model] + ([self.engine.names[j] for j in self.engine.fallback_order(d)]
                             if self.settings.fallback_across_models else [])
        for k, model in enumerate(order):
            meta: dict[str, Any] = {}
            t_up = time.perf_counter()
            try:
                answer = await self.call_upstream(model, body, stream, meta)
            except Exception as e:  # noqa: BLE001 - the backend scrubs keys from its messages
                self.metrics.upstream_errors.labels(model=model).inc()
                self.metrics.fallbacks.labels(kind="endpoint").inc(meta.get("fallbacks", 0))
                log.warning("upstream %s failed: %s: %s", model, type(e).__name__, e)
                continue
            self.metrics.fallbacks.labels(kind="endpoint").inc(meta.get("fallbacks", 0))
            if k:
                self.metrics.fallbacks.labels(kind="model").inc()
                d.reasons.append(f"fallback: {', '.join(order[:k])} failed -> {model}")
                d.model, d.tier = model, int(self.engine.tiers[self.engine.names.index(model)])
            headers = decision_headers(d)
            if meta.get("endpoint"):
                headers["x-kronaxis-endpoint"] = str(meta["endpoint"])
            self.metrics.requests.labels(endpoint="chat", model=model, tier=str(d.tier)).inc()
            if stream:
                first, agen = answer
                return StreamingResponse(self.relay(first, agen, model, conv), media_type="text/event-stream",
                                         headers=headers)
            self.metrics.upstream_latency.labels(model=model).observe(time.perf_counter() - t_up)
            return self.reply(answer, model, conv, headers)
        # endpoint URLs and upstream error texts stay in the log; the client learns which models were tried
        raise RequestError(502, f"every upstream failed for this request (models tried: {order})",
                           type="upstream_error", code="upstream_failed")

    async def call_upstream(self, model: str, body: dict[str, Any], stream: bool, meta: dict[str, Any]) -> Any:
        """The upstream's JSON answer, or (first SSE chunk, the rest) when streaming: a failure raises here."""
        backend = self.upstreams.get(model)
        if not stream:
            return await backend.aforward(body, path=CHAT_PATH, meta=meta)
        agen = backend.astream(body, path=CHAT_PATH, meta=meta)
        return await agen.__anext__(), agen

    def reply(self, data: Any, model: str, conv: Conversation, headers: dict[str, str]) -> JSONResponse:
        text = ""
        try:
            text = data["choices"][0]["message"]["content"] or ""
        except (KeyError, IndexError, TypeError):
            pass
        self.account(model, data.get("usage") if isinstance(data, dict) else None, conv, len(text))
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

    def account(self, model: str, usage: Mapping[str, Any] | None, conv: Conversation, out_chars: int) -> None:
        """Cost and savings metrics from the upstream's usage, else estimated from the text lengths."""
        usage = usage or {}
        n_in, n_out = usage.get("prompt_tokens"), usage.get("completion_tokens")
        if not isinstance(n_in, (int, float)):
            n_in = estimate_tokens(len(conv.full_text))
        if not isinstance(n_out, (int, float)):
            n_out = estimate_tokens(out_chars)
        cost, premium = self.engine.usage_cost(model, float(n_in), float(n_out))
        self.metrics.record_cost(model, cost, premium)

    # -- operations --------------------------------------------------------------------------------
    async def healthz(self) -> dict[str, Any]:
        e = self.engine
        return {"status": "ok", "bundle": str(self.bundle.dir), "models": e.names,
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
    """
    settings = ServeSettings.from_config(settings)
    if upstreams is None or isinstance(upstreams, Mapping):
        upstreams = Upstreams(**dict(upstreams or {}))
    if governance is None:
        governance = build_governance(None, bundle)
    svc = RouterService(bundle, upstreams, settings, governance, stickiness, policies)
    app = FastAPI(title="kronaxis router", lifespan=svc.lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service = svc
    app.state.engine, app.state.metrics, app.state.upstreams, app.state.settings = (
        svc.engine, svc.metrics, upstreams, settings)
    app.add_exception_handler(RequestError, svc.on_request_error)
    app.add_exception_handler(StarletteHTTPException, svc.on_http_error)
    app.add_exception_handler(Exception, svc.on_internal_error)
    app.add_api_route("/v1/route", svc.route, methods=["POST"])
    app.add_api_route("/v1/chat/completions", svc.chat_completions, methods=["POST"])
    app.add_api_route("/healthz", svc.healthz, methods=["GET"])
    app.add_api_route("/metrics", svc.prometheus, methods=["GET"])
    app.add_api_route("/v1/models", svc.models, methods=["GET"])
    return app
