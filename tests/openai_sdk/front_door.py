#!/usr/bin/env python3
"""The official `openai` Python SDK against the gateway's OpenAI-compatible front door.

Usage: front_door.py BASE_URL API_KEY     e.g. front_door.py http://127.0.0.1:8054/v1 none
API_KEY `none` means the server needs no key (a dummy one is sent, and the wrong-key check
is skipped). Prints one line per check; exits 1 (failures on stderr) if any check failed.
Needs only python3 and `python3 -m pip install openai`.
"""
import json
import sys
import traceback

import openai

BASE_URL, KEY = sys.argv[1], sys.argv[2]
client = openai.OpenAI(base_url=BASE_URL, api_key="sk-none" if KEY == "none" else KEY,
                       max_retries=0, timeout=20)

HELLO = [{"role": "user", "content": "hello board"}]
TOOLS = [{"type": "function", "function": {
    "name": "lookup_metric", "description": "Looks up a metric",
    "parameters": {"type": "object", "properties": {"name": {"type": "string"}},
                   "required": ["name"]}}}]
USE_TOOL = [{"role": "user", "content": "use tool lookup_metric runway"}]
failures = []


def check(name):
    """Runs the decorated function as one check, recording (not raising) its failure."""
    def run(fn):
        try:
            fn()
            print(f"ok   {name}")
        except Exception as e:  # an assertion or any SDK error fails this check only
            print(f"FAIL {name}: {e!r}")
            # A traceback only for what is neither a failed expectation nor an API error.
            plain = isinstance(e, (AssertionError, openai.APIError))
            failures.append(f"{name}: {e!r}" + ("" if plain else "\n" + traceback.format_exc()))
    return run


def expect(cond, what):
    if not cond:
        raise AssertionError(what)


def expect_error(kind, status, mentions, **kwargs):
    try:
        client.chat.completions.create(**kwargs)
    except kind as e:
        expect(e.status_code == status, f"status {e.status_code}, wanted {status}")
        expect(isinstance(e.body, dict), f"error body is not an object: {e.body!r}")
        message = str(e.body.get("message", ""))
        expect(mentions in message, f"message {message!r} does not mention {mentions!r}")
        return
    raise AssertionError(f"no {kind.__name__} for {kwargs}")


@check("models.list includes mock")
def _():
    ids = [m.id for m in client.models.list()]
    expect("mock" in ids, f"model ids {ids}")


@check("unary chat completion")
def _():
    r = client.chat.completions.create(model="mock", messages=HELLO, temperature=0.5)
    expect(len(r.choices) == 1, f"{len(r.choices)} choices")
    c = r.choices[0]
    expect(c.message.role == "assistant", f"role {c.message.role!r}")
    expect(c.message.content, "empty content")
    expect(c.finish_reason in ("stop", "length"), f"finish_reason {c.finish_reason!r}")
    u = r.usage
    expect(u.prompt_tokens > 0 and u.completion_tokens > 0, f"usage {u}")
    expect(u.total_tokens == u.prompt_tokens + u.completion_tokens, f"usage total {u}")
    expect(r.model, "empty model")


@check("streamed chat completion with usage")
def _():
    chunks = list(client.chat.completions.create(
        model="mock", messages=HELLO, temperature=0.5, stream=True,
        stream_options={"include_usage": True}))
    expect(chunks, "no chunks")
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    expect(text, "empty streamed text")
    finished = [ch.choices[0].finish_reason for ch in chunks
                if ch.choices and ch.choices[0].finish_reason]
    expect(len(finished) == 1, f"finish_reasons {finished}")
    last = chunks[-1]
    expect(last.usage and last.usage.completion_tokens > 0, f"last chunk usage {last.usage}")
    expect(last.choices == [], f"last chunk choices {last.choices}")
    ids = {ch.id for ch in chunks}
    expect(len(ids) == 1, f"chunk ids {ids}")


def expect_lookup_call(finish_reason, calls):
    expect(finish_reason == "tool_calls", f"finish_reason {finish_reason!r}")
    expect(len(calls) == 1, f"{len(calls)} tool calls")
    call = calls[0]
    expect(call["name"] == "lookup_metric", f"tool name {call['name']!r}")
    expect(json.loads(call["arguments"]) == {"name": "runway"}, f"arguments {call['arguments']!r}")
    expect(call["id"], "empty tool call id")
    expect(call["type"] == "function", f"type {call['type']!r}")


@check("tool call, unary, and its follow-up")
def _():
    r = client.chat.completions.create(model="mock", messages=USE_TOOL, tools=TOOLS)
    c = r.choices[0]
    calls = [{"id": t.id, "type": t.type, "name": t.function.name,
              "arguments": t.function.arguments} for t in c.message.tool_calls or []]
    expect_lookup_call(c.finish_reason, calls)
    call = c.message.tool_calls[0]
    follow = client.chat.completions.create(model="mock", tools=TOOLS, messages=USE_TOOL + [
        {"role": "assistant", "content": None, "tool_calls": [{
            "id": call.id, "type": "function",
            "function": {"name": call.function.name, "arguments": call.function.arguments}}]},
        {"role": "tool", "tool_call_id": call.id, "content": "14 months"}])
    f = follow.choices[0]
    expect(f.finish_reason in ("stop", "length"), f"follow-up finish_reason {f.finish_reason!r}")
    expect(f.message.content, "follow-up has no text")


@check("tool call, streamed")
def _():
    calls, finish = {}, []
    for ch in client.chat.completions.create(model="mock", messages=USE_TOOL, tools=TOOLS,
                                             stream=True):
        if not ch.choices:
            continue
        choice = ch.choices[0]
        if choice.finish_reason:
            finish.append(choice.finish_reason)
        for d in choice.delta.tool_calls or []:
            call = calls.setdefault(d.index, {"id": "", "type": "", "name": "", "arguments": ""})
            call["id"] = d.id or call["id"]
            call["type"] = d.type or call["type"]
            if d.function:
                call["name"] += d.function.name or ""
                call["arguments"] += d.function.arguments or ""
    expect(len(finish) == 1, f"finish_reasons {finish}")
    expect_lookup_call(finish[0], [calls[i] for i in sorted(calls)])


@check("errors: unknown model 404, bad temperature 400, no messages 400")
def _():
    expect_error(openai.NotFoundError, 404, "no-such-model", model="no-such-model", messages=HELLO)
    expect_error(openai.BadRequestError, 400, "temperature", model="mock", messages=HELLO,
                 temperature=5)
    expect_error(openai.BadRequestError, 400, "messages", model="mock", messages=[])


if KEY != "none":
    @check("errors: wrong key 401")
    def _():
        wrong = openai.OpenAI(base_url=BASE_URL, api_key=KEY + "-wrong", max_retries=0, timeout=20)
        try:
            wrong.chat.completions.create(model="mock", messages=HELLO)
        except openai.AuthenticationError as e:
            expect(e.status_code == 401, f"status {e.status_code}")
            return
        raise AssertionError("a wrong key was accepted")


def expect_embeddings(r):
    expect([d.index for d in r.data] == [0, 1], f"indexes {[d.index for d in r.data]}")
    for d in r.data:
        expect(isinstance(d.embedding, list) and d.embedding, f"embedding {d.embedding!r:.80}")
        expect(all(isinstance(x, float) for x in d.embedding), "embedding holds non-floats")
    expect(r.usage.prompt_tokens > 0, f"usage {r.usage}")


@check("embeddings, SDK default (sends encoding_format=base64, decodes f32)")
def _():
    raw = client.embeddings.with_raw_response.create(model="mock", input=["a b", "c d e"])
    wire = [d["embedding"] for d in json.loads(raw.text)["data"]]
    expect(all(isinstance(e, str) for e in wire), f"base64 was asked, got {str(wire):.80}")
    expect_embeddings(raw.parse())


@check("embeddings, encoding_format=float; same vectors as the default")
def _():
    floats = client.embeddings.create(model="mock", input=["a b", "c d e"], encoding_format="float")
    expect_embeddings(floats)
    default = client.embeddings.create(model="mock", input=["a b", "c d e"])
    for f, d in zip(floats.data, default.data):
        expect(len(f.embedding) == len(d.embedding), "base64 and float lengths differ")
        expect(all(abs(a - b) <= 1e-6 * max(1.0, abs(a)) for a, b in zip(f.embedding, d.embedding)),
               "base64 and float vectors differ")


if failures:
    print(f"\n{len(failures)} check(s) failed:", file=sys.stderr)
    for failure in failures:
        print(failure, file=sys.stderr)
    sys.exit(1)
print("all checks passed")
