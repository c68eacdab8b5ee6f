"""The Anthropic-compatible API (/anthropic/v1) driven by the official `anthropic` SDK, with the
real claude, codex and gemini CLIs behind the daemon, talking to the fake model server."""

from __future__ import annotations

import anthropic
import httpx
import pytest

from compat_world import BACKENDS, NO_EARLY_KEEPALIVE, Background, compat, fakecli  # noqa: F401  (fixture)
from harness import poll


def msg(text):
    return [{"role": "user", "content": text}]


@pytest.mark.parametrize("backend", BACKENDS)
def test_messages_non_streaming(compat, backend):
    d = compat()
    r = d.anthropic().messages.create(model=backend, max_tokens=256, messages=msg("hello there"))
    assert r.type == "message" and r.role == "assistant" and r.id.startswith("msg_")
    assert r.content[0].type == "text"
    assert r.content[0].text.strip() == "fake-reply turns=1 last=hello there"
    assert r.stop_reason == "end_turn"
    assert r.usage.input_tokens > 0 and r.usage.output_tokens > 0
    assert [s["source"] for s in d.sessions()] == ["anthropic"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_messages_streaming(compat, backend):
    d = compat()
    client = d.anthropic()
    texts, types = [], []
    runs_at_first_text = None
    with client.messages.stream(model=backend, max_tokens=256,
                                messages=msg("stream these words [[slow:250]]")) as stream:
        for ev in stream:
            types.append(ev.type)
            if ev.type == "content_block_delta":
                texts.append(ev.delta.text)
                if runs_at_first_text is None:
                    runs_at_first_text = d.runs()
        final = stream.get_final_message()
    assert "".join(texts).strip() == "fake-reply turns=1 last=stream these words [[slow:250]]"
    assert final.content[0].text == "".join(texts)
    assert final.usage.output_tokens > 0
    assert types[0] == "message_start" and types[1] == "content_block_start"
    assert types[-2:] == ["message_delta", "message_stop"] or types[-1] == "message_stop"
    if backend != "codex":  # codex prints whole messages, not token deltas
        assert len(texts) > 1, texts
        assert runs_at_first_text, "no run listed when the first text arrived"
    d.wait_no_runs()


def test_stream_wire_format(compat):
    d = compat()
    with httpx.stream("POST", d.anthropic_base + "/v1/messages", timeout=60, json={
        "model": "claude-sonnet-4-5", "max_tokens": 100, "stream": True, "messages": msg("hi"),
    }) as r:
        assert r.status_code == 200
        raw = r.read().decode()
    events = [f.split("\n")[0].removeprefix("event: ") for f in raw.split("\n\n") if f]
    assert events[:3] == ["message_start", "content_block_start", "ping"]
    assert set(events[3:-3]) == {"content_block_delta"}
    assert events[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    # a claude-* name is passed on to claude as its model
    assert d.model_calls()[-1]["model"] == "claude-sonnet-4-5"


def test_system_prompt_and_blocks(compat):
    d = compat()
    raw = d.anthropic().messages.with_raw_response.create(
        model="claude", max_tokens=50,
        system=[{"type": "text", "text": "SYSMARK be terse"}],
        messages=[{"role": "user", "content": [{"type": "text", "text": "block one"},
                                               {"type": "text", "text": "block two"}]}],
        metadata={"user_id": "u"}, tool_choice={"type": "auto"},
        # fields this SDK version no longer exposes, and an unknown one
        extra_body={"temperature": 0.1, "top_k": 5, "top_p": 0.9, "unknown_field": True})
    r = raw.parse()
    assert r.content[0].text.strip() == "fake-reply turns=1 last=block one block two sys=SYSMARK be terse"
    named = {p.strip() for p in raw.headers["x-clinvk-ignored-params"].split(",")}
    assert named >= {"max_tokens", "metadata", "temperature", "top_k", "top_p", "unknown_field"}, named
    assert not named & {"model", "messages", "system", "tool_choice"}, named


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_stop_sequences_end_the_answer(compat, backend, stream):
    """`stop_sequences` is honoured: the answer ends before the first sequence met (across the
    CLI's pieces), `stop_reason: stop_sequence` names it, and the conversation goes on from what
    the client saw."""
    d = compat()
    client = d.anthropic()
    kw = dict(model=backend, max_tokens=256, messages=msg("hello there"),
              stop_sequences=["NEVER-SEEN", "s=1 la"])
    if stream:
        with client.messages.stream(**kw) as s:
            final = s.get_final_message()
    else:
        final = client.messages.create(**kw)
    assert final.stop_reason == "stop_sequence" and final.stop_sequence == "s=1 la", final
    assert final.content[0].text.strip() == "fake-reply turn", final
    history = msg("hello there") + [{"role": "assistant", "content": final.content[0].text},
                                    {"role": "user", "content": "and on"}]
    again = client.messages.create(model=backend, max_tokens=256, messages=history)
    assert again.stop_reason == "end_turn"
    assert again.content[0].text.strip() == "fake-reply turns=2 last=and on"
    d.wait_no_runs()


def test_fields_a_client_relies_on_are_refused(compat):
    d = compat()
    client = d.anthropic()
    before = len(d.model_calls())
    # Server tools (run by Anthropic's servers) have no CLI equivalent; client tools work
    # (tests/test_tools.py).
    server_tools = [{"type": "web_search_20250305", "name": "web_search"}]
    for param, extra in [("web_search_20250305", dict(tools=server_tools)),
                         ("tool_choice", dict(tool_choice={"type": "any"})),
                         ("stop_sequences", dict(stop_sequences=[""]))]:
        for stream in (False, True):
            with pytest.raises(anthropic.BadRequestError) as e:
                client.messages.create(model="claude", max_tokens=10, messages=msg("hi"),
                                       stream=stream, **extra)
            err = e.value.body["error"]
            assert err["type"] == "invalid_request_error" and param in err["message"], err
    assert len(d.model_calls()) == before


def test_both_base_url_conventions_and_count_tokens(compat):
    """The seed's snippet uses base_url=".../anthropic/v1"; the SDK appends /v1/messages."""
    d = compat()
    for base in (d.url + "/anthropic", d.url + "/anthropic/v1"):
        client = anthropic.Anthropic(base_url=base, api_key="sk-unused", max_retries=0, timeout=120)
        r = client.messages.create(model="claude", max_tokens=20, messages=msg(f"via {base[-3:]}"))
        assert r.content[0].text.strip().startswith("fake-reply turns=1"), base
        short = client.messages.count_tokens(model="claude", messages=msg("hi"))
        long = client.messages.count_tokens(
            model="claude", system="a system prompt of some length",
            messages=msg("a much longer question " * 20))
        assert 0 < short.input_tokens < long.input_tokens, (short, long)
    raw = httpx.post(d.url + "/anthropic/v1/messages/count_tokens",
                     json={"model": "claude", "messages": msg("x" * 40)})
    assert raw.status_code == 200 and raw.json() == {"input_tokens": 10}
    assert raw.headers["x-clinvk-token-count-method"].startswith("estimate")
    with pytest.raises(anthropic.NotFoundError):
        client.messages.count_tokens(model="mistral-large", messages=msg("hi"))


def test_errors(compat):
    d = compat(config=NO_EARLY_KEEPALIVE)  # the stream's 502 must not depend on the CLI's speed
    client = d.anthropic()
    with pytest.raises(anthropic.BadRequestError) as e:
        client.messages.create(model="claude", max_tokens=0, messages=msg("hi"))
    assert e.value.body["error"]["type"] == "invalid_request_error"
    r = httpx.post(d.anthropic_base + "/v1/messages", json={"model": "claude", "messages": msg("hi")})
    assert r.status_code == 400 and "max_tokens" in r.json()["error"]["message"]
    with pytest.raises(anthropic.BadRequestError):
        client.messages.create(model="claude", max_tokens=10, messages=[{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}}]}])
    with pytest.raises(anthropic.NotFoundError) as e:
        client.messages.create(model="mistral-large", max_tokens=10, messages=msg("hi"))
    assert e.value.body["error"]["type"] == "not_found_error"
    with pytest.raises(anthropic.InternalServerError) as e:
        client.messages.create(model="claude", max_tokens=10, messages=msg("fail [[error]]"))
    assert e.value.status_code == 502 and e.value.body["error"]["type"] == "api_error"
    with pytest.raises(anthropic.InternalServerError) as e:
        with client.messages.stream(model="claude", max_tokens=10,
                                    messages=msg("fail [[error]]")) as s:
            s.get_final_message()
    assert e.value.status_code == 502


def test_503_and_504(compat):
    d = compat(config="limits:\n  max_concurrent: 1\n  queue_size: 0\n  kill_grace_secs: 1\n"
                      "backends:\n  codex:\n    timeout_secs: 3\n")
    client = d.anthropic()
    bg = Background(lambda: client.messages.create(model="codex", max_tokens=10,
                                                   messages=msg("wait [[hang]]")))
    poll(lambda: d.runs(), 20, "the hanging run to be listed")
    with pytest.raises(anthropic.InternalServerError) as e:
        client.messages.create(model="codex", max_tokens=10, messages=msg("second"))
    assert e.value.status_code == 503
    assert e.value.body["error"]["type"] == "overloaded_error"
    with pytest.raises(anthropic.InternalServerError) as e:
        bg.result(timeout=30)
    assert e.value.status_code == 504
    assert e.value.body["error"]["type"] == "timeout_error"


def test_midstream_failure(compat):
    d = compat(config=f"backends:\n  claude:\n    command: {fakecli('crash-midstream')}\n    mode: oneshot\n")
    got = []
    with pytest.raises(anthropic.APIStatusError) as e:
        with d.anthropic().messages.stream(model="claude", max_tokens=10, messages=msg("hi")) as s:
            for ev in s:
                if ev.type == "content_block_delta":
                    got.append(ev.delta.text)
    assert "".join(got).startswith("partial")
    assert e.value.body["error"]["type"] == "api_error"


def test_conversation_continuity(compat):
    d = compat()
    client = d.anthropic()
    history = []
    for i, word in enumerate(["one", "two", "three"], start=1):
        history.append({"role": "user", "content": f"turn {word}"})
        r = client.messages.create(model="claude", max_tokens=50, system="SYSMARK keep",
                                   messages=history)
        assert r.content[0].text.strip() == f"fake-reply turns={i} last=turn {word} sys=SYSMARK keep"
        history.append({"role": "assistant", "content": [{"type": "text", "text": r.content[0].text}]})
    assert d.model_calls()[-1]["user_texts"] == ["turn one", "turn two", "turn three"]
    assert len(d.sessions()) == 1
