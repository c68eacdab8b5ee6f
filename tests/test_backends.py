"""The backends, end to end: the real CLIs (claude, codex, gemini, copilot, …) run by clinvkd against the
fake model server, through the native API; faults with the fault-injection CLIs."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from harness import FAKECLI_DIR, get_json, live_world, pid_alive, poll, post, start_live, stream_ndjson  # noqa: F401

from compat_world import BACKENDS  # every pinned CLI


@pytest.mark.parametrize("backend", BACKENDS)
def test_prompt_resume_and_session(live_world, fake_model, backend):
    url = start_live(live_world)
    wd = str(live_world.workdir)
    status, r, _ = post(url + "/api/v1/prompt", {"backend": backend, "prompt": "hello there world", "workdir": wd})
    assert status == 200, r
    assert r["exit_code"] == 0 and r["error"] is None, r
    assert "fake-reply turns=1 last=hello there world" in r["output"]
    assert r["token_usage"]["output_tokens"] > 0 and r["token_usage"]["input_tokens"] > 0
    sid = r["session_id"]
    status, s = get_json(url + f"/api/v1/sessions/{sid}")
    assert status == 200 and s["backend_session_id"], s

    # Resume through the backend's own session: the model sees the earlier turn.
    status, r2, _ = post(url + "/api/v1/prompt", {"backend": backend, "prompt": "and again", "session_id": sid})
    assert status == 200 and r2["error"] is None, r2
    assert "turns=2 last=and again" in r2["output"], r2["output"]
    assert r2["session_id"] == sid
    status, s = get_json(url + f"/api/v1/sessions/{sid[:8]}")
    assert s["turn_count"] == 2
    assert s["token_usage"]["output_tokens"] == r["token_usage"]["output_tokens"] + r2["token_usage"]["output_tokens"]
    assert [t["prompt"] for t in s["turns"]] == ["hello there world", "and again"]
    convo = fake_model.requests()
    assert convo[-1]["turns"] == 2 and convo[-1]["last_user"].startswith("and again")


@pytest.mark.parametrize("backend", BACKENDS)
def test_first_delta_arrives_while_the_cli_runs(live_world, backend):
    url = start_live(live_world)
    events = stream_ndjson(url + "/api/v1/prompt", {
        "backend": backend, "prompt": "[[slow:400]] stream please", "output_format": "stream-json",
        "workdir": str(live_world.workdir)})
    first = next(e for e in events if e["type"] == "message")
    assert first["content"]["delta"] is True
    # The CLI is still running when the first delta reached us.
    runs = live_world.status()["runs"]
    assert [r["backend"] for r in runs] == [backend], runs
    assert runs[0]["pid"] and pid_alive(runs[0]["pid"])
    rest = list(events)
    assert sum(1 for e in rest if e["type"] == "message") >= 2
    done = rest[-1]
    assert done["type"] == "done" and done["content"]["exit_code"] == 0
    assert [e["sequence"] for e in [first] + rest] == sorted(e["sequence"] for e in [first] + rest)


def test_codex_one_shot_streams_whole_messages(live_world):
    url = start_live(live_world, "backends:\n  codex:\n    mode: oneshot\n")
    events = list(stream_ndjson(url + "/api/v1/prompt", {
        "backend": "codex", "prompt": "hi", "output_format": "stream-json", "workdir": str(live_world.workdir)}))
    kinds = [e["type"] for e in events]
    assert kinds[0] == "init" and kinds[-1] == "done" and "message" in kinds, kinds
    assert "fake-reply" in next(e for e in events if e["type"] == "message")["content"]["text"]


@pytest.mark.parametrize("backend,flag", [("claude", "--model"), ("codex", "-m"), ("gemini", "-m"),
                                                  ("copilot", "--model")])
def test_model_and_system_prompt_reach_the_model(live_world, fake_model, backend, flag):
    url = start_live(live_world)
    body = {"backend": backend, "prompt": "sys check", "model": "m-test-1", "system_prompt": "SYSMARK be brief",
            "workdir": str(live_world.workdir)}
    status, d, _ = post(url + "/api/v1/prompt", {**body, "dry_run": True})
    assert status == 200 and d["dry_run"] is True
    argv = d["command"]
    assert Path(argv[0]).name == backend
    assert argv[argv.index(flag) + 1] == "m-test-1"
    assert fake_model.requests() == [], "a dry run starts nothing"
    if backend == "claude":
        assert argv[argv.index("--system-prompt") + 1] == "SYSMARK be brief"
    if backend == "codex":
        assert argv[argv.index("-c") + 1] == 'developer_instructions="SYSMARK be brief"'
    # Warm mode (the default): the live CLI that would take the turn.
    worker = d["worker_command"]
    assert Path(worker[0]).name == backend
    assert {"claude": "--input-format", "codex": "app-server", "gemini": "--acp",
            "copilot": "--acp"}[backend] in worker, worker
    if backend != "codex":  # codex takes the model in its protocol (thread/start)
        assert worker[worker.index(flag) + 1] == "m-test-1"
    status, r, _ = post(url + "/api/v1/prompt", body)
    assert status == 200 and r["error"] is None, r
    req = fake_model.requests()[-1]
    assert req["model"] == "m-test-1"
    if backend in ("claude", "codex"):  # a real system/developer message
        assert req["system_has_marker"] and "sys=SYSMARK" in r["output"], (req, r["output"])
    else:  # gemini, copilot: folded into the prompt, the model still receives it
        assert any("SYSMARK be brief" in t for t in req["raw_user_texts"])


@pytest.mark.parametrize("backend", BACKENDS)
def test_model_error_is_an_error_naming_the_backend(live_world, backend):
    url = start_live(live_world)
    status, r, _ = post(url + "/api/v1/prompt", {"backend": backend, "prompt": "[[error]] fail", "workdir": str(live_world.workdir)})
    assert status == 200, r
    assert r["exit_code"] != 0
    assert r["error"] and r["error"].startswith(backend) and "injected error" in r["error"], r


def fake(world, name: str, extra: str = "") -> str:
    return start_live(world, f"backends:\n  claude:\n    command: {FAKECLI_DIR / name}\n    mode: oneshot\n{extra}")


def test_timeout_kills_the_whole_group(live_world):
    url = fake(live_world, "grandchild-holds-stdout", "    timeout_secs: 3\n")
    status, r, _ = post(url + "/api/v1/prompt", {"backend": "claude", "prompt": "hi"})
    assert status == 200 and r["exit_code"] == 0, r  # the group is reaped when the CLI exits
    url2 = url
    live_world.write_config(f"backends:\n  claude:\n    command: {FAKECLI_DIR / 'hang'}\n    mode: oneshot\n    timeout_secs: 2\n")
    assert live_world.ctl("reload").returncode == 0
    poll(lambda: get_json(url2 + "/api/v1/backends")[1]["backends"][0]["path"].endswith("hang"), 30, "the reload")
    status, r, _ = post(url2 + "/api/v1/prompt", {"backend": "claude", "prompt": "hi"})
    assert status == 200 and r["exit_code"] == -1 and "timed out" in r["error"], r
    assert live_world.status()["runs"] == []


def test_cancel_kills_the_group_within_two_seconds(live_world):
    url = fake(live_world, "ignore-sigterm", "")
    live_world.write_config(f"limits:\n  kill_grace_secs: 1\nbackends:\n  claude:\n    command: {FAKECLI_DIR / 'ignore-sigterm'}\n    mode: oneshot\n")
    live_world.ctl("reload")
    events = stream_ndjson(url + "/api/v1/prompt", {"backend": "claude", "prompt": "x", "output_format": "stream-json"})
    next(e for e in events if e["type"] == "message")
    pid = live_world.status()["runs"][0]["pid"]
    events.close()  # the client goes away
    poll(lambda: not pid_alive(pid), 4, "the SIGTERM-ignoring CLI to be SIGKILLed")
    poll(lambda: live_world.status()["runs"] == [], 4, "the run to leave the running set")


def test_crash_midstream_is_an_error_not_a_success(live_world):
    url = fake(live_world, "crash-midstream")
    status, r, _ = post(url + "/api/v1/prompt", {"backend": "claude", "prompt": "x"})
    assert status == 200 and r["exit_code"] != 0 and r["error"], r
    assert "partial" in r["output"], "what arrived before the crash is kept"


def test_garbage_and_huge_output_do_not_hurt_the_daemon(live_world):
    url = fake(live_world, "garbage")
    status, r, _ = post(url + "/api/v1/prompt", {"backend": "claude", "prompt": "x"})
    assert status == 200 and r["exit_code"] == 0 and "fakecli reply" in r["output"], r
    live_world.write_config(f"backends:\n  claude:\n    command: {FAKECLI_DIR / 'huge-line'}\n    mode: oneshot\n")
    live_world.ctl("reload")
    poll(lambda: get_json(url + "/api/v1/backends")[1]["backends"][0]["path"].endswith("huge-line"), 30, "reload")
    status, r, _ = post(url + "/api/v1/prompt", {"backend": "claude", "prompt": "x"})
    assert status == 200 and r["exit_code"] == 0 and "fakecli reply" in r["output"], r
    pid = live_world.status()["pid"]
    rss_kb = int(next(l for l in Path(f"/proc/{pid}/status").read_text().splitlines() if l.startswith("VmRSS")).split()[1])
    assert rss_kb < 150_000, f"daemon RSS {rss_kb} kB after a 50 MB line"


def test_missing_executable_makes_the_backend_unavailable(live_world):
    url = start_live(live_world, "backends:\n  codex:\n    command: /nonexistent/codex\n")
    status, b = get_json(url + "/api/v1/backends")
    codex = next(x for x in b["backends"] if x["name"] == "codex")
    assert codex["available"] is False and "npm install -g @openai/codex" in codex["message"], codex
    status, r, _ = post(url + "/api/v1/prompt", {"backend": "codex", "prompt": "x"})
    assert status == 503 and r["code"] == "backend_unavailable" and "install" in r["error"], r
    status, h = get_json(url + "/health")
    assert h["status"] == "degraded"


def test_at_capacity_is_refused_at_once(live_world):
    url = fake(live_world, "hang", "limits:\n  max_concurrent: 1\n  queue_size: 0\n")
    events = stream_ndjson(url + "/api/v1/prompt", {"backend": "claude", "prompt": "x", "output_format": "stream-json"})
    next(events)  # the first run holds the only slot
    status, r, hdrs = post(url + "/api/v1/prompt", {"backend": "claude", "prompt": "y"}, timeout=10)
    assert status == 503 and r["code"] == "at_capacity", r
    assert {k.lower(): v for k, v in hdrs.items()}.get("retry-after") == "5"
    events.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_prompt_longer_than_an_argv_element_goes_through_stdin(live_world, fake_model, backend):
    url = start_live(live_world)
    prompt = "LONGSTART " + "word " * 40_000  # 200 kB: more than one argv element may hold
    status, r, _ = post(url + "/api/v1/prompt", {"backend": backend, "prompt": prompt, "workdir": str(live_world.workdir), "ephemeral": True})
    assert status == 200 and r["error"] is None, r
    assert "last=LONGSTART word" in r["output"], r["output"][:200]
    assert sum(len(t) for t in fake_model.requests()[-1]["raw_user_texts"]) >= len(prompt) - 100
