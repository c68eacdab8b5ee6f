"""The OpenAI-compatible API (/openai/v1) driven by the official `openai` SDK, with the real
claude, codex and gemini CLIs behind the daemon, talking to the fake model server."""

from __future__ import annotations

import httpx
import openai
import pytest

from compat_world import BACKENDS, NO_EARLY_KEEPALIVE, Background, compat, fakecli  # noqa: F401  (fixture)
from conftest import http_json


def content_chunks(chunks):
    return [c.choices[0].delta.content for c in chunks
            if c.choices and c.choices[0].delta.content]


# --- models --------------------------------------------------------------------------------

def test_models_list_and_retrieve(compat):
    d = compat(config="models:\n  fast: claude/haiku\n  cx: codex\n")
    client = d.openai()
    ids = [m.id for m in client.models.list()]
    for want in ("claude", "codex", "gemini", "fast", "cx"):
        assert want in ids, ids
    assert client.models.retrieve("fast").owned_by == "claude"
    assert client.models.retrieve("claude/sonnet").id == "claude/sonnet"
    assert client.models.retrieve("gpt-5").owned_by == "codex"
    with pytest.raises(openai.NotFoundError) as e:
        client.models.retrieve("no-such-model")
    assert e.value.code == "model_not_found"


# --- one call per backend and mode ---------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_chat_non_streaming(compat, backend):
    d = compat()
    r = d.openai().chat.completions.create(
        model=backend, messages=[{"role": "user", "content": "hello there"}])
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-")
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content.strip() == "fake-reply turns=1 last=hello there"
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.completion_tokens > 0 and r.usage.prompt_tokens > 0
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    # a bare backend name runs the backend's default model: never `--model <backend>`
    call = d.model_calls()[-1]
    assert call["model"] != backend
    # the session is marked as made by this API
    sessions = d.sessions()
    assert [s["source"] for s in sessions] == ["openai"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_chat_streaming(compat, backend):
    d = compat()
    stream = d.openai().chat.completions.create(
        model=backend, stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "count the words here [[slow:250]]"}])
    chunks = []
    runs_at_first_content = None
    for c in stream:
        chunks.append(c)
        if runs_at_first_content is None and c.choices and c.choices[0].delta.content:
            runs_at_first_content = d.runs()
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(content_chunks(chunks))
    assert text.strip() == "fake-reply turns=1 last=count the words here [[slow:250]]"
    pieces = content_chunks(chunks)
    if backend != "codex":  # codex prints whole messages, not token deltas
        assert len(pieces) > 1, pieces
    assert len(chunks) >= 4  # role, content…, finish, usage
    finish = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert [c.choices[0].finish_reason for c in finish] == ["stop"]
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage.completion_tokens > 0
    if backend != "codex":
        # the first text arrived while the CLI was still running
        assert runs_at_first_content, "no run listed when the first content chunk arrived"
    d.wait_no_runs()


def test_stream_wire_format(compat):
    d = compat()
    with httpx.stream("POST", d.openai_base + "/chat/completions", timeout=60, json={
        "model": "claude", "stream": True,
        "messages": [{"role": "user", "content": "hi"}],
    }) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers.get("x-clinvk-session")
        raw = r.read().decode()
    frames = raw.split("\n\n")
    assert frames[-1] == "" and frames[-2] == "data: [DONE]"
    assert all(f.startswith("data: ") for f in frames[:-1]), raw


# --- errors --------------------------------------------------------------------------------

def test_400_and_404(compat):
    d = compat()
    client = d.openai()
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="claude", messages=[{"role": "user", "content": [
            {"type": "text", "text": "what is this?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}])
    assert "image_url" in e.value.message
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="claude", messages=[])
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="claude", n=2,
                                       messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="llama-3", messages=[{"role": "user", "content": "hi"}])
    assert e.value.code == "model_not_found"
    assert e.value.body["type"] == "not_found_error"
    status, body = http_json("POST", d.openai_base + "/chat/completions", {"messages": []})
    assert status == 400 and body["error"]["type"] == "invalid_request_error"
    assert d.model_calls() == [], "nothing ran"


@pytest.mark.parametrize("backend", BACKENDS)
def test_502_cli_failed(compat, backend):
    d = compat(config=NO_EARLY_KEEPALIVE)  # the stream's 502 must not depend on the CLI's speed
    client = d.openai()
    with pytest.raises(openai.InternalServerError) as e:
        client.chat.completions.create(model=backend,
                                       messages=[{"role": "user", "content": "boom [[error]]"}])
    assert e.value.status_code == 502
    assert e.value.body["type"] == "api_error"
    with pytest.raises(openai.InternalServerError) as e:
        for _ in client.chat.completions.create(
                model=backend, stream=True,
                messages=[{"role": "user", "content": "boom [[error]]"}]):
            pass
    assert e.value.status_code == 502


def test_503_at_capacity_and_504_timeout(compat):
    d = compat(config="limits:\n  max_concurrent: 1\n  queue_size: 0\n  kill_grace_secs: 1\n"
                      "backends:\n  claude:\n    timeout_secs: 3\n")
    client = d.openai()

    def hang():
        return client.chat.completions.create(
            model="claude", messages=[{"role": "user", "content": "wait [[hang]]"}])

    bg = Background(hang)
    from harness import poll
    poll(lambda: d.runs(), 20, "the hanging run to be listed")
    with pytest.raises(openai.InternalServerError) as e:
        client.chat.completions.create(model="claude",
                                       messages=[{"role": "user", "content": "second"}])
    assert e.value.status_code == 503
    assert e.value.code == "at_capacity"
    with pytest.raises(openai.InternalServerError) as e:
        bg.result(timeout=30)
    assert e.value.status_code == 504
    assert e.value.body["type"] == "timeout_error"


def test_midstream_failure_raises_in_the_iterator(compat):
    d = compat(config=f"backends:\n  claude:\n    command: {fakecli('crash-midstream')}\n    mode: oneshot\n")
    client = d.openai()
    got = []
    with pytest.raises(openai.APIError) as e:
        for c in client.chat.completions.create(
                model="claude", stream=True, messages=[{"role": "user", "content": "hi"}]):
            got.extend(content_chunks([c]))
    assert "".join(got).startswith("partial"), got
    assert not isinstance(e.value, openai.APIConnectionError)


# --- fields the SDKs send -------------------------------------------------------------------

def test_fields_are_honoured_named_as_ignored_or_refused(compat):
    """No field is dropped silently: what the CLIs cannot enforce and no client relies on is
    accepted and named in X-Clinvk-Ignored-Params; what a client would rely on is a 400 naming
    it (the SDK raises); the rest is honoured."""
    d = compat()
    client = d.openai()
    ignorable = dict(
        model="claude", tool_choice="none", parallel_tool_calls=True,
        response_format={"type": "text"}, seed=7, logit_bias={"50256": -100},
        n=1, metadata={"k": "v"}, temperature=0.2, top_p=0.9, max_tokens=100,
        max_completion_tokens=100, presence_penalty=0.0, frequency_penalty=0.0,
        user="u1", store=False, logprobs=False, service_tier="auto",
        extra_body={"unknown_vendor_field": {"x": 1}},
    )
    raw = client.chat.completions.with_raw_response.create(
        messages=[{"role": "developer", "content": "be brief"},
                  {"role": "user", "content": [{"type": "text", "text": "part one"},
                                               {"type": "text", "text": "part two"}]}],
        **ignorable)
    r = raw.parse()
    assert r.choices[0].message.content.startswith("fake-reply turns=1 last=part one")
    named = {p.strip() for p in raw.headers["x-clinvk-ignored-params"].split(",")}
    for field in ("temperature", "top_p", "seed", "max_tokens", "max_completion_tokens",
                  "logit_bias", "metadata", "user", "store", "service_tier",
                  "parallel_tool_calls", "presence_penalty", "frequency_penalty",
                  "unknown_vendor_field"):
        assert field in named, (field, named)
    # Honoured fields are not named.
    for field in ("model", "messages", "n", "logprobs", "response_format", "tool_choice"):
        assert field not in named, (field, named)
    chunks = list(client.chat.completions.create(
        messages=[{"role": "system", "content": "be brief"},
                  {"role": "user", "content": "streamed"}],
        stream=True, stream_options={"include_usage": True}, **ignorable))
    assert "".join(content_chunks(chunks)).strip() == "fake-reply turns=1 last=streamed"

    # Function tools work (tests/test_tools.py); other tool types and a choice of a tool that
    # is not offered are refused.
    refused = [
        ("tools[0].type", dict(tools=[{"type": "custom", "custom": {"name": "x"}}])),
        ("tool_choice", dict(tool_choice={"type": "function", "function": {"name": "x"}})),
        ("stop", dict(stop=["a", "b", "c", "d", "e"])),
        ("stop", dict(stop=[""])),
        ("logprobs", dict(logprobs=True)),
        ("n", dict(n=2)),
        ("response_format", dict(response_format={"type": "xml"})),
        ("modalities", dict(modalities=["text", "audio"])),
    ]
    before = len(d.model_calls())
    for param, extra in refused:
        for stream in (False, True):
            with pytest.raises(openai.BadRequestError) as e:
                client.chat.completions.create(
                    model="claude", messages=[{"role": "user", "content": "hi"}], stream=stream,
                    **extra)
            err = e.value.body
            assert err["param"] == param and err["type"] == "invalid_request_error", err
    # Nothing ran for a refused request.
    assert len(d.model_calls()) == before


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_stop_ends_the_answer_before_the_sequence(compat, stream):
    d = compat()
    client = d.openai()
    kw = dict(model="claude", messages=[{"role": "user", "content": "hello there"}],
              stop=["s=1 la", "NEVER-SEEN"])
    if stream:
        chunks = list(client.chat.completions.create(stream=True, **kw))
        text = "".join(content_chunks(chunks))
        finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        assert finish == ["stop"], finish
    else:
        r = client.chat.completions.create(**kw)
        assert r.choices[0].finish_reason == "stop"
        text = r.choices[0].message.content
    assert text.strip() == "fake-reply turn", text
    d.wait_no_runs()


# --- continuity ------------------------------------------------------------------------------

def _turn(client, model, history, text, **kw):
    history.append({"role": "user", "content": text})
    raw = client.chat.completions.with_raw_response.create(model=model, messages=history, **kw)
    r = raw.parse()
    reply = r.choices[0].message.content
    history.append({"role": "assistant", "content": reply})
    return reply, raw.headers.get("x-clinvk-session")


@pytest.mark.parametrize("backend", BACKENDS)
def test_three_turn_conversation_resumes_the_backend_session(compat, backend):
    d = compat()
    client = d.openai()
    history = [{"role": "system", "content": "You are terse."}]
    r1, s1 = _turn(client, backend, history, "first question")
    # (gemini has no system-prompt flag: its adapter puts the system prompt into the first turn)
    assert r1.startswith("fake-reply turns=1 last=")
    r2, s2 = _turn(client, backend, history, "second question")
    r3, s3 = _turn(client, backend, history, "third question")
    assert r2.strip() == "fake-reply turns=2 last=second question"
    assert r3.strip() == "fake-reply turns=3 last=third question"
    assert s1 == s2 == s3
    calls = d.model_calls()
    last = calls[-1]
    assert last["turns"] == 3
    # the CLI got only the new turn: the model sees three separate user turns, the last of
    # which is exactly the new text (no pasted transcript)
    assert last["user_texts"][-1] == "third question"
    assert not any("first question" in t for t in last["user_texts"][1:])
    sessions = d.sessions()
    assert len(sessions) == 1 and sessions[0]["turn_count"] == 3


def test_interleaved_conversations_stay_separate(compat):
    d = compat()
    client = d.openai()
    a, b = [], []
    ra1, sa = _turn(client, "claude", a, "alpha one")
    rb1, sb = _turn(client, "claude", b, "beta one")
    ra2, sa2 = _turn(client, "claude", a, "alpha two")
    rb2, sb2 = _turn(client, "claude", b, "beta two")
    ra3, sa3 = _turn(client, "claude", a, "alpha three")
    assert sa != sb and sa == sa2 == sa3 and sb == sb2
    assert ra2.strip() == "fake-reply turns=2 last=alpha two"
    assert rb2.strip() == "fake-reply turns=2 last=beta two"
    assert ra3.strip() == "fake-reply turns=3 last=alpha three"
    calls = d.model_calls()
    assert calls[-1]["user_texts"] == ["alpha one", "alpha two", "alpha three"]
    # the same first message in a new conversation with a different reply history starts fresh
    c = [{"role": "user", "content": "alpha one"}, {"role": "assistant", "content": "something else"}]
    rc, sc = _turn(client, "claude", c, "alpha two")
    assert sc not in (sa, sb)
    assert d.model_calls()[-1]["turns"] == 1  # pasted transcript in a fresh session


def test_explicit_session_header(compat):
    d = compat()
    client = d.openai()
    h = []
    _, sid = _turn(client, "claude", h, "remember me")
    r = client.chat.completions.create(
        model="claude", messages=[{"role": "user", "content": "again"}],
        extra_headers={"X-Clinvk-Session": sid})
    assert r.choices[0].message.content.strip() == "fake-reply turns=2 last=again"


# What each CLI sends its model for a reasoning effort (measured with the pinned versions).
EFFORT_IN_MODEL_REQUEST = {
    "claude": lambda body: (body.get("output_config") or {}).get("effort"),
    "codex": lambda body: (body.get("reasoning") or {}).get("effort"),
    # copilot with a claude model: a thinking budget per level (default 2048, medium)
    "copilot": lambda body: {1024: "low", 2048: "medium", 4096: "high"}.get(
        (body.get("thinking") or {}).get("budget_tokens")),
}


@pytest.mark.parametrize("backend", BACKENDS)
def test_reasoning_effort_reaches_the_cli_or_is_named_ignored(compat, backend):
    """`reasoning_effort` (chat) and `reasoning.effort` (Responses) go to the CLI's own effort
    setting, which its model request then carries; a CLI without one answers as usual and the
    header names the field."""
    d = compat()
    client = d.openai()
    raw = client.chat.completions.with_raw_response.create(
        model=backend, reasoning_effort="high",
        messages=[{"role": "user", "content": "think hard"}])
    r = raw.parse()
    assert "fake-reply" in r.choices[0].message.content
    ignored = raw.headers.get("x-clinvk-ignored-params", "")
    body = d.model_calls()[-1]["body"]
    if backend in EFFORT_IN_MODEL_REQUEST:
        seen = EFFORT_IN_MODEL_REQUEST[backend]
        assert seen(body) == "high", {k: body.get(k) for k in ("output_config", "reasoning", "thinking")}
        assert "reasoning_effort" not in ignored
        raw = client.responses.with_raw_response.create(
            model=backend, input="think less", reasoning={"effort": "low", "summary": "auto"})
        assert "fake-reply" in raw.parse().output_text
        low = d.model_calls()[-1]["body"]
        assert seen(low) == "low", {k: low.get(k) for k in ("output_config", "reasoning", "thinking")}
        assert raw.headers.get("x-clinvk-ignored-params") is None  # summary: see test_reasoning
    else:
        assert "reasoning_effort" in ignored.split(", "), ignored
    # An unknown level is the client's mistake: 400 naming the field, nothing runs.
    before = len(d.model_calls())
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=backend, reasoning_effort="extreme",
                                       messages=[{"role": "user", "content": "x"}])
    assert "reasoning_effort" in str(e.value)
    assert len(d.model_calls()) == before
