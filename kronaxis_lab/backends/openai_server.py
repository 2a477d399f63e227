"""A minimal OpenAI-compatible test server over any `Backend`: /v1/chat/completions, /v1/completions,
/v1/embeddings, /v1/models.

It makes a local backend (e.g. the transformers SmolLM2 backend) look like a vLLM / llama.cpp endpoint,
so the HTTP orchestrator and the serving router can be tested end to end against a real model. It is a test
and development server, not a production one.

- Requests arriving within `batch_window_ms` are merged into one `agenerate` call (up to `max_batch`),
  so the in-process backend still batches under concurrent clients.
- `stream: true` answers as Server-Sent Events in the OpenAI chunk format (`chat.completion.chunk` /
  `text_completion`, then `data: [DONE]`; a usage chunk when `stream_options.include_usage`). Backends
  are not token-streaming, so the answer is generated first and then sent as word-sized chunks.
- A backend error comes back as HTTP 500 with an OpenAI-style `{"error": {...}}` body.
- An omitted `temperature` means greedy (0), not OpenAI's 1.0: labels and tests stay reproducible.
  `user` is carried as `request_id` (e.g. a query_id for a replay backend); `top_p`, `seed` and the
  penalties go to the backend as `GenRequest.extra`.
- Tool calling: `tools` / `tool_choice` go to the backend in `GenRequest.extra`; a backend that calls tools puts
  `[{"name": ..., "arguments": <JSON string>}, ...]` in `GenResult.meta["tool_calls"]`, answered as OpenAI
  `tool_calls` (finish_reason "tool_calls"; streamed as one `delta.tool_calls` chunk).
- /v1/embeddings answers `hashed_embedding` vectors: a deterministic bag-of-words hash (words sharing a text
  raise its cosine similarity, nothing more), NOT a learned embedding model: enough to test clients and the
  router's pass-through. `dimensions` and `encoding_format` ("float" | "base64") are honoured.

Run::

    python -m kronaxis_lab.backends.openai_server --backend-config configs/backend/transformers_smollm2.yaml \\
        --port 8001 [batch_size=4 ...]      # trailing key=value pairs override the YAML

and point any OpenAI client at `http://127.0.0.1:8001/v1`.
"""

# no `from __future__ import annotations`: FastAPI must see the real `Request` class in the route signatures
import argparse
import asyncio
import base64
import hashlib
import json
import logging
import math
import re
import struct
import time
import uuid
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Sequence

from kronaxis_lab.backends.base import Backend, GenRequest, GenResult

log = logging.getLogger(__name__)

PASSTHROUGH = ("top_p", "seed", "presence_penalty", "frequency_penalty")  # sampling fields handed to the backend
TOOL_FIELDS = ("tools", "tool_choice")  # handed to the backend too; it answers tool calls in meta["tool_calls"]
EMBEDDING_DIM = 64  # /v1/embeddings vector size when the request gives no `dimensions`


class MicroBatcher:
    """Collects requests for up to `window_s` (or `max_batch` requests) and runs them as one batch."""

    def __init__(self, backend: Backend, window_s: float, max_batch: int):
        self.backend, self.window_s, self.max_batch = backend, window_s, max(1, max_batch)
        self._pending: list[tuple[GenRequest, asyncio.Future]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task] = set()

    async def submit(self, req: GenRequest) -> GenResult:
        if self.window_s <= 0:
            return (await self.backend.agenerate([req]))[0]
        loop = asyncio.get_running_loop()
        fut: asyncio.Future = loop.create_future()
        self._pending.append((req, fut))
        if len(self._pending) >= self.max_batch:
            self._flush()
        elif self._timer is None:
            self._timer = loop.call_later(self.window_s, self._flush)
        return await fut

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch, self._pending = self._pending, []
        if batch:
            task = asyncio.ensure_future(self._run(batch))
            self._tasks.add(task)  # keep a reference: the loop holds tasks only weakly
            task.add_done_callback(self._tasks.discard)

    async def _run(self, batch: list[tuple[GenRequest, asyncio.Future]]) -> None:
        try:
            results = await self.backend.agenerate([r for r, _ in batch])
        except Exception as e:  # noqa: BLE001 - every waiting client gets the error, none hangs
            results = [GenResult(error=f"{type(e).__name__}: {e}") for _ in batch]
        for (_, fut), res in zip(batch, results):
            if not fut.done():
                fut.set_result(res)


def _text_of(content: Any) -> str:
    """Message content as text: a string, or the text parts of a content-part list."""
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type", "text") == "text")
    raise ValueError(f"unsupported message content type {type(content).__name__}")


def _pieces(text: str) -> list[str]:
    """Word-sized stream chunks whose concatenation is exactly `text`."""
    return re.findall(r"\s*\S+|\s+$", text)


def hashed_embedding(text: str | Sequence[int], dim: int = EMBEDDING_DIM) -> list[float]:
    """L2-normalised signed hashing-trick vector of the lower-cased words of `text` (or of token ids):
    word w adds ±1 to bucket h(w) mod dim, sign from another bit of h = blake2b-64(w). All-zero for no words."""
    words = re.findall(r"\w+", text.lower()) if isinstance(text, str) else [str(t) for t in text]
    v = [0.0] * dim
    for w in words:
        h = int.from_bytes(hashlib.blake2b(w.encode(), digest_size=8).digest(), "little")
        v[h % dim] += 1.0 if (h >> 40) & 1 else -1.0
    norm = math.sqrt(sum(x * x for x in v))
    return [x / norm for x in v] if norm else v


def _embedding_inputs(inputs: Any) -> list[str | list[int]]:
    """`input` as a list of texts or token-id lists (the OpenAI forms: str, [str], [int], [[int]])."""
    if isinstance(inputs, str) or (isinstance(inputs, list) and inputs and all(isinstance(t, int) for t in inputs)):
        inputs = [inputs]
    if not isinstance(inputs, list) or not inputs:
        raise ValueError("'input' must be a string or a non-empty list of strings or token-id lists")
    for x in inputs:
        if not (isinstance(x, str) or (isinstance(x, list) and all(isinstance(t, int) for t in x))):
            raise ValueError("every 'input' item must be a string or a list of token ids")
    return inputs


def _tool_calls(res: GenResult) -> list[dict[str, Any]]:
    """The backend's tool calls in the OpenAI `tool_calls` format."""
    out = []
    for c in res.meta.get("tool_calls") or []:
        args = c.get("arguments", "{}")
        out.append({"id": c.get("id") or f"call_{uuid.uuid4().hex[:24]}", "type": "function",
                    "function": {"name": c["name"], "arguments": args if isinstance(args, str) else json.dumps(args)}})
    return out


def create_app(
    backend: Backend,
    served_model: str | None = None,
    batch_window_ms: float = 10.0,
    max_batch: int = 16,
    default_max_tokens: int = 256,
    preload: bool = True,
    embedding_dim: int = EMBEDDING_DIM,
) -> Any:
    """FastAPI app serving `backend` under the model name `served_model` (default: `backend.model`)."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, StreamingResponse

    name = served_model or backend.model
    batcher = MicroBatcher(backend, batch_window_ms / 1000.0, max_batch)

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        if preload and hasattr(backend, "load"):
            await asyncio.to_thread(backend.load)  # load weights before the first request, not during it
        yield
        backend.close()

    app = FastAPI(title=f"kronaxis_lab OpenAI-compatible server ({name})", lifespan=lifespan)
    app.state.backend = backend

    def error(status: int, message: str, kind: str = "invalid_request_error") -> Any:
        return JSONResponse({"error": {"message": message, "type": kind, "code": status}}, status_code=status)

    def parse(body: Any, chat: bool) -> GenRequest:
        if not isinstance(body, dict):
            raise ValueError("request body must be a JSON object")
        if int(body.get("n") or 1) != 1:
            raise ValueError("only n=1 is supported")
        stop = body.get("stop")
        stop = [stop] if isinstance(stop, str) else list(stop) if stop else None
        common = {
            "max_tokens": int(body.get("max_completion_tokens") or body.get("max_tokens") or default_max_tokens),
            "temperature": float(body.get("temperature") or 0.0),
            "stop": stop,
            "request_id": str(body["user"]) if body.get("user") else None,  # e.g. a query_id for replay
            "extra": {k: body[k] for k in PASSTHROUGH + TOOL_FIELDS if k in body} or None,
        }
        if chat:
            msgs = body.get("messages")
            if not isinstance(msgs, list) or not msgs:
                raise ValueError("'messages' must be a non-empty list")
            messages = [{"role": str(m.get("role", "user")), "content": _text_of(m.get("content"))} for m in msgs]
            return GenRequest(messages=messages, **common)
        prompt = body.get("prompt")
        if isinstance(prompt, list):
            if len(prompt) != 1 or not isinstance(prompt[0], str):
                raise ValueError("'prompt' must be a string (or a list of one string)")
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise ValueError("'prompt' must be a string")
        return GenRequest(prompt=prompt, **common)

    def usage(res: GenResult) -> dict[str, int]:
        return {"prompt_tokens": res.input_tokens, "completion_tokens": res.output_tokens,
                "total_tokens": res.input_tokens + res.output_tokens}

    async def handle(request: Request, chat: bool) -> Any:
        try:
            body = await request.json()
            req = parse(body, chat)
        except (ValueError, TypeError, json.JSONDecodeError) as e:
            return error(400, str(e))
        res = await batcher.submit(req)
        if res.error is not None:
            return error(500, res.error, "backend_error")
        rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        created = int(time.time())
        finish = res.meta.get("finish_reason") or "stop"
        calls = _tool_calls(res) if chat else []
        if calls and finish == "stop":
            finish = "tool_calls"
        if not body.get("stream"):
            choice: dict[str, Any] = {"index": 0, "finish_reason": finish, "logprobs": None}
            if chat:
                choice["message"] = {"role": "assistant", "content": res.text or (None if calls else ""),
                                     **({"tool_calls": calls} if calls else {})}
            else:
                choice["text"] = res.text
            return {"id": rid, "object": "chat.completion" if chat else "text_completion", "created": created,
                    "model": name, "choices": [choice], "usage": usage(res)}

        obj = "chat.completion.chunk" if chat else "text_completion"
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

        def chunk(piece: str | None, finish_reason: str | None = None, role: bool = False,
                  delta: dict[str, Any] | None = None) -> str:
            if chat:
                delta = delta or ({"role": "assistant", "content": ""} if role else (
                    {"content": piece} if piece is not None else {}))
                choice = {"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}
            else:
                choice = {"index": 0, "text": piece or "", "finish_reason": finish_reason, "logprobs": None}
            data = {"id": rid, "object": obj, "created": created, "model": name, "choices": [choice]}
            return f"data: {json.dumps(data)}\n\n"

        async def events() -> AsyncIterator[str]:
            if chat:
                yield chunk(None, role=True)
            for p in _pieces(res.text):
                yield chunk(p)
            if calls:
                yield chunk(None, delta={"tool_calls": [{"index": i, **c} for i, c in enumerate(calls)]})
            yield chunk(None, finish_reason=finish)
            if include_usage:
                data = {"id": rid, "object": obj, "created": created, "model": name, "choices": [], "usage": usage(res)}
                yield f"data: {json.dumps(data)}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        return await handle(request, chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        return await handle(request, chat=False)

    @app.post("/v1/embeddings")
    async def embeddings(request: Request) -> Any:
        try:
            body = await request.json()
            if not isinstance(body, dict):
                raise ValueError("request body must be a JSON object")
            inputs = _embedding_inputs(body.get("input"))
            dim = int(body.get("dimensions") or embedding_dim)
            fmt = body.get("encoding_format") or "float"
            if dim < 1 or fmt not in ("float", "base64"):
                raise ValueError("'dimensions' must be >= 1 and 'encoding_format' float or base64")
        except (ValueError, TypeError, json.JSONDecodeError) as e:
            return error(400, str(e))
        data = []
        for i, x in enumerate(inputs):
            v = hashed_embedding(x, dim)
            data.append({"object": "embedding", "index": i, "embedding": v if fmt == "float" else
                         base64.b64encode(struct.pack(f"<{dim}f", *v)).decode()})
        n = sum(len(x.split()) if isinstance(x, str) else len(x) for x in inputs)
        return {"object": "list", "data": data, "model": name, "usage": {"prompt_tokens": n, "total_tokens": n}}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": name, "object": "model", "created": 0, "owned_by": "kronaxis_lab"}]}

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": name}

    return app


def load_backend(config_path: str, overrides: Sequence[str] = ()) -> Backend:
    """Instantiate a backend from a configs/backend YAML (`_target_` + parameters), with key=value overrides."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = OmegaConf.merge(OmegaConf.load(config_path), OmegaConf.from_dotlist(list(overrides)))
    if "_target_" not in cfg:
        raise ValueError(f"{config_path}: backend config needs a '_target_'")
    log.info("Instantiating backend <%s> from %s", cfg._target_, config_path)
    backend = instantiate(cfg, _convert_="all")
    if not isinstance(backend, Backend):
        raise ValueError(f"{config_path}: {cfg._target_} is not a kronaxis_lab Backend")
    return backend


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend-config", required=True, help="configs/backend/<name>.yaml")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--served-model-name", default=None)
    ap.add_argument("--batch-window-ms", type=float, default=10.0)
    ap.add_argument("--max-batch", type=int, default=16)
    ap.add_argument("--log-level", default="warning")
    ap.add_argument("overrides", nargs="*", help="key=value overrides of the backend config")
    args = ap.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper())
    import uvicorn

    backend = load_backend(args.backend_config, args.overrides)
    app = create_app(backend, args.served_model_name, args.batch_window_ms, args.max_batch)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)


if __name__ == "__main__":
    main()
