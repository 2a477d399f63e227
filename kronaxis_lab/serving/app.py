"""The production router: an OpenAI-compatible FastAPI app over an exported bundle.

    app = create_app(load_bundle(dir), Upstreams(models={...}), ServeSettings())
    uvicorn.run(app, host="127.0.0.1", port=8080)          # or: kronaxis-serve bundle=<dir> server.port=8080

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
import math
import time
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Callable, Mapping

import numpy as np

from kronaxis_lab.serving.engine import Conversation, Decision, RequestError, RoutingEngine
from kronaxis_lab.serving.metrics import RouterMetrics
from kronaxis_lab.serving.settings import ServeSettings
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


def create_app(
    bundle: Any,
    upstreams: Upstreams | Mapping[str, Any] | None = None,
    settings: ServeSettings | Mapping[str, Any] | None = None,
    *,
    governance: Any = None,
    stickiness: Callable[[str], Any] | None = None,
    policies: Mapping[str, Any] | None = None,
) -> Any:
    """FastAPI router app over `bundle` (see the module docstring).

    Args:
        bundle: a loaded bundle (`kronaxis_lab.export.bundle.load_bundle`).
        upstreams: `Upstreams` (or its kwargs); None/empty = decisions only.
        settings: `ServeSettings` (or its dict).
        governance: a `GovernancePolicy`; None = configs/governance/default.yaml with endpoints from the bundle/fleet.
        stickiness: operating-point key → `StickinessGuard` (see `components.stickiness_factory`); None = off.
        policies: policy name → Hydra config, for `kronaxis/<name>:<param>` overrides.
    """
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, Response, StreamingResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    from kronaxis_lab.serving.components import build_governance

    settings = ServeSettings.from_config(settings)
    if upstreams is None or isinstance(upstreams, Mapping):
        upstreams = Upstreams(**dict(upstreams or {}))
    metrics = RouterMetrics()
    if governance is None:
        governance = build_governance(None, bundle)
    engine = RoutingEngine(bundle, governance, stickiness, settings, policies, metrics)
    upstreams.check_fleet(engine.names)
    available = np.array([n in upstreams for n in engine.names], dtype=bool)

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        if hasattr(bundle, "warmup"):  # ONNX session + first run before the first request, not during it
            await asyncio.to_thread(bundle.warmup, *([settings.variant] if settings.variant else []))
        await engine.batcher.start()
        try:
            yield
        finally:
            await engine.batcher.stop()
            await upstreams.aclose()

    app = FastAPI(title="kronaxis router", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.engine, app.state.metrics, app.state.upstreams, app.state.settings = engine, metrics, upstreams, settings

    def error_response(e: RequestError) -> Any:
        metrics.errors.labels(status=str(e.status)).inc()
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(RequestError)
    async def _request_error(request: Request, e: RequestError) -> Any:
        return error_response(e)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, e: StarletteHTTPException) -> Any:
        kind = "not_found" if e.status_code == 404 else "invalid_request_error"
        return error_response(RequestError(e.status_code, str(e.detail), type=kind))

    @app.exception_handler(Exception)
    async def _internal(request: Request, e: Exception) -> Any:
        log.error("internal error on %s: %s", request.url.path, type(e).__name__, exc_info=e)
        return error_response(RequestError(500, "internal router error", type="internal_error"))

    async def read_json(request: Request) -> dict[str, Any]:
        limit = settings.limits.max_body_bytes
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise RequestError(413, f"request body of {declared} bytes exceeds the limit of {limit}",
                               code="body_too_large")
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

    def session_key(request: Request | None, body: Mapping[str, Any]) -> str | None:
        s = settings.session
        key = request.headers.get(s.header) if request is not None else None
        if not key and s.use_user_field:
            user = body.get("user")
            key = user if isinstance(user, str) else None
        return key or None

    def conversation(body: Mapping[str, Any], request: Request | None, where: str = "messages") -> Conversation:
        token = request.headers.get(settings.session.token_header) if request is not None else None
        if token is None and isinstance(body.get("route_token"), str):
            token = body["route_token"]
        return Conversation.from_messages(body.get("messages"), settings.limits.max_messages, where,
                                          session_key(request, body), token)

    # -- decision only ------------------------------------------------------------------------------
    @app.post("/v1/route")
    async def route(request: Request) -> Any:
        body = await read_json(request)
        t0 = time.perf_counter()
        if "requests" not in body:
            spec, forced = engine.parse_model(body.get("model"))
            [d] = await engine.decide([conversation(body, request)], spec, forced)
            metrics.decision_latency.observe(time.perf_counter() - t0)
            metrics.requests.labels(endpoint="route", model=d.model or "refused", tier=str(d.tier)).inc()
            return JSONResponse(d.to_json(), headers=decision_headers(d))
        items = body["requests"]
        if not isinstance(items, list) or not items:
            raise RequestError(400, "'requests' must be a non-empty list of {\"messages\": [...]} objects",
                               param="requests")
        if len(items) > settings.limits.max_route_batch:
            raise RequestError(400, f"'requests' has {len(items)} items, more than {settings.limits.max_route_batch}",
                               param="requests")
        groups: dict[tuple, list[int]] = {}
        convs = []
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                raise RequestError(400, f"requests[{i}] must be an object", param=f"requests[{i}]")
            key = engine.parse_model(item.get("model", body.get("model")))
            convs.append(Conversation.from_messages(
                item.get("messages"), settings.limits.max_messages, f"requests[{i}].messages",
                session_key(None, item), item.get("route_token") if isinstance(item.get("route_token"), str) else None))
            groups.setdefault(key, []).append(i)
        results: list[Any] = [None] * len(items)
        decided = await asyncio.gather(*(engine.decide([convs[i] for i in idx], spec, forced)
                                         for (spec, forced), idx in groups.items()))
        for idx, ds in zip(groups.values(), decided):
            for i, d in zip(idx, ds):
                results[i] = {**d.to_json(), **({"route_token": d.route_token} if d.route_token else {})}
        metrics.decision_latency.observe(time.perf_counter() - t0)
        metrics.requests.labels(endpoint="route_batch", model="*", tier="*").inc()
        return JSONResponse({"results": results})

    # -- route and forward --------------------------------------------------------------------------
    def account(model: str, usage: Mapping[str, Any] | None, conv: Conversation, out_chars: int) -> None:
        usage = usage or {}
        n_in = usage.get("prompt_tokens")
        n_out = usage.get("completion_tokens")
        if not isinstance(n_in, (int, float)):
            n_in = math.ceil(len(conv.full_text) / 4)  # estimate: ~4 characters per token
        if not isinstance(n_out, (int, float)):
            n_out = math.ceil(out_chars / 4)
        cost, premium = engine.usage_cost(model, float(n_in), float(n_out))
        metrics.record_cost(model, cost, premium)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        body = await read_json(request)
        spec, forced = engine.parse_model(body.get("model"))
        conv = conversation(body, request)
        stream = body.get("stream", False)
        if not isinstance(stream, bool):
            raise RequestError(400, "'stream' must be true or false", param="stream")
        if not upstreams:
            raise RequestError(503, "no upstreams are configured for this router: it can only answer POST /v1/route. "
                               "Start it with upstreams=<configs/upstreams/NAME> mapping fleet models to endpoints.",
                               type="service_unavailable", code="no_upstreams")
        t0 = time.perf_counter()
        [d] = await engine.decide([conv], spec, forced, available=available)
        metrics.decision_latency.observe(time.perf_counter() - t0)
        if d.refused:
            raise RequestError(403, f"refused by governance: the conversation carries data of class(es) "
                               f"{d.data_classes}, which no available endpoint may receive",
                               type="governance_refused", code="data_class_not_allowed")
        body = {k: v for k, v in body.items() if k not in ROUTER_FIELDS}
        order = [d.model] + ([engine.names[j] for j in engine.fallback_order(d)]
                             if settings.fallback_across_models else [])
        for k, model in enumerate(order):
            backend = upstreams.get(model)
            meta: dict[str, Any] = {}
            t_up = time.perf_counter()
            try:
                if stream:
                    agen = backend.astream(body, path=CHAT_PATH, meta=meta)
                    first = await agen.__anext__()
                else:
                    data = await backend.aforward(body, path=CHAT_PATH, meta=meta)
            except Exception as e:  # noqa: BLE001 - the backend scrubs keys from its messages
                metrics.upstream_errors.labels(model=model).inc()
                metrics.fallbacks.labels(kind="endpoint").inc(meta.get("fallbacks", 0))
                log.warning("upstream %s failed: %s: %s", model, type(e).__name__, e)
                continue
            metrics.fallbacks.labels(kind="endpoint").inc(meta.get("fallbacks", 0))
            if k:
                metrics.fallbacks.labels(kind="model").inc()
                d.reasons.append(f"fallback: {', '.join(order[:k])} failed -> {model}")
                j = engine.names.index(model)
                d.model, d.tier = model, int(engine.tiers[j])
            headers = decision_headers(d)
            if meta.get("endpoint"):
                headers["x-kronaxis-endpoint"] = str(meta["endpoint"])
            metrics.requests.labels(endpoint="chat", model=model, tier=str(d.tier)).inc()
            if not stream:
                metrics.upstream_latency.labels(model=model).observe(time.perf_counter() - t_up)
                text = ""
                try:
                    text = data["choices"][0]["message"]["content"] or ""
                except (KeyError, IndexError, TypeError):
                    pass
                account(model, data.get("usage") if isinstance(data, dict) else None, conv, len(text))
                return JSONResponse(data, headers=headers)

            async def passthrough(first: bytes = first, agen: Any = agen, model: str = model) -> AsyncIterator[bytes]:
                meter = _StreamMeter()
                try:
                    meter.feed(first)
                    yield first
                    async for chunk in agen:
                        meter.feed(chunk)
                        yield chunk
                finally:
                    await agen.aclose()
                    account(model, meter.usage, conv, meter.chars)

            return StreamingResponse(passthrough(), media_type="text/event-stream", headers=headers)
        # endpoint URLs and upstream error texts stay in the log; the client learns which models were tried
        raise RequestError(502, f"every upstream failed for this request (models tried: {order})",
                           type="upstream_error", code="upstream_failed")

    # -- operations ---------------------------------------------------------------------------------
    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "bundle": str(getattr(bundle, "dir", "")), "models": engine.names,
                "tiers": [int(t) for t in engine.tiers], "premium": engine.premium,
                "policy": {"name": engine.policy_name, "param": engine.policy_param},
                "upstreams": upstreams.names, "batching": settings.batching.model_dump(),
                "stickiness": stickiness is not None and settings.session.enabled}

    @app.get("/metrics")
    async def prometheus() -> Any:
        data, ctype = metrics.render()
        return Response(data, media_type=ctype)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        ids = list(settings.auto_models) + [n for n in engine.names if n in upstreams]
        return {"object": "list", "data": [{"id": i, "object": "model", "created": 0, "owned_by": "kronaxis"}
                                           for i in ids]}

    return app
