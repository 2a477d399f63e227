"""OpenAI-compatible HTTP backend: the orchestrator's client for vLLM `serve`, llama.cpp server, OpenAI, clouds.

Which endpoint a request goes to first is the `strategy`; the others follow as its fallback chain:

- `fallback` (default): always the first listed; the rest only when it fails (a primary + backups);
- `round_robin`: request k starts at endpoint k mod n (equal servers, equal load);
- `least_loaded`: a request waits until the pool has a free slot (at most `max_concurrency`, at most the sum
  of the endpoints' caps in flight), then takes the endpoint with the fewest outstanding requests relative
  to its `max_concurrency` (join-the-shortest-queue at dispatch: a faster server frees slots sooner and so
  gets more), ties in round-robin order.

An endpoint's `max_concurrency` caps its own in-flight requests (e.g. a vLLM server's `--max-num-seqs`);
the backend's `max_concurrency` caps them over all endpoints. Spreading one label run over N servers:
`strategy: least_loaded`, each endpoint's `max_concurrency` its batch capacity, the backend's (and the label
runner's `runner.max_concurrency`) their sum (configs/backend/vllm_pool.yaml).

On each endpoint a request makes up to `1 + max_retries` attempts:

- retried: HTTP 429, 408, 409, 5xx, timeouts, connection errors, unparseable 200 bodies;
- wait before retry k (k = 1, 2, ...): the server's `Retry-After` / `retry-after-ms` if given
  (capped at `max_retry_after_s`), else full jitter  `U(0, min(backoff_max_s, backoff_base_s · 2^(k-1)))`;
- 401/403: that API key is dropped for the life of the backend and the attempt is repeated at once with
  the next key (keys rotate round-robin across requests anyway); when every key is rejected the endpoint fails;
- any other 4xx: the endpoint fails without retry;
- a failed endpoint (retries exhausted, keys rejected, 4xx) hands the request to the next endpoint (fallback).

A request that fails on every endpoint comes back as a `GenResult` with `error` set; one failure never
loses the rest of the batch. API keys come from environment variables named in the config
(`api_key_env`), never from the config itself, and are scrubbed from every log line and error string.

Usage tokens come from the response's `usage`; only if the server gives none they are counted with
`tokenizer` (a hub name / path / `pkg://` URI), or estimated as ⌈chars / 4⌉ when no tokenizer is
configured (`meta["usage_source"]` says which).

Example (configs/backend/openai_http.yaml)::

    backend = hydra.utils.instantiate(OmegaConf.load("configs/backend/openai_http.yaml"))
    results = backend.generate([GenRequest(messages=[{"role": "user", "content": "2+2?"}])])
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import os
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, AsyncIterator, Mapping, Sequence

from kronaxis_lab.backends.base import Backend, GenRequest, GenResult, estimate_tokens
from kronaxis_lab.local_models import resolve_model

log = logging.getLogger(__name__)

RETRY_STATUS = {408, 409, 429}
AUTH_STATUS = {401, 403}
STRATEGIES = ("fallback", "round_robin", "least_loaded")
TRANSPORTS = ("httpx", "aiohttp")


def timed_out(e: Exception) -> bool:
    """Whether an httpx.TimeoutException really is a timeout: httpx-aiohttp maps every aiohttp
    ClientConnectionError (a refused connection, a server that hung up) to httpx.ConnectTimeout."""
    cause = e.__cause__
    return cause is None or not type(cause).__module__.startswith("aiohttp") or isinstance(cause, TimeoutError)


class BackendConfigError(ValueError):
    pass


class _EndpointFailed(Exception):
    """This endpoint cannot serve the request (after retries); the caller moves to the next one."""


class TokenBucket:
    """Requests/s limiter: capacity `burst`, refilled at `rate` tokens/s.

    `acquire` takes a token, going into debt if none is left, and sleeps for the debt: `wait = -tokens / rate`.
    Reading and updating happen without an `await` in between, so no lock is needed under asyncio.
    """

    def __init__(self, rate: float, burst: int = 1):
        if rate <= 0 or burst < 1:
            raise BackendConfigError(f"rate limit needs rate > 0 and burst >= 1, got rate={rate} burst={burst}")
        self.rate, self.burst = float(rate), float(burst)
        self.tokens, self.t = float(burst), time.monotonic()

    async def acquire(self) -> float:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.t) * self.rate)
        self.t = now
        self.tokens -= 1.0
        wait = max(0.0, -self.tokens / self.rate)
        if wait:
            await asyncio.sleep(wait)
        return wait


class _KeyRing:
    """Round-robin over the API keys named by env vars; keys rejected with 401/403 are dropped."""

    def __init__(self, env_names: Sequence[str], where: str):
        self.names = list(env_names)
        missing = [n for n in self.names if not os.environ.get(n)]
        if missing:
            raise BackendConfigError(f"{where}: API key environment variable(s) not set: {missing}")
        self._keys = [os.environ[n] for n in self.names]
        self._alive = list(range(len(self._keys)))
        self._next = 0

    def __bool__(self) -> bool:
        return bool(self._keys)

    @property
    def secrets(self) -> list[str]:
        return list(self._keys)

    def next(self) -> int | None:
        """Index of the key to use for the next attempt; None when every key has been rejected."""
        if not self._alive:
            return None
        idx = self._alive[self._next % len(self._alive)]
        self._next += 1
        return idx

    def key(self, idx: int) -> str:
        return self._keys[idx]

    def reject(self, idx: int) -> None:
        if idx in self._alive:
            self._alive.remove(idx)


@dataclass
class Endpoint:
    """One OpenAI-compatible server. `base_url` includes the `/v1` prefix, as in the openai SDK."""

    base_url: str
    model: str
    name: str = ""
    api_key_env: list[str] = field(default_factory=list)
    rate_limit_rps: float | None = None
    burst: int = 1
    timeout_s: float | None = None
    headers: dict[str, str] = field(default_factory=dict)
    max_concurrency: int | None = None  # this endpoint's in-flight requests at most (None: only the backend's cap)

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], i: int, default_model: str) -> "Endpoint":
        cfg = dict(cfg)
        unknown = set(cfg) - set(cls.__dataclass_fields__)
        if unknown:
            raise BackendConfigError(f"endpoints[{i}]: unknown field(s) {sorted(unknown)}")
        if not cfg.get("base_url"):
            raise BackendConfigError(f"endpoints[{i}]: 'base_url' is required")
        keys = cfg.get("api_key_env") or []
        cfg["api_key_env"] = [keys] if isinstance(keys, str) else list(keys)
        cfg.setdefault("model", default_model)
        cfg["headers"] = dict(cfg.get("headers") or {})
        ep = cls(**cfg)
        if ep.max_concurrency is not None and int(ep.max_concurrency) < 1:
            raise BackendConfigError(f"endpoints[{i}]: max_concurrency must be >= 1 or null, got {ep.max_concurrency}")
        ep.base_url = ep.base_url.rstrip("/")
        ep.name = ep.name or ep.base_url
        return ep


def _parse_retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait from `retry-after-ms` or `Retry-After` (seconds or an HTTP date)."""
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


class OpenAIHTTPBackend(Backend):
    """Batched async client for OpenAI-compatible endpoints with retries, rate limits, key rotation, fallback
    and load balancing.

    Args:
        model: fleet name the results are recorded under.
        endpoints: the servers, each `{base_url, model, name, api_key_env: [ENV, ...], rate_limit_rps, burst,
            timeout_s, headers, max_concurrency}`; `model` defaults to the fleet name.
        strategy: "fallback" | "round_robin" | "least_loaded": which endpoint a request tries first (module doc).
        mode: "auto" (messages → /chat/completions, prompt → /completions), "chat" (a prompt is sent as
            one user message) or "completion" (chat requests are an error: no template over HTTP).
        max_concurrency: in-flight requests at once over all endpoints (each endpoint may cap its own too).
        max_retries: retries per endpoint after the first attempt.
        default_params: extra body fields sent with every request (e.g. `{top_p: 1.0}`).
        error_text: how an upstream's non-200 body appears in logs and errors (bytes → str); None = its first
            300 characters (the router passes one that drops the text: an upstream may echo the request).
        transport: "httpx" (httpx's own connection pool) or "aiohttp" (the same httpx client over aiohttp's
            connection pool, `httpx-aiohttp`: the pool's per-request bookkeeping costs about a third less CPU,
            which is what a gateway spends most of its time on; timeouts and connection errors arrive as the same
            httpx exceptions). The router's upstreams use aiohttp (`serving.upstreams.SERVE_TRANSPORT`).
    """

    def __init__(
        self,
        model: str,
        endpoints: Sequence[Mapping[str, Any]],
        mode: str = "auto",
        max_concurrency: int = 8,
        timeout_s: float = 60.0,
        max_retries: int = 4,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 30.0,
        max_retry_after_s: float = 60.0,
        tokenizer: str | None = None,
        tokenizer_fallback: str | None = None,
        default_params: Mapping[str, Any] | None = None,
        seed: int | None = None,
        error_text: Any = None,
        strategy: str = "fallback",
        transport: str = "httpx",
    ):
        import httpx  # noqa: F401  (fail early with a clear ImportError if the `live` extra is missing)

        if transport not in TRANSPORTS:
            raise BackendConfigError(f"transport must be one of {'|'.join(TRANSPORTS)}, got {transport!r}")
        if transport == "aiohttp":
            try:
                import httpx_aiohttp  # noqa: F401  (heavy optional dependency: the `serve` extra)
            except ImportError as e:
                raise BackendConfigError(f"transport=aiohttp needs the httpx-aiohttp package (pip install "
                                         f"'kronaxis-lab[serve]'): {e}") from None
        self.transport = transport

        if mode not in ("auto", "chat", "completion"):
            raise BackendConfigError(f"mode must be auto|chat|completion, got {mode!r}")
        if not endpoints:
            raise BackendConfigError(f"{model}: 'endpoints' is empty")
        if max_concurrency < 1 or max_retries < 0:
            raise BackendConfigError("max_concurrency must be >= 1 and max_retries >= 0")
        if strategy not in STRATEGIES:
            raise BackendConfigError(f"strategy must be one of {'|'.join(STRATEGIES)}, got {strategy!r}")
        self.strategy = strategy
        self.model = model
        self.mode = mode
        self.endpoints = [Endpoint.from_config(c, i, model) for i, c in enumerate(endpoints)]
        self._keys = [_KeyRing(ep.api_key_env, f"endpoints[{i}] ({ep.name})") for i, ep in enumerate(self.endpoints)]
        self._buckets = [TokenBucket(ep.rate_limit_rps, ep.burst) if ep.rate_limit_rps else None
                         for ep in self.endpoints]
        self._secrets = [s for ring in self._keys for s in ring.secrets]
        self.max_concurrency = int(max_concurrency)
        self.timeout_s = float(timeout_s)
        self.max_retries = int(max_retries)
        self.backoff_base_s, self.backoff_max_s = float(backoff_base_s), float(backoff_max_s)
        self.max_retry_after_s = float(max_retry_after_s)
        self.tokenizer_name, self.tokenizer_fallback = tokenizer, tokenizer_fallback
        self.default_params = dict(default_params or {})
        self._rng = random.Random(seed)
        self.error_text = error_text or (lambda raw: raw.decode("utf-8", "replace")[:300])
        self._tokenizer: Any = None
        self._counters: Counter[str] = Counter()
        self._by_endpoint: dict[str, Counter[str]] = {ep.name: Counter() for ep in self.endpoints}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: Any = None
        self._sem: asyncio.Semaphore | None = None
        self._ep_sems: list[asyncio.Semaphore | None] = []
        self._admission: asyncio.Semaphore | None = None
        self._load = [0] * len(self.endpoints)  # outstanding requests per endpoint (least_loaded), incl. waiting
        self._rr = 0  # round-robin position

    # -- public ----------------------------------------------------------------------------------------
    @property
    def counters(self) -> dict[str, Any]:
        """Running totals: requests, ok, errors, attempts, retries, fallbacks, key_rotations, timeouts,
        connection_errors, http_429, http_5xx, bad_responses, rate_limit_wait_s, and `by_endpoint`
        {name: {ok, failed, attempts, ...}}. Safe to expose: no key material."""
        out: dict[str, Any] = {k: 0 for k in (
            "requests", "ok", "errors", "attempts", "retries", "fallbacks", "key_rotations",
            "timeouts", "connection_errors", "http_429", "http_5xx", "bad_responses")}
        out.update(self._counters)
        out["rate_limit_wait_s"] = round(float(out.get("rate_limit_wait_s", 0.0)), 4)
        out["by_endpoint"] = {k: dict(v) for k, v in self._by_endpoint.items()}
        return out

    async def agenerate(self, requests: Sequence[GenRequest]) -> list[GenResult]:
        return list(await asyncio.gather(*(self._one(r) for r in requests)))

    def generate(self, requests: Sequence[GenRequest]) -> list[GenResult]:
        async def run() -> list[GenResult]:
            try:
                return await self.agenerate(requests)
            finally:
                await self.aclose()

        return asyncio.run(run())

    async def aforward(self, body: Mapping[str, Any], path: str | None = None,
                       meta: dict[str, Any] | None = None) -> dict[str, Any]:
        """Send a raw OpenAI request body (model replaced per endpoint) and return the upstream JSON.

        Retries and fallback as for `agenerate`; raises `RuntimeError` (keys scrubbed) when every endpoint fails.
        A body that asks to stream is sent with `stream: false`; one without the field (e.g. /embeddings, where
        OpenAI rejects unknown fields) is sent without it.
        """
        body = {**body, "stream": False} if "stream" in body else dict(body)
        path = path or ("/chat/completions" if "messages" in body else "/completions")
        meta = meta if meta is not None else {}
        resp = await self._through_chain(lambda ep: {**body, "model": ep.model}, path, meta, stream=False)
        return resp.json()

    async def astream(self, request: GenRequest | Mapping[str, Any], path: str | None = None,
                      meta: dict[str, Any] | None = None) -> AsyncIterator[bytes]:
        """Stream pass-through: yields the upstream's SSE bytes (`data: {...}\\n\\n` ... `data: [DONE]`).

        Retries and fallback apply until an endpoint answers 200; after the first byte has been yielded an
        upstream failure propagates (the client already holds part of the answer). `meta` (if given) is
        filled with the endpoint used, attempts, retries, fallbacks.
        """
        if isinstance(request, GenRequest):
            path_, make = self._payload_for(request)
            body = {**make(self.endpoints[0]), "stream": True}
            path = path or path_
        else:
            body = {**request, "stream": True}
            path = path or ("/chat/completions" if "messages" in body else "/completions")
        meta = meta if meta is not None else {}
        _, sem = self._state()
        resp = await self._through_chain(lambda ep: {**body, "model": ep.model}, path, meta, stream=True)
        try:
            async for chunk in resp.aiter_bytes():
                yield chunk
        finally:
            await resp.aclose()
            sem.release()  # held since the upstream answered 200 (see `_attempts`)
            self._release_endpoint(meta["endpoint_index"])

    async def aclose(self) -> None:
        if self._client is not None:
            client, self._client, self._loop, self._sem = self._client, None, None, None
            await client.aclose()

    def close(self) -> None:
        if self._client is None:
            return
        try:
            asyncio.get_running_loop()
        except RuntimeError:  # no loop running: close on a fresh one (best effort; the old loop may be gone)
            try:
                asyncio.run(self.aclose())
            except Exception:  # noqa: BLE001 - closing sockets of a finished loop may fail; nothing to release then
                self._client = None
        else:
            asyncio.ensure_future(self.aclose())

    # -- internals -----------------------------------------------------------------------------------
    def _redact(self, text: str) -> str:
        for s in self._secrets:
            if s:
                text = text.replace(s, "***")
        return text

    def _state(self) -> tuple[Any, asyncio.Semaphore]:
        """HTTP client and semaphore bound to the running event loop (asyncio objects cannot cross loops)."""
        import httpx

        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._client is None:
            self._loop = loop
            limits = httpx.Limits(max_connections=self.max_concurrency * 2,
                                  max_keepalive_connections=self.max_concurrency)
            if self.transport == "aiohttp":
                from httpx_aiohttp import AiohttpTransport  # heavy optional dependency (checked in __init__)

                self._client = httpx.AsyncClient(timeout=self.timeout_s, transport=AiohttpTransport(limits=limits))
            else:
                self._client = httpx.AsyncClient(timeout=self.timeout_s, limits=limits)
            self._sem = asyncio.Semaphore(self.max_concurrency)
            self._ep_sems = [asyncio.Semaphore(int(ep.max_concurrency)) if ep.max_concurrency else None
                             for ep in self.endpoints]
            self._load = [0] * len(self.endpoints)  # requests of a finished loop are gone
            # least_loaded admits at most as many requests as the pool has slots: each admitted one then finds an
            # endpoint below its cap (the loads sum to the admitted count), the least loaded of them
            room = min(self.max_concurrency, sum(self._caps()))
            self._admission = asyncio.Semaphore(room) if self.strategy == "least_loaded" else None
        assert self._sem is not None
        return self._client, self._sem

    def _order(self) -> list[int]:
        """Endpoint indices in the order this request tries them (see `strategy`)."""
        n = len(self.endpoints)
        if self.strategy == "fallback" or n == 1:
            return list(range(n))
        start, self._rr = self._rr % n, self._rr + 1
        rotation = [(start + k) % n for k in range(n)]
        if self.strategy == "round_robin":
            return rotation
        caps = self._caps()
        rank = {i: k for k, i in enumerate(rotation)}
        return sorted(range(n), key=lambda i: (self._load[i] / caps[i], rank[i]))

    def _caps(self) -> list[int]:
        """Each endpoint's in-flight cap (its own `max_concurrency`, else the backend's)."""
        return [int(ep.max_concurrency or self.max_concurrency) for ep in self.endpoints]

    def _release_endpoint(self, i: int) -> None:
        """End of a stream served by endpoint i: what `_through_chain` and `_attempts` left held for it (its load,
        its endpoint slot, the least_loaded admission)."""
        self._load[i] -= 1
        if self._ep_sems[i] is not None:
            self._ep_sems[i].release()
        if self._admission is not None:
            self._admission.release()

    def _payload_for(self, req: GenRequest) -> tuple[str, Any]:
        params: dict[str, Any] = {"max_tokens": req.max_tokens, "temperature": req.temperature}
        if req.stop:
            params["stop"] = list(req.stop)
        params.update(self.default_params)
        params.update(req.extra or {})
        if req.messages is not None:
            if self.mode == "completion":
                raise BackendConfigError(f"{self.model}: mode=completion cannot send chat messages")
            return "/chat/completions", lambda ep: {"model": ep.model, "messages": req.messages, **params}
        if self.mode == "chat":
            msgs = [{"role": "user", "content": req.prompt}]
            return "/chat/completions", lambda ep: {"model": ep.model, "messages": msgs, **params}
        return "/completions", lambda ep: {"model": ep.model, "prompt": req.prompt, **params}

    def _backoff(self, retry: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.max_retry_after_s)
        return self._rng.uniform(0.0, min(self.backoff_max_s, self.backoff_base_s * 2 ** (retry - 1)))

    def _count(self, meta: dict[str, Any], key: str, ep: Endpoint | None = None, n: int = 1) -> None:
        self._counters[key] += n
        if key in meta:
            meta[key] += n
        if ep is not None:
            self._by_endpoint[ep.name][key] += n

    async def _through_chain(self, make_body: Any, path: str, meta: dict[str, Any], stream: bool) -> Any:
        meta.update({"endpoint": None, "attempts": 0, "retries": 0, "fallbacks": 0, "key_rotations": 0})
        self._counters["requests"] += 1
        errors = []
        self._state()  # bind the loop's semaphores before the first endpoint is picked
        admission = self._admission
        if admission is not None:  # least_loaded: pick when the pool has room, so a fast server takes more
            await admission.acquire()
        try:
            for pos, i in enumerate(self._order()):
                ep = self.endpoints[i]
                if pos:
                    self._count(meta, "fallbacks")
                    log.warning("%s: falling back to endpoint %s after: %s", self.model, ep.name, errors[-1])
                self._load[i] += 1  # counted before any await: concurrent picks see it (join-the-shortest-queue)
                try:
                    resp = await self._attempts(i, make_body(ep), path, meta, stream)
                except _EndpointFailed as e:
                    errors.append(f"[{ep.name}] {e}")
                    self._by_endpoint[ep.name]["failed"] += 1
                    self._load[i] -= 1
                    continue
                except BaseException:
                    self._load[i] -= 1
                    raise
                meta["endpoint"], meta["endpoint_index"] = ep.name, i
                self._count(meta, "ok", ep)
                if stream:
                    admission = None  # held, with the endpoint's load and slot, until the body ends (astream)
                else:
                    self._load[i] -= 1
                return resp
            self._counters["errors"] += 1
            raise RuntimeError(self._redact(f"all {len(self.endpoints)} endpoint(s) failed: " + "; ".join(errors)))
        finally:
            if admission is not None:
                admission.release()

    async def _attempts(self, i: int, body: dict[str, Any], path: str, meta: dict[str, Any], stream: bool) -> Any:
        """Up to 1 + max_retries attempts on endpoint i. Returns the 200 response; for `stream` it is still
        open and the semaphore and the endpoint's slot are still held (the caller releases them: `astream`)."""
        import httpx

        ep, keys, bucket = self.endpoints[i], self._keys[i], self._buckets[i]
        client, sem = self._state()
        url = ep.base_url + path
        timeout = ep.timeout_s or self.timeout_s
        retry = 0
        while True:
            if bucket is not None:
                waited = await bucket.acquire()  # awaited first: `x += await f()` reads x before the await
                self._counters["rate_limit_wait_s"] += waited  # type: ignore[assignment]
            retry_after: float | None = None
            ep_sem = self._ep_sems[i]
            if ep_sem is not None:  # this endpoint's own cap first: a request waiting for it holds no global slot
                await ep_sem.acquire()
            await sem.acquire()
            held = True
            try:
                headers = {"Content-Type": "application/json", **ep.headers}
                key_idx = None
                if keys:  # picked once a slot is free, so a key rejected meanwhile is not handed out again
                    key_idx = keys.next()
                    if key_idx is None:
                        raise _EndpointFailed(f"all {len(keys.names)} API key(s) (env {keys.names}) were rejected")
                    headers["Authorization"] = f"Bearer {keys.key(key_idx)}"
                self._count(meta, "attempts", ep)
                req = client.build_request("POST", url, json=body, headers=headers, timeout=timeout)
                resp = await client.send(req, stream=stream)
                if resp.status_code == 200:
                    if not stream:
                        try:
                            await resp.aread()
                            resp.json()
                        except (json.JSONDecodeError, UnicodeDecodeError, httpx.HTTPError) as e:
                            self._count(meta, "bad_responses", ep)
                            raise _Retryable(f"bad 200 body: {type(e).__name__}") from None
                        return resp
                    held = False  # streaming: the caller releases after the body is consumed
                    return resp
                text = self.error_text(await resp.aread())
                await resp.aclose()
                status = resp.status_code
                if status in AUTH_STATUS and key_idx is not None:
                    keys.reject(key_idx)
                    self._count(meta, "key_rotations", ep)
                    log.warning("%s: %s rejected the API key from env %s (HTTP %d); rotating",
                                self.model, ep.name, keys.names[key_idx], status)
                    continue
                if status == 429 or status >= 500 or status in RETRY_STATUS:
                    self._count(meta, "http_429" if status == 429 else "http_5xx" if status >= 500 else "http_4xx", ep)
                    if status == 429 and key_idx is not None and len(keys.names) > 1:
                        self._count(meta, "key_rotations", ep)  # the next attempt takes the next key
                    retry_after = _parse_retry_after(resp.headers)
                    raise _Retryable(f"HTTP {status}: {text}")
                meta["rejected_status"] = status  # the request itself was refused (a 4xx): the router answers 4xx
                raise _EndpointFailed(self._redact(f"HTTP {status}: {text}"))
            except _Retryable as e:
                last = str(e)
            except httpx.TimeoutException as e:
                if timed_out(e):
                    self._count(meta, "timeouts", ep)
                    last = f"timeout after {timeout}s ({type(e).__name__})"
                else:
                    self._count(meta, "connection_errors", ep)
                    last = f"connection error ({type(e.__cause__).__name__}: {e})"
            except httpx.TransportError as e:
                self._count(meta, "connection_errors", ep)
                last = f"connection error ({type(e).__name__}: {e})"
            finally:
                if held:
                    sem.release()
                    if ep_sem is not None:
                        ep_sem.release()
            last = self._redact(last)
            if retry >= self.max_retries:
                raise _EndpointFailed(f"gave up after {retry + 1} attempt(s); last: {last}")
            retry += 1
            self._count(meta, "retries", ep)
            delay = self._backoff(retry, retry_after)
            log.info("%s: %s attempt failed (%s); retry %d/%d in %.2fs", self.model, ep.name, last, retry,
                     self.max_retries, delay)
            await asyncio.sleep(delay)

    async def _one(self, req: GenRequest) -> GenResult:
        t0 = time.perf_counter()
        meta: dict[str, Any] = {}
        try:
            path, make = self._payload_for(req)
            resp = await self._through_chain(make, path, meta, stream=False)
            data = resp.json()
            choice = (data.get("choices") or [{}])[0]
            if path == "/chat/completions":
                text = ((choice.get("message") or {}).get("content")) or ""
            else:
                text = choice.get("text") or ""
            meta["finish_reason"] = choice.get("finish_reason")
            usage = data.get("usage") or {}
            n_in, n_out = usage.get("prompt_tokens"), usage.get("completion_tokens")
            if n_in is None or n_out is None:
                n_in, n_out, meta["usage_source"] = self._count_tokens(req, text)
            else:
                meta["usage_source"] = "server"
            return GenResult(text=text, input_tokens=int(n_in), output_tokens=int(n_out),
                             latency_s=time.perf_counter() - t0, meta=meta)
        except Exception as e:  # noqa: BLE001 - one failed request must not lose the batch
            return GenResult(error=self._redact(f"{type(e).__name__}: {e}"), latency_s=time.perf_counter() - t0,
                             meta=meta)

    def _count_tokens(self, req: GenRequest, text: str) -> tuple[int, int, str]:
        prompt = req.prompt if req.prompt is not None else "\n".join(m.get("content") or "" for m in req.messages or [])
        if self.tokenizer_name:
            if self._tokenizer is None:
                from transformers import AutoTokenizer
                path = resolve_model(self.tokenizer_name, self.tokenizer_fallback)
                self._tokenizer = AutoTokenizer.from_pretrained(path)
            tok = self._tokenizer
            if req.messages is not None and getattr(tok, "chat_template", None):
                prompt = tok.apply_chat_template(req.messages, tokenize=False, add_generation_prompt=True)
            n_in = len(tok(prompt, add_special_tokens=req.messages is None)["input_ids"])
            n_out = len(tok(text, add_special_tokens=False)["input_ids"])
            return n_in, n_out, "tokenizer"
        return estimate_tokens(len(prompt)), estimate_tokens(len(text)), "estimate_chars_div_4"


class _Retryable(Exception):
    pass
