"""The rest of the OpenAI surface beside chat: model lookup, legacy completions, the Responses API, embeddings.

Registered by `create_app` (`OpenAISurface(svc, ROUTER_FIELDS).register(app)`); each endpoint goes through the
same `RoutingEngine.decide` as chat, so governance scans every string of the request body (bar `model`) and a
sensitive request only reaches a model allowed to receive it.

- `GET /v1/models/{id}` — the router's virtual models (`kronaxis/auto`, `kronaxis/<policy>`,
  `kronaxis/<policy>:<param>`) and the fleet models that have an upstream; anything else 404 `model_not_found`.
- `POST /v1/completions` — `prompt` (a string or a list of strings; the classifier reads them joined, and one
  upstream answers the whole list, as OpenAI does) is routed like a one-turn chat and forwarded unchanged to
  the chosen upstream's `/completions`; `stream: true` passes its SSE through. Token-id prompts are 400:
  governance cannot scan token ids.
- `POST /v1/responses` — translated to chat.completions, because every OpenAI-compatible upstream serves chat and
  few serve /v1/responses: `instructions` → a system message, `input` (a string or message / function_call /
  function_call_output items with input_text / output_text / input_image parts) → messages, function `tools`,
  `tool_choice`, `text.format` → `response_format`, `max_output_tokens` → `max_tokens`. The chat answer comes
  back as a Response object (`output`: a message with output_text, then any function_call items; `usage` in
  input/output tokens). Stateless: `previous_response_id`, `conversation`, `prompt`, `background` and
  `stream: true` are 400 (stream through /v1/chat/completions instead).
- `POST /v1/embeddings` — not routed by difficulty (an embedding has no "hard"): `model` must name a fleet model
  with an upstream that serves embeddings (`kronaxis/...` is 400). Governance still applies, but never reroutes:
  another model's vectors are not comparable, so a disallowed input is refused (403) and an upstream failure is
  not retried on another model. Token-id inputs are 400.

Decision headers (`x-kronaxis-*`) and cost metrics are as for chat (`RouterService.forward`); requests count in
`kronaxis_requests_total{endpoint=completions|embeddings}`, /v1/responses under `chat` (its upstream call).
"""

# no `from __future__ import annotations`: FastAPI must see the real `Request` class in route signatures
import json
import time
import uuid
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from kronaxis_lab.serving.engine import Conversation, Decision, PolicySpec, RequestError

if TYPE_CHECKING:
    from kronaxis_lab.serving.app import RouterService

COMPLETIONS_PATH = "/completions"
EMBEDDINGS_PATH = "/embeddings"
SCAN_KEY = "kronaxis_scan"  # extra key of the conversation's last message: the body's other fields, for governance
# Responses fields that need server-side state (stored responses, conversations, prompt templates, background jobs)
RESPONSES_STATEFUL = ("previous_response_id", "conversation", "prompt", "background")
# Responses fields that change nothing here: the router stores nothing and sends no cache / tier hints upstream
RESPONSES_IGNORED = ("store", "include", "truncation", "service_tier", "prompt_cache_key", "prompt_cache_retention",
                     "safety_identifier", "stream_options")
INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}  # chat finish → Response reason
RESPONSES_FIELDS = ("model", "input", "instructions", "max_output_tokens", "temperature", "top_p", "user", "tools",
                    "tool_choice", "parallel_tool_calls", "text", "reasoning", "metadata", "stream")


def _new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def stream_flag(body: Mapping[str, Any]) -> bool:
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise RequestError(400, "'stream' must be true or false", param="stream")
    return stream


def _token_ids(x: Any) -> bool:
    return isinstance(x, list) and bool(x) and all(isinstance(t, int) for t in x)


def text_inputs(value: Any, field: str) -> list[str]:
    """`prompt` / `input` as a non-empty list of strings (a string, or a list of them); token ids are 400."""
    if isinstance(value, str):
        return [value]
    if _token_ids(value) or (isinstance(value, list) and value and all(_token_ids(x) for x in value)):
        raise RequestError(400, f"'{field}' as token ids is not supported: the router's governance scans text; "
                           "send the text instead", param=field)
    if isinstance(value, list) and value and all(isinstance(x, str) for x in value):
        return list(value)
    if value is None:
        raise RequestError(400, f"'{field}' is required", param=field)
    raise RequestError(400, f"'{field}' must be a string or a non-empty list of strings", param=field)


# --------------------------------------------------------------------------------------------------
# Responses API ⇄ chat.completions
# --------------------------------------------------------------------------------------------------
def _parts(content: Any, where: str) -> str | list[dict[str, Any]]:
    """A Responses message content → chat content (a string stays a string; parts map one to one)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list) or not content:
        raise RequestError(400, f"{where} must be a string or a non-empty list of content parts", param=where)
    out: list[dict[str, Any]] = []
    for k, p in enumerate(content):
        kind = p.get("type") if isinstance(p, dict) else None
        if kind in ("input_text", "output_text", "text") and isinstance(p.get("text"), str):
            out.append({"type": "text", "text": p["text"]})
        elif kind == "refusal" and isinstance(p.get("refusal"), str):
            out.append({"type": "text", "text": p["refusal"]})
        elif kind == "input_image" and isinstance(p.get("image_url"), str):
            out.append({"type": "image_url", "image_url": {"url": p["image_url"], "detail": p.get("detail", "auto")}})
        else:
            raise RequestError(400, f"{where}[{k}] is not supported: use input_text / output_text parts, or "
                               "input_image with an image_url", param=f"{where}[{k}]")
    return out


def _tool_call(item: Mapping[str, Any], where: str) -> dict[str, Any]:
    fields = [item.get(k) for k in ("call_id", "name", "arguments")]
    if not all(isinstance(f, str) for f in fields):
        raise RequestError(400, f"{where}: a function_call needs string call_id, name and arguments", param=where)
    call_id, name, arguments = fields
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def input_messages(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    """`instructions` + `input` → chat messages (consecutive function_call items join one assistant turn)."""
    out: list[dict[str, Any]] = []
    instructions = body.get("instructions")
    if instructions is not None:
        if not isinstance(instructions, str):
            raise RequestError(400, "'instructions' must be a string", param="instructions")
        out.append({"role": "system", "content": instructions})
    items = body.get("input")
    if isinstance(items, str):
        return [*out, {"role": "user", "content": items}]
    if not isinstance(items, list) or not items:
        raise RequestError(400, "'input' must be a string or a non-empty list of input items", param="input")
    for k, item in enumerate(items):
        where = f"input[{k}]"
        if not isinstance(item, dict):
            raise RequestError(400, f"{where} must be an object", param=where)
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "assistant", "system", "developer"):
                raise RequestError(400, f"{where}.role must be user, assistant, system or developer", param=where)
            # developer = system for chat upstreams (not every chat template knows the developer role)
            out.append({"role": "system" if role == "developer" else role,
                        "content": _parts(item.get("content"), f"{where}.content")})
        elif kind == "function_call":
            call = _tool_call(item, where)
            if out and out[-1]["role"] == "assistant" and out[-1].get("tool_calls"):
                out[-1]["tool_calls"].append(call)
            else:
                out.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            output, call_id = item.get("output"), item.get("call_id")
            if not isinstance(call_id, str):
                raise RequestError(400, f"{where}.call_id must be a string", param=where)
            out.append({"role": "tool", "tool_call_id": call_id, "content": _parts(output, f"{where}.output")})
        else:
            raise RequestError(400, f"{where}.type {kind!r} is not supported (message, function_call, "
                               "function_call_output)", param=where)
    return out


def _chat_tools(tools: Any) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise RequestError(400, "'tools' must be a list", param="tools")
    out = []
    for k, t in enumerate(tools):
        if not isinstance(t, dict) or t.get("type") != "function" or not isinstance(t.get("name"), str):
            raise RequestError(400, f"tools[{k}]: only function tools with a name are supported (the router "
                               "translates /v1/responses to chat.completions)", param=f"tools[{k}]")
        out.append({"type": "function", "function": {k2: t[k2] for k2 in ("name", "description", "parameters",
                                                                           "strict") if k2 in t}})
    return out


def _chat_tool_choice(choice: Any) -> Any:
    if choice in ("auto", "none", "required"):
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function" and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}
    raise RequestError(400, "'tool_choice' must be auto, none, required or {type: function, name}",
                       param="tool_choice")


def _response_format(text: Any) -> dict[str, Any] | None:
    fmt = (text or {}).get("format") if isinstance(text, dict) else None
    if fmt is None or fmt.get("type") == "text":
        return None
    if fmt.get("type") == "json_object":
        return {"type": "json_object"}
    if fmt.get("type") == "json_schema":
        return {"type": "json_schema", "json_schema": {k: fmt[k] for k in ("name", "schema", "strict", "description")
                                                       if k in fmt}}
    raise RequestError(400, "'text.format.type' must be text, json_object or json_schema", param="text.format")


def responses_to_chat(body: Mapping[str, Any]) -> dict[str, Any]:
    """A Responses API request → the chat.completions body sent upstream (see the module docstring)."""
    stateful = [k for k in RESPONSES_STATEFUL if body.get(k) is not None]
    if stateful:
        raise RequestError(400, f"{stateful} need stored server-side state; the router is stateless: send the whole "
                           "conversation in 'input'", param=stateful[0])
    unknown = sorted(set(body) - set(RESPONSES_FIELDS) - set(RESPONSES_IGNORED) - {"route_token"})
    if unknown:
        raise RequestError(400, f"field(s) {unknown} are not supported by the router's /v1/responses (translated to "
                           f"chat.completions; supported: {list(RESPONSES_FIELDS)})", param=unknown[0])
    chat: dict[str, Any] = {"messages": input_messages(body)}
    for src, dst in (("max_output_tokens", "max_tokens"), ("temperature", "temperature"), ("top_p", "top_p"),
                     ("user", "user"), ("parallel_tool_calls", "parallel_tool_calls")):
        if body.get(src) is not None:
            chat[dst] = body[src]
    if body.get("tools"):
        chat["tools"] = _chat_tools(body["tools"])
    if body.get("tool_choice") is not None:
        chat["tool_choice"] = _chat_tool_choice(body["tool_choice"])
    fmt = _response_format(body.get("text"))
    if fmt is not None:
        chat["response_format"] = fmt
    effort = (body.get("reasoning") or {}).get("effort") if isinstance(body.get("reasoning"), dict) else None
    if effort is not None:
        chat["reasoning_effort"] = effort
    return chat


def chat_to_response(data: Mapping[str, Any], request: Mapping[str, Any]) -> dict[str, Any]:
    """A chat.completion answer → a Response object echoing the request's settings."""
    choices = data.get("choices") or [{}]
    choice = choices[0] if isinstance(choices[0], dict) else {}
    msg = choice.get("message") or {}
    finish = choice.get("finish_reason")
    status = "incomplete" if finish in INCOMPLETE else "completed"
    incomplete = {"reason": INCOMPLETE[finish]} if finish in INCOMPLETE else None
    output: list[dict[str, Any]] = []
    calls = msg.get("tool_calls") or []
    if msg.get("content") or msg.get("refusal") or not calls:
        part = ({"type": "refusal", "refusal": msg["refusal"]} if msg.get("refusal") and not msg.get("content")
                else {"type": "output_text", "text": msg.get("content") or "", "annotations": []})
        output.append({"type": "message", "id": _new_id("msg"), "status": status, "role": "assistant",
                       "content": [part]})
    for c in calls:
        fn = c.get("function") or {}
        output.append({"type": "function_call", "id": _new_id("fc"), "call_id": c.get("id") or _new_id("call"),
                       "name": fn.get("name", ""), "arguments": fn.get("arguments") or "", "status": "completed"})
    u = data.get("usage") or {}
    n_in, n_out = int(u.get("prompt_tokens") or 0), int(u.get("completion_tokens") or 0)
    usage = {"input_tokens": n_in, "output_tokens": n_out, "total_tokens": int(u.get("total_tokens") or n_in + n_out),
             "input_tokens_details": {"cached_tokens": int((u.get("prompt_tokens_details") or {})
                                                           .get("cached_tokens") or 0)},
             "output_tokens_details": {"reasoning_tokens": int((u.get("completion_tokens_details") or {})
                                                               .get("reasoning_tokens") or 0)}}
    return {"id": _new_id("resp"), "object": "response", "created_at": data.get("created") or int(time.time()),
            "status": status, "error": None, "incomplete_details": incomplete,
            "instructions": request.get("instructions"), "max_output_tokens": request.get("max_output_tokens"),
            "model": data.get("model") or request.get("model"), "output": output,
            "parallel_tool_calls": request.get("parallel_tool_calls", True),
            "temperature": request.get("temperature"), "top_p": request.get("top_p"),
            "tool_choice": request.get("tool_choice", "auto"), "tools": request.get("tools") or [],
            "text": request.get("text") or {"format": {"type": "text"}}, "metadata": request.get("metadata") or {},
            "user": request.get("user"), "store": False, "usage": usage}


# --------------------------------------------------------------------------------------------------
# The endpoints
# --------------------------------------------------------------------------------------------------
class OpenAISurface:
    """GET /v1/models/{id}, POST /v1/completions, /v1/responses, /v1/embeddings over a `RouterService`.

    Args:
        svc: the app's `RouterService` (engine, upstreams, settings, metrics; `forward` calls the upstreams).
        router_fields: request fields the router reads and never forwards (`app.ROUTER_FIELDS`).
    """

    def __init__(self, svc: "RouterService", router_fields: Sequence[str]) -> None:
        self.svc, self.router_fields = svc, tuple(router_fields)

    def register(self, app: FastAPI) -> None:
        app.add_api_route("/v1/models/{model_id:path}", self.retrieve_model, methods=["GET"])  # ids hold a "/"
        app.add_api_route("/v1/completions", self.completions, methods=["POST"])
        app.add_api_route("/v1/responses", self.responses, methods=["POST"])
        app.add_api_route("/v1/embeddings", self.embeddings, methods=["POST"])

    # -- shared steps ------------------------------------------------------------------------------
    def conversation(self, body: Mapping[str, Any], request: Request, messages: list[dict[str, Any]], where: str,
                     covered: Sequence[str]) -> Conversation:
        """The conversation the classifier reads (`messages`, made from the `covered` fields); every string of the
        body's other fields rides along on its last message, so the governance scan sees the whole request."""
        rest = {k: v for k, v in body.items() if k not in (*covered, "model", *self.router_fields)}
        msgs = [*messages[:-1], {**messages[-1], SCAN_KEY: rest}] if rest else messages
        return self.svc.conversation({**body, "messages": msgs}, request, where)

    def forwardable(self, body: Mapping[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in body.items() if k not in self.router_fields}

    def require_upstreams(self) -> None:
        if not self.svc.upstreams:
            raise RequestError(503, "no upstreams are configured for this router: it can only answer POST /v1/route. "
                               "Start it with upstreams=<configs/upstreams/NAME> mapping fleet models to endpoints.",
                               type="service_unavailable", code="no_upstreams")

    def refusal(self, d: Decision, why: str = "which no available endpoint may receive") -> RequestError:
        """403 as for chat: the data classes are named only where `settings.expose_data_classes` allows it."""
        what = f"data of class(es) {d.data_classes}" if self.svc.settings.expose_data_classes else "sensitive data"
        return RequestError(403, f"refused by governance: the request carries {what}, {why}",
                            type="governance_refused", code="data_class_not_allowed")

    async def route_and_forward(self, spec: PolicySpec | None, forced: int | None, conv: Conversation,
                                body: dict[str, Any], stream: bool, path: str | None = None) -> Response:
        """Decide as for chat (classifier → policy → stickiness → governance), then forward to `path` (None: chat)."""
        svc = self.svc
        self.require_upstreams()
        t0 = time.perf_counter()
        [d] = await svc.engine.decide([conv], spec, forced, available=svc.available)
        svc.metrics.decision_latency.observe(time.perf_counter() - t0)
        if d.refused:
            raise self.refusal(d)
        return await (svc.forward(d, conv, body, stream) if path is None else svc.forward(d, conv, body, stream, path))

    # -- GET /v1/models/{id} -----------------------------------------------------------------------
    async def retrieve_model(self, model_id: str) -> dict[str, Any]:
        svc, s = self.svc, self.svc.settings
        listed = {m["id"]: m for m in (await svc.models())["data"]}
        if model_id in listed:
            return listed[model_id]
        name, colon, _ = model_id.removeprefix(s.policy_prefix).partition(":")
        if model_id.startswith(s.policy_prefix) and name in svc.engine.policy_configs:
            try:
                if colon:
                    svc.engine.parse_model(model_id)  # a parameter must parse: kronaxis/threshold:abc is no model
                return {"id": model_id, "object": "model", "created": 0, "owned_by": "kronaxis"}
            except RequestError:
                pass
        raise RequestError(404, f"The model {model_id!r} does not exist: the router serves {list(listed)} and "
                           f"'{s.policy_prefix}<policy>[:<param>]' for policies {sorted(svc.engine.policy_configs)}",
                           param="model", code="model_not_found")

    # -- POST /v1/completions ----------------------------------------------------------------------
    async def completions(self, request: Request) -> Response:
        body = await self.svc.body(request)
        spec, forced = self.svc.engine.parse_model(body.get("model"))
        text = "\n\n".join(text_inputs(body.get("prompt"), "prompt"))
        stream = stream_flag(body)
        conv = self.conversation(body, request, [{"role": "user", "content": text}], "prompt", ("prompt",))
        return await self.route_and_forward(spec, forced, conv, self.forwardable(body), stream, COMPLETIONS_PATH)

    # -- POST /v1/responses ------------------------------------------------------------------------
    async def responses(self, request: Request) -> Response:
        body = await self.svc.body(request)
        if stream_flag(body):
            raise RequestError(400, "'stream: true' is not supported on /v1/responses (the router answers it by "
                               "translating to chat.completions); stream with /v1/chat/completions", param="stream")
        spec, forced = self.svc.engine.parse_model(body.get("model"))
        chat = responses_to_chat(body)
        conv = self.conversation(body, request, chat["messages"], "input", ("input", "instructions"))
        resp = await self.route_and_forward(spec, forced, conv, chat, False)
        headers = {k: v for k, v in resp.headers.items() if k.startswith("x-kronaxis-")}
        return JSONResponse(chat_to_response(json.loads(resp.body), body), headers=headers)

    # -- POST /v1/embeddings -----------------------------------------------------------------------
    async def embeddings(self, request: Request) -> Response:
        svc = self.svc
        body = await svc.body(request)
        _, forced = svc.engine.parse_model(body.get("model"))
        if forced is None:
            raise RequestError(400, f"embeddings are not routed by difficulty: name the fleet model that serves them "
                               f"(one of {[n for n in svc.engine.names if n in svc.upstreams]}), not "
                               f"{body.get('model', svc.settings.default_model)!r}", param="model")
        texts = text_inputs(body.get("input"), "input")
        conv = self.conversation(body, request, [{"role": "user", "content": "\n".join(texts)}], "input", ("input",))
        self.require_upstreams()
        model = svc.engine.names[forced]
        if model not in svc.upstreams:
            raise RequestError(404, f"model {model!r} has no upstream on this router", param="model",
                               code="model_not_found")
        [d] = await svc.engine.decide([conv], None, forced, available=svc.available)
        if d.refused or d.model != model:
            raise self.refusal(d, f"which {model!r} may not receive (embeddings are never rerouted: another model's "
                               "vectors are not comparable)")
        d.allowed = np.arange(len(svc.engine.names)) == forced  # no cross-model fallback either
        return await svc.forward(d, conv, self.forwardable(body), False, EMBEDDINGS_PATH)
