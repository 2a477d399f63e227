"""A faulty OpenAI-compatible upstream for orchestrator tests: an echo model behind fault injection.

A configurable share of requests fails with 429 (with `Retry-After`), 500, or a hang past the client
timeout. Faults are deterministic: the k-th arrival of a given request body fails iff
`Random(f"{seed}:{sha256(body)}:{k}").random() < fail_rate` (kind drawn from the same generator), so a
run's fault pattern does not depend on the order in which concurrent requests arrive. `--fail-first N`
fails the first N arrivals of every body with the first kind (for exact Retry-After timing).
`--valid-keys-env A,B` accepts only the API keys held in those env vars (others get 401).
`GET /stats` returns counts of requests, faults per kind, successes, auth rejections.

    python -m tests.servers.faulty_server --port 8011 --fail-rate 0.3 --kinds 429,500,hang --seed 0
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import random
from collections import Counter
from typing import Any, Sequence

from kronaxis_lab.backends.base import Backend, GenRequest, GenResult
from kronaxis_lab.backends.openai_server import create_app


class EchoBackend(Backend):
    """Answers "echo: <last message or prompt>"; tokens = whitespace-separated words."""

    def __init__(self, model: str = "echo"):
        self.model = model

    async def agenerate(self, requests: Sequence[GenRequest]) -> list[GenResult]:
        out = []
        for r in requests:
            src = r.prompt if r.prompt is not None else (r.messages or [{}])[-1].get("content", "")
            text = f"echo: {src}"
            out.append(GenResult(text=text, input_tokens=len(src.split()), output_tokens=len(text.split()),
                                 meta={"finish_reason": "stop"}))
        return out


def create_faulty_app(
    fail_rate: float = 0.3,
    kinds: Sequence[str] = ("429", "500", "hang"),
    retry_after_s: float = 1.0,
    hang_s: float = 30.0,
    seed: int = 0,
    fail_first: int = 0,
    valid_keys: Sequence[str] = (),
    omit_usage: bool = False,
    model_name: str = "echo",
) -> Any:
    from fastapi import Request
    from fastapi.responses import JSONResponse, Response

    bad = set(kinds) - {"429", "500", "hang"}
    if bad:
        raise ValueError(f"unknown fault kinds {sorted(bad)} (use 429, 500, hang)")
    app = create_app(EchoBackend(model_name), batch_window_ms=0, preload=False)
    seen: Counter[str] = Counter()
    stats: Counter[str] = Counter()
    by_key: Counter[str] = Counter()
    keys = list(valid_keys)

    @app.get("/stats")
    async def get_stats() -> dict[str, Any]:
        return {**stats, "by_key": dict(by_key)}

    @app.middleware("http")
    async def faults(request: Request, call_next: Any) -> Any:
        if request.method != "POST" or not request.url.path.startswith("/v1/"):
            return await call_next(request)
        stats["requests"] += 1
        if keys:
            auth = request.headers.get("authorization", "")
            key = auth.removeprefix("Bearer ").strip()
            if key not in keys:
                stats["auth_rejected"] += 1
                return JSONResponse({"error": {"message": "invalid api key", "type": "auth"}}, status_code=401)
            by_key[f"key{keys.index(key)}"] += 1
        body = await request.body()
        digest = hashlib.sha256(body).hexdigest()
        k = seen[digest]
        seen[digest] += 1
        rng = random.Random(f"{seed}:{digest}:{k}")
        kind = kinds[0] if k < fail_first else (rng.choice(list(kinds)) if rng.random() < fail_rate else None)
        if kind is not None:
            stats[f"fault_{kind}"] += 1
            stats["faults"] += 1
        if kind == "429":
            return JSONResponse({"error": {"message": "rate limited", "type": "rate_limit"}}, status_code=429,
                                headers={"Retry-After": f"{retry_after_s:g}"})
        if kind == "500":
            return JSONResponse({"error": {"message": "internal error", "type": "server"}}, status_code=500)
        if kind == "hang":
            await asyncio.sleep(hang_s)
            return JSONResponse({"error": {"message": "hung", "type": "server"}}, status_code=504)
        resp = await call_next(request)
        stats["ok"] += 1
        if omit_usage and resp.headers.get("content-type", "").startswith("application/json"):
            data = json.loads(b"".join([c async for c in resp.body_iterator]))
            data.pop("usage", None)
            return Response(json.dumps(data), status_code=resp.status_code, media_type="application/json")
        return resp

    return app


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--fail-rate", type=float, default=0.3)
    ap.add_argument("--kinds", default="429,500,hang")
    ap.add_argument("--retry-after", type=float, default=1.0)
    ap.add_argument("--hang-s", type=float, default=30.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fail-first", type=int, default=0)
    ap.add_argument("--valid-keys-env", default="", help="comma-separated env var names holding accepted keys")
    ap.add_argument("--omit-usage", action="store_true")
    ap.add_argument("--model-name", default="echo")
    args = ap.parse_args(argv)
    import uvicorn

    valid = [os.environ[n] for n in args.valid_keys_env.split(",") if n]
    app = create_faulty_app(args.fail_rate, [k for k in args.kinds.split(",") if k], args.retry_after, args.hang_s,
                            args.seed, args.fail_first, valid, args.omit_usage, args.model_name)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
