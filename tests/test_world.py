"""Proves the test world: the fake model server, the real CLIs wired to it, the fake CLIs.

Every real-CLI test runs the pinned CLI directly (argv list, no shell) in a fresh
temporary HOME against a freshly started fake model server.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import time
import uuid

import pytest

from conftest import (FAKECLI_DIR, TESTED_VERSIONS, http_json,
                      run_cli, wait_for)

# --------------------------------------------------------------------------
# argv builders: the exact invocations documented in tests/fakemodel/README.md

STREAM = "stream"
JSON = "json"


def claude_argv(bin_dir, prompt, mode=STREAM, extra=()):
    fmt = (["--output-format", "stream-json", "--verbose", "--include-partial-messages"]
           if mode == STREAM else ["--output-format", "json"])
    return [bin_dir / "claude", "-p", *fmt, *extra, prompt]


def codex_argv(bin_dir, prompt, resume=None, extra=()):
    argv = [bin_dir / "codex", "exec", "--json", "--skip-git-repo-check", *extra]
    if resume:
        argv += ["resume", resume]
    return argv + [prompt]


def gemini_argv(bin_dir, prompt, mode=STREAM, extra=()):
    fmt = "stream-json" if mode == STREAM else "json"
    return [bin_dir / "gemini", "-p", prompt, "--output-format", fmt, *extra]


def expected_reply(turns, last, sys_prompt=None):
    text = f"fake-reply turns={turns} last={' '.join(last.split())[:60]}"
    if sys_prompt:
        text += " sys=" + sys_prompt.strip()[:30]
    return text


# output parsing, just enough to find the reply text and the session id

def claude_stream(res):
    lines = res.lines()
    deltas = [ln["event"]["delta"]["text"] for ln in lines
              if ln.get("type") == "stream_event"
              and ln["event"].get("type") == "content_block_delta"
              and ln["event"]["delta"].get("type") == "text_delta"]
    result = [ln for ln in lines if ln.get("type") == "result"]
    assert result, f"no result line\n{res}"
    return lines[0]["session_id"], deltas, result[-1]


def codex_stream(res):
    lines = res.lines()
    thread = [ln["thread_id"] for ln in lines if ln.get("type") == "thread.started"]
    texts = [ln["item"]["text"] for ln in lines if ln.get("type") == "item.completed"
             and ln["item"].get("type") == "agent_message"]
    assert thread, f"no thread.started\n{res}"
    return thread[0], texts, lines


def gemini_stream(res):
    lines = res.lines()
    init = [ln for ln in lines if ln.get("type") == "init"]
    deltas = [ln["content"] for ln in lines if ln.get("type") == "message"
              and ln.get("role") == "assistant"]
    result = [ln for ln in lines if ln.get("type") == "result"]
    assert init and result, f"no init/result line\n{res}"
    return init[0]["session_id"], deltas, result[-1]


# --------------------------------------------------------------------------
# the fake model server on its own (fast; no CLI involved)


def _sse_post(url, body, timeout=10.0):
    """POST and return (status, list of (event, data) pairs, elapsed per chunk)."""
    import http.client
    from urllib.parse import urlsplit
    u = urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    conn.request("POST", u.path + (("?" + u.query) if u.query else ""), json.dumps(body),
                 {"Content-Type": "application/json"})
    resp = conn.getresponse()
    events, times, start = [], [], time.monotonic()
    if resp.getheader("Content-Type", "").startswith("text/event-stream"):
        event = None
        while True:
            line = resp.readline()
            if not line:
                break
            line = line.decode().rstrip("\r\n")
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                events.append((event, json.loads(line[6:])))
                times.append(time.monotonic() - start)
                event = None
        body_out = None
    else:
        body_out = json.loads(resp.read())
    conn.close()
    return resp.status, events, times, body_out


def test_fake_anthropic_stream_and_turns(fake_model):
    body = {"model": "m", "stream": True, "max_tokens": 10,
            "system": [{"type": "text", "text": "builtin prompt"},
                       {"type": "text", "text": "SYSMARK keep it short please"}],
            "messages": [
                {"role": "user", "content": [
                    {"type": "text", "text": "<system-reminder>\nnoise\n</system-reminder>\n"},
                    {"type": "text", "text": "first question"}]},
                {"role": "assistant", "content": "an answer"},
                {"role": "user", "content": "  second\n  question  "}]}
    status, events, _, _ = _sse_post(fake_model.url + "/v1/messages?beta=true", body)
    assert status == 200
    names = [e for e, _ in events]
    assert names[0] == "message_start" and names[-1] == "message_stop"
    deltas = [d["delta"]["text"] for e, d in events if e == "content_block_delta"]
    assert len(deltas) > 3
    assert "".join(deltas) == "fake-reply turns=2 last=second question sys=SYSMARK keep it short please"
    (req,) = fake_model.requests()
    assert req["protocol"] == "anthropic" and req["turns"] == 2 and req["stream"] is True
    assert req["last_user"] == "second question" and req["system_has_marker"] is True

    # non-streaming, and the marker only counts in the system prompt
    body.update(stream=False, system="plain system", messages=[{"role": "user", "content": "SYSMARK hi"}])
    status, _, _, reply = _sse_post(fake_model.url + "/v1/messages", body)
    assert status == 200 and reply["content"][0]["text"] == "fake-reply turns=1 last=SYSMARK hi"


def test_fake_error_shapes(fake_model):
    url = fake_model.url
    s, _, _, b = _sse_post(url + "/v1/messages", {"model": "m", "stream": True, "messages": [
        {"role": "user", "content": "x [[error]]"}]})
    assert s == 400 and b["type"] == "error" and b["error"]["type"] == "invalid_request_error"
    s, _, _, b = _sse_post(url + "/v1/responses", {"model": "m", "stream": True, "input": [
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "[[error5xx]]"}]}]})
    assert s == 500 and b["error"]["type"] == "server_error"
    s, _, _, b = _sse_post(url + "/v1beta/models/g:streamGenerateContent?alt=sse", {"contents": [
        {"role": "user", "parts": [{"text": "[[error]] please"}]}]})
    assert s == 400 and b["error"]["status"] == "INVALID_ARGUMENT"
    fake_model.set_scenario("error")
    s, _, _, b = _sse_post(url + "/v1beta/models/g:generateContent", {"contents": [
        {"role": "user", "parts": [{"text": "plain"}]}]})
    assert s == 400
    fake_model.set_scenario("normal")
    s, _, _, b = _sse_post(url + "/v1beta/models/g:generateContent", {"contents": [
        {"role": "user", "parts": [{"text": "plain"}]}]})
    assert s == 200 and b["candidates"][0]["content"]["parts"][0]["text"] == "fake-reply turns=1 last=plain"
    assert [r["mode"] for r in fake_model.requests()] == ["error", "error5xx", "error", "error", "normal"]


def test_fake_responses_stream_slow_and_long(fake_model):
    fake_model.set_scenario("slow", delay_ms=150)
    body = {"model": "m", "stream": True, "input": [
        {"type": "message", "role": "user",
         "content": [{"type": "input_text", "text": "<environment_context>x</environment_context>"}]},
        {"type": "message", "role": "user",
         "content": [{"type": "input_text", "text": "count [[long:5]]"}]}]}
    status, events, times, _ = _sse_post(fake_model.url + "/v1/responses", body)
    assert status == 200
    kinds = [e for e, _ in events]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    deltas = [(d["delta"], t) for (e, d), t in zip(events, times) if e == "response.output_text.delta"]
    text = "".join(d for d, _ in deltas)
    assert text == "fake-reply turns=1 last=count [[long:5]] w1 w2 w3 w4 w5"
    assert deltas[-1][1] - deltas[0][1] >= 0.15 * (len(deltas) - 1) * 0.9  # really spaced out
    assert events[-1][1]["response"]["usage"]["output_tokens"] == len(deltas)


def test_fake_hang_and_slowstart(fake_model):
    s = socket.create_connection(("127.0.0.1", fake_model.port))
    body = json.dumps({"model": "m", "stream": True,
                       "messages": [{"role": "user", "content": "[[hang]]"}]}).encode()
    s.sendall(b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    ready, _, _ = select.select([s], [], [], 1.0)
    assert not ready, "a [[hang]] request must get no answer"
    s.close()
    start = time.monotonic()
    status, _, _, _ = _sse_post(fake_model.url + "/v1/messages", {
        "model": "m", "stream": True, "messages": [{"role": "user", "content": "[[slowstart:500]]"}]})
    assert status == 200 and time.monotonic() - start >= 0.5
    assert [r["mode"] for r in fake_model.requests()] == ["hang", "slowstart"]


def test_fake_gemini_routing_answer(fake_model):
    schema = {"type": "OBJECT", "properties": {
        "complexity_reasoning": {"type": "STRING"}, "complexity_score": {"type": "INTEGER"}},
        "required": ["complexity_reasoning", "complexity_score"]}
    body = {"contents": [{"role": "user", "parts": [{"text": "route me [[error]]"}]}],
            "generationConfig": {"responseMimeType": "application/json", "responseJsonSchema": schema}}
    s, _, _, b = _sse_post(fake_model.url + "/v1beta/models/flash-lite:generateContent", body)
    assert s == 200  # utility calls ignore scenarios
    answer = json.loads(b["candidates"][0]["content"]["parts"][0]["text"])
    assert answer["complexity_score"] == 1 and isinstance(answer["complexity_reasoning"], str)
    schema2 = {"type": "object", "properties": {"reasoning": {"type": "string"},
                                                "model_choice": {"type": "string", "enum": ["flash", "pro"]}},
               "required": ["reasoning", "model_choice"]}
    body["generationConfig"]["responseJsonSchema"] = schema2
    s, _, _, b = _sse_post(fake_model.url + "/v1beta/models/flash-lite:generateContent", body)
    assert json.loads(b["candidates"][0]["content"]["parts"][0]["text"])["model_choice"] == "flash"
    reqs = fake_model.requests(include_utility=True)
    assert [r["routing"] for r in reqs] == [True, True] and fake_model.requests() == []


def test_fake_control_api(fake_model):
    assert fake_model.set_scenario("slow", 50) == {"mode": "slow", "delay_ms": 50}
    status, _ = http_json("POST", fake_model.url + "/_fake/scenario", {"mode": "bogus"})
    assert status == 400
    status, models = http_json("GET", fake_model.url + "/v1/models")
    assert status == 200 and models["data"]
    fake_model.reset()
    assert http_json("GET", fake_model.url + "/_fake/scenario")[1]["mode"] == "normal"
    assert fake_model.requests() == []
    assert [o["path"] for o in fake_model.other_requests()] == []


# --------------------------------------------------------------------------
# real CLIs


@pytest.mark.parametrize("cli,version", sorted(TESTED_VERSIONS.items()))
def test_cli_versions_are_pinned(cli, version, cli_bin_dir, cli_home):
    res = run_cli([cli_bin_dir / cli, "--version"], cli_home.env, cli_home.workdir, timeout=30)
    assert res.returncode == 0 and version in res.stdout, str(res)


@pytest.mark.parametrize("cli,argv,on_stdin", [
    ("copilot", ["--prompt=Hello copilot, a few words", "--output-format", "json"], False),
    # opencode's `run` quotes every argv word holding a space; it takes stdin as it is.
    ("opencode", ["run", "--format", "json"], True),
])
def test_the_newer_clis_reach_the_fake_model(cli, argv, on_stdin, cli_bin_dir, cli_home, fake_model, tmp_path):
    """copilot (its own-provider mode) and opencode (its config file) talk Anthropic messages to
    the fake model with no login; their own additions to the prompt are not the user's words."""
    words = f"Hello {cli}, a few words"
    stdin = subprocess.DEVNULL
    if on_stdin:
        (tmp_path / "prompt.txt").write_text(words)
        stdin = open(tmp_path / "prompt.txt", "rb")
    res = run_cli([cli_bin_dir / cli, *argv], cli_home.env, cli_home.workdir, stdin=stdin)
    assert res.returncode == 0, str(res)
    want = f"fake-reply turns=1 last={words}"
    assert want in res.stdout, res.stdout[-2000:]
    convo = fake_model.requests()
    assert [r["protocol"] for r in convo] == ["anthropic"], convo
    assert convo[0]["user_texts"] == [f"Hello {cli}, a few words"], convo[0]["user_texts"]


def test_claude_stream(cli_bin_dir, cli_home, fake_model):
    res = run_cli(claude_argv(cli_bin_dir, "Hello claude, several words please"),
                  cli_home.env, cli_home.workdir)
    assert res.returncode == 0, str(res)
    sid, deltas, result = claude_stream(res)
    want = expected_reply(1, "Hello claude, several words please")
    assert len(deltas) >= 4 and "".join(deltas) == want
    assert result["result"] == want and result["is_error"] is False and result["session_id"] == sid
    (req,) = fake_model.requests()
    assert req["protocol"] == "anthropic" and req["stream"] is True
    assert req["last_user"] == "Hello claude, several words please" and req["turns"] == 1
    assert any("<system-reminder>" in t for t in req["raw_user_texts"])  # injected context stripped


def test_claude_resume_system_prompt_and_model(cli_bin_dir, cli_home, fake_model):
    # claude fixes the system prompt when a session is created: a resumed run keeps
    # it, and a --system-prompt given on resume is ignored (measured with 2.1.328)
    first = run_cli(claude_argv(cli_bin_dir, "first turn", JSON,
                                ["--system-prompt", "SYSMARK answer tersely"]),
                    cli_home.env, cli_home.workdir)
    assert first.returncode == 0, str(first)
    assert first.json()["result"] == expected_reply(1, "first turn", "SYSMARK answer tersely")
    sid = first.json()["session_id"]
    second = run_cli(claude_argv(cli_bin_dir, "second turn", JSON,
                                 ["--resume", sid, "--model", "claude-sonnet-4-5",
                                  "--system-prompt", "SYSMARK ignored on resume"]),
                     cli_home.env, cli_home.workdir)
    assert second.returncode == 0, str(second)
    out = second.json()
    assert out["session_id"] == sid
    assert out["result"] == expected_reply(2, "second turn", "SYSMARK answer tersely")
    reqs = fake_model.requests()
    assert [r["turns"] for r in reqs] == [1, 2]
    assert reqs[1]["model"] == "claude-sonnet-4-5" and reqs[1]["system_has_marker"]


def test_codex_stream(cli_bin_dir, cli_home, fake_model):
    res = run_cli(codex_argv(cli_bin_dir, "Hello codex, several words please"),
                  cli_home.env, cli_home.workdir)
    assert res.returncode == 0, str(res)
    _, texts, lines = codex_stream(res)
    assert texts == [expected_reply(1, "Hello codex, several words please")]
    assert lines[-1]["type"] == "turn.completed" and lines[-1]["usage"]["output_tokens"] > 0
    (req,) = fake_model.requests()
    assert req["protocol"] == "responses" and req["stream"] is True and req["turns"] == 1
    assert req["last_user"] == "Hello codex, several words please"
    assert any(t.startswith("<environment_context>") for t in req["raw_user_texts"])


def test_codex_resume_and_model(cli_bin_dir, cli_home, fake_model):
    first = run_cli(codex_argv(cli_bin_dir, "first turn"), cli_home.env, cli_home.workdir)
    assert first.returncode == 0, str(first)
    thread, _, _ = codex_stream(first)
    second = run_cli(codex_argv(cli_bin_dir, "second turn", resume=thread),
                     cli_home.env, cli_home.workdir)
    assert second.returncode == 0, str(second)
    thread2, texts, _ = codex_stream(second)
    assert thread2 == thread and texts == [expected_reply(2, "second turn")]
    assert [r["turns"] for r in fake_model.requests()] == [1, 2]
    third = run_cli(codex_argv(cli_bin_dir, "third", extra=["-m", "gpt-5.5"]),
                    cli_home.env, cli_home.workdir)
    assert third.returncode == 0, str(third)
    assert fake_model.requests()[-1]["model"] == "gpt-5.5"


def test_gemini_stream_with_routing(cli_bin_dir, cli_home, fake_model):
    res = run_cli(gemini_argv(cli_bin_dir, "Hello gemini, several words please"),
                  cli_home.env, cli_home.workdir, timeout=60)
    assert res.returncode == 0, str(res)
    assert res.seconds < 30, f"gemini took {res.seconds:.1f}s: routing answer rejected?\n{res}"
    sid, deltas, result = gemini_stream(res)
    assert len(deltas) >= 4 and "".join(deltas) == expected_reply(1, "Hello gemini, several words please")
    assert result["status"] == "success"
    everything = fake_model.requests(include_utility=True)
    assert everything[0]["routing"] is True and everything[0]["stream"] is False
    (req,) = fake_model.requests()
    assert req["protocol"] == "gemini" and req["stream"] is True and req["turns"] == 1
    assert req["last_user"] == "Hello gemini, several words please"
    assert any("<session_context>" in t for t in req["raw_user_texts"])


def test_gemini_resume_model_and_system_file(cli_bin_dir, cli_home, fake_model):
    first = run_cli(gemini_argv(cli_bin_dir, "first turn", JSON, ["-m", "gemini-2.5-flash"]),
                    cli_home.env, cli_home.workdir)
    assert first.returncode == 0, str(first)
    sid = first.json()["session_id"]
    sys_file = cli_home.home / "system.md"
    sys_file.write_text("SYSMARK gemini system prompt\n")
    env = dict(cli_home.env, GEMINI_SYSTEM_MD=str(sys_file))
    second = run_cli(gemini_argv(cli_bin_dir, "second turn", JSON,
                                 ["--resume", sid, "-m", "gemini-2.5-flash"]),
                     env, cli_home.workdir)
    assert second.returncode == 0, str(second)
    out = second.json()
    assert out["session_id"] == sid
    assert out["response"] == expected_reply(2, "second turn", "SYSMARK gemini system prompt")
    reqs = fake_model.requests(include_utility=True)
    assert [r["turns"] for r in reqs] == [1, 2]  # explicit -m: no routing call
    assert all(r["model"] == "gemini-2.5-flash" for r in reqs)


@pytest.mark.parametrize("cli", ["claude", "codex", "gemini"])
def test_cli_fails_fast_on_4xx(cli, cli_bin_dir, cli_home, fake_model):
    fake_model.set_scenario("error")
    argv = {"claude": claude_argv(cli_bin_dir, "please fail"),
            "codex": codex_argv(cli_bin_dir, "please fail"),
            "gemini": gemini_argv(cli_bin_dir, "please fail", extra=["-m", "gemini-2.5-flash"])}[cli]
    res = run_cli(argv, cli_home.env, cli_home.workdir, timeout=60)
    assert res.returncode == {"claude": 1, "codex": 1, "gemini": 144}[cli], str(res)
    assert res.seconds < 20, str(res)
    assert "injected error" in res.stdout + res.stderr
    assert fake_model.requests() and all(r["mode"] == "error" for r in fake_model.requests())


@pytest.mark.parametrize("cli", ["claude", "codex", "gemini"])
def test_cli_5xx_with_fast_fail_home(cli, cli_bin_dir, cli_home_factory, fake_model):
    # by default the CLIs retry 5xx for minutes; a fast_fail HOME turns that off
    home = cli_home_factory("ff", fast_fail=True)
    fake_model.set_scenario("error5xx")
    argv = {"claude": claude_argv(cli_bin_dir, "please fail"),
            "codex": codex_argv(cli_bin_dir, "please fail"),
            "gemini": gemini_argv(cli_bin_dir, "please fail", extra=["-m", "gemini-2.5-flash"])}[cli]
    res = run_cli(argv, home.env, home.workdir, timeout=60)
    # gemini's exit code is the HTTP status modulo 256 (400 -> 144, 500 -> 244)
    assert res.returncode == {"claude": 1, "codex": 1, "gemini": 244}[cli], str(res)
    assert res.seconds < 20, str(res)
    assert len(fake_model.requests()) == 1


@pytest.mark.parametrize("cli", ["claude", "codex", "gemini"])
def test_cli_unknown_resume_id(cli, cli_bin_dir, cli_home, fake_model):
    bogus = str(uuid.uuid4())
    argv = {"claude": claude_argv(cli_bin_dir, "x", extra=["--resume", bogus]),
            "codex": codex_argv(cli_bin_dir, "x", resume=bogus),
            "gemini": gemini_argv(cli_bin_dir, "x", extra=["--resume", bogus])}[cli]
    res = run_cli(argv, cli_home.env, cli_home.workdir, timeout=60)
    assert res.returncode == {"claude": 1, "codex": 1, "gemini": 42}[cli], str(res)
    assert fake_model.requests(include_utility=True) == []


# --------------------------------------------------------------------------
# fault-injection fake CLIs


def _fakecli(name, *args, **kw):
    return subprocess.Popen([FAKECLI_DIR / name, "-p", "--output-format", "stream-json",
                             "--verbose", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            start_new_session=True, **kw)


def _ndjson(data: bytes):
    out = []
    for line in data.splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            pass
    return out


@pytest.mark.parametrize("name", ["ok", "slow-ok", "crash-midstream", "ignore-sigterm",
                                  "grandchild-holds-stdout", "garbage", "huge-line", "hang"])
def test_fakecli_version(name):
    res = subprocess.run([FAKECLI_DIR / name, "--version"], capture_output=True, text=True, timeout=10)
    assert res.returncode == 0 and res.stdout.strip() == "fakecli 0.0.0"


def test_fakecli_ok_slow_garbage_huge():
    p = _fakecli("slow-ok", "--session-id", "11111111-2222-4333-8444-555555555555", "hi there")
    out, _ = p.communicate(timeout=20)
    lines = _ndjson(out)
    assert p.returncode == 0
    assert lines[0]["type"] == "system" and lines[0]["session_id"].startswith("11111111")
    assert lines[-1]["type"] == "result" and lines[-1]["result"] == "fakecli reply to: hi there"
    p = _fakecli("garbage", "x")
    out, _ = p.communicate(timeout=20)
    assert p.returncode == 0 and b"\xff" in out and _ndjson(out)[-1]["type"] == "result"
    p = _fakecli("huge-line", "x", env=dict(os.environ, FAKECLI_HUGE_BYTES=str(3 * 1024 * 1024)))
    out, _ = p.communicate(timeout=20)
    longest = max(out.split(b"\n"), key=len)
    assert p.returncode == 0 and len(longest) == 3 * 1024 * 1024
    assert _ndjson(out)[-1]["type"] == "result"


def test_fakecli_crash_and_hang_and_sigterm():
    p = _fakecli("crash-midstream", "x")
    out, _ = p.communicate(timeout=20)
    assert p.returncode == -signal.SIGKILL and not any(l["type"] == "result" for l in _ndjson(out))

    for name in ("hang", "ignore-sigterm"):
        p = _fakecli(name, "x")
        first = p.stdout.readline()
        assert json.loads(first)["subtype"] == "init"
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(1.0)
            exited = True
        except subprocess.TimeoutExpired:
            exited = False
        assert exited == (name == "hang"), name
        if not exited:
            os.killpg(p.pid, signal.SIGKILL)
            assert p.wait(5) == -signal.SIGKILL
        p.stdout.close()
        p.stderr.close()


def test_fakecli_grandchild_holds_stdout():
    p = _fakecli("grandchild-holds-stdout", "x")
    assert p.wait(10) == 0  # the CLI itself is gone ...
    fd = p.stdout.fileno()
    data = b""
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            chunk = os.read(fd, 65536)
            assert chunk, "stdout closed although the grandchild holds it"
            data += chunk
    assert _ndjson(data)[-1]["type"] == "result"  # ... but EOF never comes
    os.killpg(p.pid, signal.SIGKILL)  # the grandchild is in the same process group
    wait_for(lambda: select.select([fd], [], [], 0)[0] and os.read(fd, 65536) == b"", 5,
             what="EOF after killing the group")
    p.stdout.close()
    p.stderr.close()
