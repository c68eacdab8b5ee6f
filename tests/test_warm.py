"""Warm workers: the real claude, codex and gemini kept alive between turns (claude's stream-json
input, codex app-server, gemini ACP), against the fake model server."""

from __future__ import annotations

import os
import signal

import pytest

from harness import get_json, live_world, pid_alive, poll, post, start_live  # noqa: F401

BACKENDS = ["claude", "codex", "gemini"]


def workers(world, backend: str | None = None, state: str | None = None) -> list[dict]:
    s = world.status()
    assert s is not None, "no daemon"
    return [w for w in s["workers"]
            if (backend is None or w["backend"] == backend) and (state is None or w["state"] == state)]


def config(backend: str, pool: int = 0, idle: int = 300, extra: str = "") -> str:
    return (f"backends:\n  {backend}:\n    warm:\n      pool: {pool}\n      idle_secs: {idle}\n{extra}"
            "limits:\n  kill_grace_secs: 1\n")


@pytest.mark.parametrize("backend", BACKENDS)
def test_turns_share_a_worker_and_a_killed_one_resumes(live_world, fake_model, backend):
    url = start_live(live_world, config(backend))
    status, r, _ = post(url + "/api/v1/prompt", {"backend": backend, "prompt": "first words"})
    assert status == 200 and r["error"] is None, r
    assert "fake-reply turns=1 last=first words" in r["output"], r["output"]
    sid = r["session_id"]
    [w] = workers(live_world, backend)
    assert w["state"] == "idle" and w["turns"] == 1 and w["backend_session_id"], w
    pid = w["pid"]
    assert pid_alive(pid)

    status, r2, _ = post(url + "/api/v1/prompt", {"backend": backend, "prompt": "second words", "session_id": sid})
    assert status == 200 and r2["error"] is None, r2
    assert "turns=2 last=second words" in r2["output"], r2["output"]
    [w2] = workers(live_world, backend)
    assert w2["pid"] == pid and w2["turns"] == 2, w2

    # The worker dies between turns: the next turn resumes the session in a new one.
    os.killpg(pid, signal.SIGKILL)
    poll(lambda: not pid_alive(pid), 10, "the worker to die")
    status, r3, _ = post(url + "/api/v1/prompt", {"backend": backend, "prompt": "third words", "session_id": sid})
    assert status == 200 and r3["error"] is None, r3
    assert "turns=3 last=third words" in r3["output"], r3["output"]
    if backend == "gemini":
        # gemini's session/load loses a session loaded within the minute it was written, so a
        # session whose worker is gone continues one-shot (gemini --resume).
        assert workers(live_world, backend) == []
    else:
        [w3] = workers(live_world, backend)
        assert w3["pid"] != pid and w3["backend_session_id"] == w["backend_session_id"], (w, w3)
    status, s = get_json(url + f"/api/v1/sessions/{sid}")
    assert s["turn_count"] == 3 and s["status"] != "interrupted", s
