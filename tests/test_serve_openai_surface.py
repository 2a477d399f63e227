"""The router's OpenAI surface beside chat, driven by the official `openai` SDK over real HTTP on 127.0.0.1:
models.retrieve, completions (plain + stream), responses, embeddings, tool calling and include_usage through chat,
and governance on every one of them (a card number never reaches the upstream that may not receive it).

Router: the keyword `FakeBundle` of tests/test_serve_app.py ("hard" in the text → big, else small). Upstreams:
`kronaxis_lab.backends.openai_server` over an echo backend that calls the first tool it is offered; each records
the path and body of every request it receives (its access log). The router requires an API key, sent by the SDK
as `Authorization: Bearer`, as a deployment would.
"""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any, Sequence

import httpx
import openai
import pytest

from kronaxis_lab.backends.base import GenRequest, GenResult
from kronaxis_lab.backends.openai_server import create_app as create_upstream
from kronaxis_lab.backends.openai_server import hashed_embedding
from kronaxis_lab.serving.openai_surface import chat_to_response, responses_to_chat
from tests.servers.faulty_server import EchoBackend
from tests.test_serve_app import ServerThread, gov_config, router

EASY = "What is the capital of France?"
HARD = "A hard one: prove that there are infinitely many primes."
CARD = "4111 1111 1111 1111"
KEY = "kx-test-router-key-0123456789abcdef"  # the router's client API key (auth.py)
TOOL = {"type": "function", "function": {"name": "lookup", "description": "Look a word up",
                                         "parameters": {"type": "object", "properties": {"query": {"type": "string"}}}}}


class ToolEcho(EchoBackend):
    """Echo backend that, when offered tools, calls the first one with {"query": <last message>}."""

    async def agenerate(self, requests: Sequence[GenRequest]) -> list[GenResult]:
        out = await super().agenerate(requests)
        for req, res in zip(requests, out):
            tools = (req.extra or {}).get("tools")
            if tools:
                query = res.text.removeprefix("echo: ")
                res.text, res.meta["tool_calls"] = "", [{"name": tools[0]["function"]["name"],
                                                         "arguments": json.dumps({"query": query})}]
        return out


def recording_upstream(name: str) -> tuple[Any, list[dict[str, Any]]]:
    """An upstream answering as `name`; its access log holds {path, body} per POST."""
    from fastapi import Request

    app = create_upstream(ToolEcho(name), batch_window_ms=0, preload=False)
    log: list[dict[str, Any]] = []

    @app.middleware("http")
    async def record(request: Request, call_next: Any) -> Any:
        if request.method == "POST":
            log.append({"path": request.url.path, "body": json.loads(await request.body())})
        return await call_next(request)

    return app, log


def secured_router(**kw: Any) -> Any:
    return router(environ={"KRONAXIS_API_KEYS": KEY}, **kw)


def sdk(url: str, key: str = KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)


@pytest.fixture(scope="module")
def stack():
    """small (may receive anything) and big (no sensitive data) upstreams behind one router."""
    (small_app, small_log), (big_app, big_log) = recording_upstream("served-small"), recording_upstream("served-big")
    with ServerThread(small_app) as s, ServerThread(big_app) as b, \
            ServerThread(secured_router(urls={"small": s.url, "big": b.url},
                                        governance=gov_config({"small": "*", "big": []}))) as r:
        yield SimpleNamespace(url=r.url, small=small_log, big=big_log, client=sdk(r.url))


@pytest.fixture
def oai(stack):
    stack.small.clear()
    stack.big.clear()
    return stack.client


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


# ---------------------------------------------------------------------------------------------------
# GET /v1/models/{id}
# ---------------------------------------------------------------------------------------------------
def test_models_retrieve_virtual_and_fleet_models(oai):
    for mid in ("kronaxis/auto", "kronaxis/threshold", "kronaxis/threshold:0.3", "kronaxis/wtp:2", "small", "big"):
        m = oai.models.retrieve(mid)
        assert (m.id, m.object) == (mid, "model")
    assert {"kronaxis/auto", "small", "big"} <= {m.id for m in oai.models.list().data}
    for bad in ("gpt-9", "kronaxis/nope", "kronaxis/threshold:abc", "kronaxis/"):
        with pytest.raises(openai.NotFoundError) as e:
            oai.models.retrieve(bad)
        assert e.value.code == "model_not_found" and e.value.param == "model"


def test_models_retrieve_lists_only_fleet_models_with_an_upstream():
    with ServerThread(secured_router()) as r:  # no upstreams: decisions only
        oai = sdk(r.url)
        assert oai.models.retrieve("kronaxis/auto").id == "kronaxis/auto"
        with pytest.raises(openai.NotFoundError):
            oai.models.retrieve("small")
        with pytest.raises(openai.InternalServerError) as e:  # 503: no upstreams configured
            oai.completions.create(model="kronaxis/auto", prompt=EASY)
        assert e.value.status_code == 503 and e.value.code == "no_upstreams"


# ---------------------------------------------------------------------------------------------------
# POST /v1/completions
# ---------------------------------------------------------------------------------------------------
def test_completions_are_routed_forwarded_and_streamed(stack, oai):
    raw = oai.completions.with_raw_response.create(model="kronaxis/auto", prompt=EASY, max_tokens=5)
    assert raw.headers["x-kronaxis-model"] == "small" and raw.headers["x-kronaxis-policy"] == "threshold:0.5"
    c = raw.parse()
    assert c.choices[0].text == "echo: " + EASY and c.model == "served-small"
    assert [(x["path"], x["body"]["prompt"], x["body"]["model"], x["body"]["max_tokens"]) for x in stack.small] == \
        [("/v1/completions", EASY, "served-small", 5)]

    raw = oai.completions.with_raw_response.create(model="kronaxis/auto", prompt=[HARD])
    assert raw.headers["x-kronaxis-model"] == "big" and raw.parse().choices[0].text == "echo: " + HARD
    forced = oai.completions.with_raw_response.create(model="big", prompt=EASY)  # fleet model: pass-through
    assert forced.headers["x-kronaxis-model"] == "big"

    chunks = list(oai.completions.create(model="kronaxis/auto", prompt=HARD, stream=True,
                                         stream_options={"include_usage": True}))
    assert "".join(ch.choices[0].text for ch in chunks if ch.choices) == "echo: " + HARD
    assert not chunks[-1].choices and chunks[-1].usage.completion_tokens == len(("echo: " + HARD).split())
    assert stack.big[-1]["path"] == "/v1/completions" and stack.big[-1]["body"]["stream"] is True

    n = len(stack.small) + len(stack.big)
    for bad in ([1, 2, 3], [[1, 2]], [], 7):
        with pytest.raises(openai.BadRequestError) as e:
            oai.completions.create(model="kronaxis/auto", prompt=bad)
        assert e.value.param == "prompt"
    assert len(stack.small) + len(stack.big) == n  # nothing malformed went upstream
    m = httpx.get(stack.url + "/metrics", headers={"authorization": f"Bearer {KEY}"}).text
    assert 'kronaxis_requests_total{endpoint="completions",model="small",tier="0"}' in m


# ---------------------------------------------------------------------------------------------------
# POST /v1/responses (translated to chat.completions)
# ---------------------------------------------------------------------------------------------------
def test_responses_are_routed_through_chat_and_translated_back(stack, oai):
    raw = oai.responses.with_raw_response.create(model="kronaxis/auto", input=EASY, instructions="Answer briefly.",
                                                 max_output_tokens=20, metadata={"run": "t1"})
    assert raw.headers["x-kronaxis-model"] == "small"
    r = raw.parse()
    assert r.object == "response" and r.status == "completed" and r.id.startswith("resp_")
    assert r.output_text == "echo: " + EASY and r.output[0].type == "message" and r.output[0].role == "assistant"
    assert r.usage.input_tokens == len(EASY.split()) and r.usage.output_tokens == len(("echo: " + EASY).split())
    assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens
    assert r.instructions == "Answer briefly." and r.metadata == {"run": "t1"} and r.max_output_tokens == 20
    [seen] = stack.small
    assert seen["path"] == "/v1/chat/completions" and seen["body"]["max_tokens"] == 20
    assert seen["body"]["messages"] == [{"role": "system", "content": "Answer briefly."}, *user(EASY)]
    assert "metadata" not in seen["body"] and "input" not in seen["body"]

    # input items with content parts; a hard question goes to the big model
    r = oai.responses.with_raw_response.create(
        model="kronaxis/auto", input=[{"role": "user", "content": [{"type": "input_text", "text": HARD}]}])
    assert r.headers["x-kronaxis-model"] == "big" and r.parse().output_text == "echo: " + HARD

    # a tool round trip: the upstream's tool call comes back as a function_call item, its output goes back in
    r = oai.responses.create(model="kronaxis/auto", input="look up tide", tools=[
        {"type": "function", "name": "lookup", "parameters": TOOL["function"]["parameters"]}])
    [call] = [o for o in r.output if o.type == "function_call"]
    assert call.name == "lookup" and json.loads(call.arguments) == {"query": "look up tide"}
    assert stack.small[-1]["body"]["tools"] == [{"type": "function", "function": {
        "name": "lookup", "parameters": TOOL["function"]["parameters"]}}]  # Responses tool → chat tool
    r = oai.responses.create(model="kronaxis/auto", input=[
        {"role": "user", "content": "look up tide"},
        {"type": "function_call", "call_id": call.call_id, "name": "lookup", "arguments": call.arguments},
        {"type": "function_call_output", "call_id": call.call_id, "output": "high at noon"}])
    assert r.output_text == "echo: high at noon"
    msgs = stack.small[-1]["body"]["messages"]
    assert [m["role"] for m in msgs] == ["user", "assistant", "tool"]
    assert msgs[1]["tool_calls"][0]["id"] == call.call_id and msgs[2]["tool_call_id"] == call.call_id

    n = len(stack.small) + len(stack.big)
    for bad in ({"stream": True}, {"previous_response_id": "resp_1"}, {"input": [{"role": "user", "content": 3}]},
                {"tools": [{"type": "web_search"}]}, {"input": [{"type": "item_reference", "id": "x"}]}):
        with pytest.raises(openai.BadRequestError):
            oai.responses.create(**{"model": "kronaxis/auto", "input": EASY, **bad})
    assert len(stack.small) + len(stack.big) == n


def test_responses_translation_maps_formats_choices_and_limits():
    chat = responses_to_chat({"model": "kronaxis/auto", "input": [
        {"type": "message", "role": "developer", "content": "be terse"},
        {"role": "assistant", "content": [{"type": "output_text", "text": "earlier"}]},
        {"role": "user", "content": [{"type": "input_text", "text": "see"},
                                     {"type": "input_image", "image_url": "https://x/y.png"}]}],
        "tool_choice": {"type": "function", "name": "lookup"}, "temperature": 0.2, "reasoning": {"effort": "low"},
        "text": {"format": {"type": "json_schema", "name": "out", "schema": {"type": "object"}, "strict": True}},
        "store": True})
    assert chat["messages"] == [
        {"role": "system", "content": "be terse"},
        {"role": "assistant", "content": [{"type": "text", "text": "earlier"}]},
        {"role": "user", "content": [{"type": "text", "text": "see"},
                                     {"type": "image_url", "image_url": {"url": "https://x/y.png", "detail": "auto"}}]}]
    assert chat["tool_choice"] == {"type": "function", "function": {"name": "lookup"}}
    assert chat["response_format"] == {"type": "json_schema",
                                       "json_schema": {"name": "out", "schema": {"type": "object"}, "strict": True}}
    assert chat["temperature"] == 0.2 and chat["reasoning_effort"] == "low" and "store" not in chat
    cut = chat_to_response({"model": "m", "choices": [{"message": {"content": "par"}, "finish_reason": "length"}],
                            "usage": {"prompt_tokens": 3, "completion_tokens": 1}}, {"model": "kronaxis/auto"})
    assert cut["status"] == "incomplete" and cut["incomplete_details"] == {"reason": "max_output_tokens"}
    assert cut["usage"]["total_tokens"] == 4 and cut["output"][0]["content"][0]["text"] == "par"


# ---------------------------------------------------------------------------------------------------
# POST /v1/embeddings (pass-through to a named fleet model)
# ---------------------------------------------------------------------------------------------------
def test_embeddings_pass_through_to_the_named_model(stack, oai):
    e = oai.embeddings.create(model="small", input=["hello world", "hello there"])  # SDK default: base64 on the wire
    assert [d.index for d in e.data] == [0, 1] and e.usage.prompt_tokens == 4
    for d, text in zip(e.data, ["hello world", "hello there"]):
        assert d.embedding == pytest.approx(hashed_embedding(text), abs=1e-6)
    [seen] = stack.small
    assert seen["path"] == "/v1/embeddings" and seen["body"]["model"] == "served-small"
    assert seen["body"]["encoding_format"] == "base64" and "stream" not in seen["body"]
    raw = oai.embeddings.with_raw_response.create(model="big", input=HARD, dimensions=8, encoding_format="float")
    assert raw.headers["x-kronaxis-model"] == "big" and raw.headers["x-kronaxis-policy"] == "passthrough"
    assert len(raw.parse().data[0].embedding) == 8  # "hard" in the text changes nothing: no routing

    n = len(stack.small) + len(stack.big)
    for model in ("kronaxis/auto", "kronaxis/threshold:0.2"):
        with pytest.raises(openai.BadRequestError, match="not routed by difficulty") as err:
            oai.embeddings.create(model=model, input="x")
        assert err.value.param == "model"
    with pytest.raises(openai.NotFoundError):
        oai.embeddings.create(model="text-embedding-3-small", input="x")
    with pytest.raises(openai.BadRequestError):
        oai.embeddings.create(model="small", input=[[1, 2, 3]])
    assert len(stack.small) + len(stack.big) == n


# ---------------------------------------------------------------------------------------------------
# chat: tool calling and stream_options.include_usage through the router
# ---------------------------------------------------------------------------------------------------
def test_chat_tool_calls_and_include_usage_reach_the_client(stack, oai):
    r = oai.chat.completions.create(model="kronaxis/auto", messages=user("look up tide"), tools=[TOOL])
    assert r.choices[0].finish_reason == "tool_calls" and r.choices[0].message.content is None
    [call] = r.choices[0].message.tool_calls
    assert call.function.name == "lookup" and json.loads(call.function.arguments) == {"query": "look up tide"}
    assert stack.small[-1]["body"]["tools"] == [TOOL]

    chunks = list(oai.chat.completions.create(model="kronaxis/auto", messages=user(HARD), tools=[TOOL], stream=True))
    streamed = [tc for ch in chunks if ch.choices for tc in (ch.choices[0].delta.tool_calls or [])]
    assert [tc.function.name for tc in streamed] == ["lookup"]
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == "tool_calls"

    chunks = list(oai.chat.completions.create(model="kronaxis/auto", messages=user(EASY), stream=True,
                                              stream_options={"include_usage": True}))
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == "echo: " + EASY
    assert not chunks[-1].choices and chunks[-1].usage.prompt_tokens == len(EASY.split())
    assert stack.small[-1]["body"]["stream_options"] == {"include_usage": True}


# ---------------------------------------------------------------------------------------------------
# governance on every endpoint
# ---------------------------------------------------------------------------------------------------
def test_a_card_number_never_reaches_the_disallowed_upstream(stack, oai):
    # completions: in the prompt (forced to big, and hard), and in another string field (suffix)
    for prompt, extra in ((f"charge card {CARD}", {}), (f"hard: charge card {CARD}", {}), (HARD, {"suffix": CARD})):
        raw = oai.completions.with_raw_response.create(model="big", prompt=prompt, **extra)
        assert raw.headers["x-kronaxis-model"] == "small"
        assert "governance: big may not receive" in raw.headers["x-kronaxis-reasons"]
    raw = oai.completions.with_raw_response.create(model="kronaxis/auto", prompt=f"hard: {CARD}", stream=True)
    assert raw.headers["x-kronaxis-model"] == "small"
    assert "".join(ch.choices[0].text for ch in raw.parse() if ch.choices) == f"echo: hard: {CARD}"
    # responses: in the input, in the instructions, in a tool description
    for kw in ({"input": f"hard: pay with {CARD}"}, {"input": HARD, "instructions": f"card on file: {CARD}"},
               {"input": HARD, "tools": [{"type": "function", "name": "pay", "description": f"uses card {CARD}"}]}):
        raw = oai.responses.with_raw_response.create(model="big", **kw)
        assert raw.headers["x-kronaxis-model"] == "small", kw
    # embeddings: never rerouted, refused
    with pytest.raises(openai.PermissionDeniedError) as e:
        oai.embeddings.create(model="big", input=["fine", f"card {CARD}"])
    assert e.value.code == "data_class_not_allowed" and CARD not in str(e.value)
    assert len(oai.embeddings.create(model="small", input=f"card {CARD}").data) == 1

    assert not any("4111" in json.dumps(x["body"]) for x in stack.big), "a card number reached the big upstream"
    assert sum("4111" in json.dumps(x["body"]) for x in stack.small) == 8
    # benign requests still reach big
    assert oai.completions.with_raw_response.create(model="big", prompt=EASY).headers["x-kronaxis-model"] == "big"
    assert oai.embeddings.with_raw_response.create(model="big", input=EASY).headers["x-kronaxis-model"] == "big"


def test_refused_when_no_allowed_upstream_is_left():
    big_app, big_log = recording_upstream("served-big")
    with ServerThread(big_app) as b, \
            ServerThread(secured_router(urls={"big": b.url}, governance=gov_config({"small": "*", "big": []}))) as r:
        oai = sdk(r.url)
        calls = [lambda: oai.completions.create(model="kronaxis/auto", prompt=f"card {CARD}"),
                 lambda: oai.completions.create(model="kronaxis/auto", prompt=f"card {CARD}", stream=True),
                 lambda: oai.responses.create(model="kronaxis/auto", input=[{"role": "user", "content": CARD}]),
                 lambda: oai.embeddings.create(model="big", input=CARD)]
        for call in calls:
            with pytest.raises(openai.PermissionDeniedError) as e:
                call()
            assert e.value.code == "data_class_not_allowed"
        assert big_log == []


def test_every_new_endpoint_needs_the_router_key(stack):
    wrong = sdk(stack.url, key="kx-wrong-key-0123456789abcdefgh")
    calls = [lambda: wrong.models.retrieve("kronaxis/auto"),
             lambda: wrong.completions.create(model="kronaxis/auto", prompt=EASY),
             lambda: wrong.responses.create(model="kronaxis/auto", input=EASY),
             lambda: wrong.embeddings.create(model="small", input=EASY)]
    n = len(stack.small) + len(stack.big)
    for call in calls:
        with pytest.raises(openai.AuthenticationError):
            call()
    assert len(stack.small) + len(stack.big) == n
