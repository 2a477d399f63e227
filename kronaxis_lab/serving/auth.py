"""Client authentication and per-key rate limits for the router: an ASGI middleware in front of every route.

    keys = KeyStore.load(settings.auth)                       # sha256 digests only; plain keys hashed at load
    app.add_middleware(AuthMiddleware, keys=keys, limiter=RateLimiter(rpm, burst), metrics=metrics)
    python -m kronaxis_lab.serving.auth < key.txt             # prints `sha256:<hex>` for a keys_file

- A request without `Authorization: Bearer <key>` (what the openai SDK sends), or whose key's sha256 matches no
  stored digest, gets 401 (`WWW-Authenticate: Bearer`, OpenAI-style error). The digest is compared with
  `hmac.compare_digest` against every stored digest (no early exit). Keys are high-entropy secrets (at least
  `MIN_KEY_CHARS` characters), so one sha256 is the standard at-rest form: no salt or slow hash is needed.
- Each key has a token bucket: `burst` requests at once, refilled at `requests_per_minute / 60` per second;
  an empty bucket answers 429 with `Retry-After` (seconds until the next token, rounded up).
- A key's *id* is the first 8 hex digits of its sha256: safe to log and to use as a metrics label
  (`kronaxis_key_requests_total{key_id,status}`, `kronaxis_key_cost_usd_total{key_id}`). The key itself is never
  logged, stored, echoed or labelled.
- `/healthz` is open (liveness probes carry no key) and answers only `{"status": "ok"}` to a caller without a
  valid key; `/metrics` needs a key unless `auth.protect_metrics` is false.

`auth_enabled(settings, host)`: `auth.enabled` if set, else on when the server binds a non-loopback address or
any key is configured (and without a known host: on).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import math
import os
import re
import sys
import time
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Iterable, Mapping

from kronaxis_lab.serving.metrics import RouterMetrics
from kronaxis_lab.serving.settings import AuthSettings, ServeConfigError

MIN_KEY_CHARS = 20
_DIGEST = re.compile(r"sha256:([0-9a-fA-F]{64})")
LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}

# the key id of the request being handled (None: auth off, or an open path without a key)
CURRENT_KEY_ID: ContextVar[str | None] = ContextVar("kronaxis_key_id", default=None)


def hash_key(key: str) -> str:
    """`sha256:<hex>` of a router API key (the form a keys_file may store instead of the key)."""
    return "sha256:" + hashlib.sha256(key.encode("utf-8")).hexdigest()


def key_id(digest_hex: str) -> str:
    return digest_hex[:8]


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


class KeyStore:
    """The router API keys' sha256 digests (bytes), and their ids."""

    def __init__(self, digests: Iterable[bytes] = ()) -> None:
        self.digests = list(dict.fromkeys(digests))
        self.ids = [key_id(d.hex()) for d in self.digests]
        if len(set(self.ids)) != len(self.ids):
            raise ServeConfigError("two router API keys share a key id (the first 8 hex digits of their sha256): "
                                   "replace one of them")

    def __len__(self) -> int:
        return len(self.digests)

    @staticmethod
    def parse(entries: Iterable[str], source: str) -> list[bytes]:
        """Digests of `entries` (plain keys or `sha256:<hex>`); errors name the source and entry number only."""
        out = []
        for n, entry in enumerate(entries, 1):
            m = _DIGEST.fullmatch(entry)
            if m:
                out.append(bytes.fromhex(m.group(1)))
            elif len(entry) < MIN_KEY_CHARS:
                raise ServeConfigError(f"router API key #{n} in {source} is shorter than {MIN_KEY_CHARS} "
                                       "characters: use a random key, e.g. `python -c 'import secrets; "
                                       "print(secrets.token_urlsafe(32))'`")
            else:
                out.append(hashlib.sha256(entry.encode("utf-8")).digest())
        return out

    @classmethod
    def load(cls, auth: AuthSettings, environ: Mapping[str, str] | None = None) -> "KeyStore":
        """Keys from `auth.keys_env` (comma/whitespace separated) and `auth.keys_file` (one per line, # comments)."""
        env = os.environ if environ is None else environ
        digests: list[bytes] = []
        if auth.keys_env and env.get(auth.keys_env):
            entries = [e for e in re.split(r"[\s,]+", env[auth.keys_env]) if e]
            digests += cls.parse(entries, f"${auth.keys_env}")
        if auth.keys_file:
            path = Path(auth.keys_file).expanduser()
            if not path.is_file():
                raise ServeConfigError(f"settings.auth.keys_file={path}: no such file")
            lines = [ln.split("#", 1)[0].strip() for ln in path.read_text().splitlines()]
            digests += cls.parse([ln for ln in lines if ln], str(path))
        return cls(digests)

    def verify(self, key: str) -> str | None:
        """The key's id if it is one of ours, else None (constant time in which digest matches)."""
        d = hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()
        found = None
        for stored, kid in zip(self.digests, self.ids):
            if hmac.compare_digest(d, stored):
                found = kid
        return found


def auth_enabled(auth: AuthSettings, host: str | None, keys: KeyStore) -> bool:
    """Whether requests need a key: `auth.enabled` if set, else on unless the bind address is loopback and no
    key is configured."""
    if auth.enabled is not None:
        return auth.enabled
    return not is_loopback(host) or len(keys) > 0


class RateLimiter:
    """Token bucket per key id; `take(kid)` → 0 (allowed) or the seconds until the next token."""

    def __init__(self, requests_per_minute: float | None, burst: int) -> None:
        self.rate = None if requests_per_minute is None else float(requests_per_minute) / 60.0
        self.burst = float(burst)
        self._buckets: dict[str, tuple[float, float]] = {}  # key id → (tokens, time); one entry per key

    def take(self, kid: str, now: float | None = None) -> float:
        if self.rate is None:
            return 0.0
        now = time.monotonic() if now is None else now
        tokens, t = self._buckets.get(kid, (self.burst, now))
        tokens = min(self.burst, tokens + (now - t) * self.rate)
        if tokens >= 1.0:
            self._buckets[kid] = (tokens - 1.0, now)
            return 0.0
        self._buckets[kid] = (tokens, now)
        return (1.0 - tokens) / self.rate


def _bearer(headers: list[tuple[bytes, bytes]]) -> str | None:
    for k, v in headers:
        if k == b"authorization":
            scheme, _, token = v.decode("latin-1").strip().partition(" ")
            return token.strip() if scheme.lower() == "bearer" and token.strip() else None
    return None


def _error(message: str, type_: str, code: str) -> bytes:
    return json.dumps({"error": {"message": message, "type": type_, "param": None, "code": code}}).encode()


class AuthMiddleware:
    """ASGI middleware: 401 without a valid key, 429 over the key's rate, per-key counters (module docstring).

    Args:
        app: the ASGI app.
        keys: the `KeyStore`.
        limiter: the `RateLimiter`.
        metrics: `RouterMetrics` (per-key requests by status, refusals).
        open_paths: paths served without a key (a valid key is still recognised there, without rate limiting).
    """

    def __init__(self, app: Any, keys: KeyStore, limiter: RateLimiter, metrics: RouterMetrics,
                 open_paths: Iterable[str] = ("/healthz",)) -> None:
        self.app, self.keys, self.limiter, self.metrics = app, keys, limiter, metrics
        self.open_paths = frozenset(open_paths)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        token = _bearer(scope.get("headers") or [])
        kid = self.keys.verify(token) if token else None
        if scope.get("path") in self.open_paths:
            reset = CURRENT_KEY_ID.set(kid)
            try:
                await self.app(scope, receive, send)
            finally:
                CURRENT_KEY_ID.reset(reset)
            return
        if kid is None:
            reason = "missing_key" if token is None else "invalid_key"
            self.metrics.auth_refusals.labels(reason=reason).inc()
            self.metrics.errors.labels(status="401").inc()
            msg = ("missing router API key: send 'Authorization: Bearer <key>'" if token is None
                   else "invalid router API key")
            await _send(send, 401, _error(msg, "authentication_error", reason),
                        [(b"www-authenticate", b'Bearer realm="kronaxis"')])
            return
        wait = self.limiter.take(kid)
        if wait:
            self.metrics.auth_refusals.labels(reason="rate_limited").inc()
            self.metrics.errors.labels(status="429").inc()
            self.metrics.key_requests.labels(key_id=kid, status="429").inc()
            retry = max(1, math.ceil(wait))
            await _send(send, 429, _error(f"rate limit of this API key exceeded: retry after {retry} s",
                                          "rate_limit_error", "rate_limit_exceeded"),
                        [(b"retry-after", str(retry).encode())])
            return
        status = {"code": 500}

        async def send_status(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status["code"] = int(message["status"])
            await send(message)

        reset = CURRENT_KEY_ID.set(kid)
        try:
            await self.app(scope, receive, send_status)
        finally:
            CURRENT_KEY_ID.reset(reset)
            self.metrics.key_requests.labels(key_id=kid, status=str(status["code"])).inc()


async def _send(send: Any, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": body})


if __name__ == "__main__":  # one key per stdin line → its keys_file line
    for line in sys.stdin.read().split():
        print(hash_key(line))
