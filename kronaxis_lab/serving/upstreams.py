"""Upstreams: which OpenAI-compatible endpoint(s) serve each fleet model (configs/upstreams/*.yaml).

Each fleet model gets one `OpenAIHTTPBackend` whose endpoint list is that model's fallback chain (retries
with backoff and Retry-After, API-key rotation, fallback to the next endpoint, keys scrubbed from logs):

    models:
      smollm2-135m-instruct:
        endpoints:
          - {name: local-vllm, base_url: http://127.0.0.1:8001/v1, model: HuggingFaceTB/SmolLM2-135M-Instruct}
      gpt-4o-mini:
        endpoints:
          - {name: openai, base_url: https://api.openai.com/v1, api_key_env: [OPENAI_API_KEY, OPENAI_API_KEY_2]}
        max_retries: 2             # per-model overrides of `client`
    client: {max_retries: 3, timeout_s: 60, ...}   # OpenAIHTTPBackend settings shared by every model

Governance treats every endpoint of one model's chain as that model: put only equally trusted endpoints in one
chain (a cross-model fallback in the router re-checks governance for the other model).

An upstream's error body can echo the request (content, card numbers, ...): the router's backends log and report
only `error_summary` of it — its length and the JSON error's `type` / `code` identifiers, never its text.
"""

from __future__ import annotations

import inspect
import json
import logging
import re
from typing import Any, Mapping

from kronaxis_lab.serving.settings import ServeConfigError

log = logging.getLogger(__name__)

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]{0,39}", re.ASCII)  # an error type/code name, not free text


def error_summary(raw: bytes) -> str:
    """What may be logged of an upstream's error body: its size and its JSON error's `type` and `code` when they
    are identifiers (e.g. `invalid_request_error`, `context_length_exceeded`) or small integers."""
    fields = []
    try:
        obj = json.loads(raw)
    except (ValueError, RecursionError):
        obj = None
    err = obj.get("error") if isinstance(obj, dict) else None
    err = err if isinstance(err, dict) else obj if isinstance(obj, dict) else {}
    for name in ("type", "code"):
        v = err.get(name)
        if isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 1000:
            fields.append(f"{name}={v}")
        elif isinstance(v, str) and _IDENT.fullmatch(v):
            fields.append(f"{name}={v}")
    return f"[{len(raw)}-byte body{', ' if fields else ''}{', '.join(fields)}; text not logged]"


SERVE_TRANSPORT = "aiohttp"  # the router's upstream HTTP pool (OpenAIHTTPBackend `transport`): less CPU per call


class Upstreams:
    """Fleet model name → backend (an `OpenAIHTTPBackend` unless `backend_target` says otherwise).

    Args:
        models: `{fleet model: {endpoints: [...], <OpenAIHTTPBackend overrides>}}`; empty = no upstreams
            (the router still answers /v1/route; /v1/chat/completions answers 503).
        client: OpenAIHTTPBackend keyword arguments shared by every model (`transport` defaults to
            `SERVE_TRANSPORT` here, for an OpenAIHTTPBackend).
        backend_target: import path of the backend class (tests may swap in another Backend).
    """

    def __init__(
        self,
        models: Mapping[str, Mapping[str, Any]] | None = None,
        client: Mapping[str, Any] | None = None,
        backend_target: str = "kronaxis_lab.backends.openai_http.OpenAIHTTPBackend",
    ) -> None:
        from hydra.utils import get_class

        cls = get_class(backend_target)
        params = inspect.signature(cls).parameters
        defaults = {k: v for k, v in (("error_text", error_summary), ("transport", SERVE_TRANSPORT)) if k in params}
        self.backends: dict[str, Any] = {}
        for name, spec in (models or {}).items():
            spec = dict(spec or {})
            if not spec.get("endpoints"):
                raise ServeConfigError(f"upstreams.models.{name}: 'endpoints' is required (a non-empty list)")
            kwargs = {**defaults, **dict(client or {}), **spec}
            try:
                self.backends[str(name)] = cls(model=str(name), **kwargs)
            except (TypeError, ValueError) as e:
                raise ServeConfigError(f"upstreams.models.{name}: {e}") from e
        if self.backends:
            log.info("upstreams: %s", {n: [ep.name for ep in getattr(b, "endpoints", [])]
                                       for n, b in self.backends.items()})

    @property
    def names(self) -> list[str]:
        return list(self.backends)

    def __bool__(self) -> bool:
        return bool(self.backends)

    def __contains__(self, name: str) -> bool:
        return name in self.backends

    def get(self, name: str) -> Any:
        return self.backends[name]

    def check_fleet(self, fleet_names: list[str]) -> None:
        unknown = sorted(set(self.backends) - set(fleet_names))
        if unknown:
            raise ServeConfigError(f"upstreams configured for models not in the bundle's fleet: {unknown}; "
                                   f"fleet: {fleet_names}")

    async def aclose(self) -> None:
        for b in self.backends.values():
            close = getattr(b, "aclose", None)
            if close is not None:
                await close()
