"""Streams that survive proxies: while the CLI is silent, SSE streams send keep-alives (an SSE
comment for OpenAI chat and Responses, a `ping` event for Anthropic) and the native NDJSON stream
a `heartbeat` line, every `server.sse_keepalive_secs`; the SDKs read such streams unchanged.
Nothing here depends on timing: the silent CLI never answers, and the test only waits (with a
generous limit) for the keep-alives to come."""

from __future__ import annotations

import json

import httpx
import pytest

from compat_world import compat, fakecli  # noqa: F401  (fixture)

# A silent CLI (`hang`: announces its session, then prints nothing, ever).
SILENT = "server:\n  sse_keepalive_secs: 1\nbackends:\n  claude:\n    command: {cli}\n    mode: oneshot\n"


def read_until(stream, want, limit: int = 4000):
    """Reads lines of a streamed answer until `want(lines)` holds (or the stream ends)."""
    lines = []
    for line in stream.iter_lines():
        lines.append(line)
        if want(lines) or len(lines) > limit:
            break
    return lines


@pytest.mark.parametrize("path,body,keepalive", [
    ("/openai/v1/chat/completions",
     {"model": "claude", "stream": True, "messages": [{"role": "user", "content": "hi"}]},
     ": keep-alive"),
    ("/openai/v1/responses", {"model": "claude", "stream": True, "input": "hi"}, ": keep-alive"),
    ("/anthropic/v1/messages",
     {"model": "claude", "stream": True, "max_tokens": 10,
      "messages": [{"role": "user", "content": "hi"}]},
     "event: ping"),
])
def test_sse_streams_keep_alive_while_the_cli_is_silent(compat, path, body, keepalive):
    d = compat(config=SILENT.format(cli=fakecli("hang")))
    with httpx.stream("POST", d.url + path, json=body, timeout=60) as r:
        # A silent start decides the status early so that keep-alives can flow.
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        lines = read_until(r, lambda ls: sum(l.startswith(keepalive) for l in ls) >= 2)
    assert sum(l.startswith(keepalive) for l in lines) >= 2, lines
    # Leaving the stream cancels the silent CLI.
    d.wait_no_runs()


def test_ndjson_stream_sends_heartbeat_lines(compat):
    d = compat(config=SILENT.format(cli=fakecli("hang")))
    body = {"backend": "claude", "prompt": "hi", "output_format": "stream-json"}
    with httpx.stream("POST", d.url + "/api/v1/prompt", json=body, timeout=60) as r:
        assert r.status_code == 200
        lines = read_until(r, lambda ls: sum('"heartbeat"' in l for l in ls) >= 2)
    events = [json.loads(l) for l in lines if l.strip()]
    beats = [e for e in events if e["type"] == "heartbeat"]
    assert len(beats) >= 2, events
    assert all(set(b) == {"type", "backend", "session_id", "timestamp", "sequence"} for b in beats)
    assert [e["sequence"] for e in events] == list(range(len(events)))
    d.wait_no_runs()


def test_sdks_read_a_stream_with_keep_alives(compat):
    """A CLI that is silent for a while, then answers: the streamed answer is whole, whatever
    keep-alives came before or between the pieces."""
    d = compat(config="server:\n  sse_keepalive_secs: 1\nbackends:\n  claude:\n"
                      f"    command: {fakecli('slow-ok')}\n    mode: oneshot\n"
                      "    env:\n      FAKECLI_START_DELAY_MS: '1500'\n      FAKECLI_DELAY_MS: '600'\n")
    chunks = list(d.openai().chat.completions.create(
        model="claude", stream=True, messages=[{"role": "user", "content": "keep me alive"}]))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip() == "fakecli reply to: keep me alive", text
    with d.anthropic().messages.stream(model="claude", max_tokens=10,
                                       messages=[{"role": "user", "content": "again"}]) as s:
        assert s.get_final_text().strip() == "fakecli reply to: again"
    events = list(d.openai().responses.create(model="claude", input="third", stream=True))
    assert events[-1].type == "response.completed"
    assert events[-1].response.output_text.strip() == "fakecli reply to: third"
