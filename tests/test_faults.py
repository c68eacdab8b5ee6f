"""Faults: the session folder full or read-only, a CLI (one-shot or a warm worker) killed by
someone else mid-answer, the model server gone. Each ends in a clear error to the client and a
consistent session store; the daemon goes on."""

from __future__ import annotations

import json
import os
import signal
import subprocess

import pytest

from compat_world import compat  # noqa: F401  (fixture)
from harness import FAKECLI_DIR, get_json, live_world, pid_alive, poll, post, start_live, world  # noqa: F401


def mounted_tmpfs(path, size: str) -> bool:
    if os.geteuid() != 0:
        return False
    path.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


def test_a_full_or_read_only_session_folder_is_a_clear_error_and_nothing_is_lost(world):
    sessions = world.state_dir / "sessions"
    if not mounted_tmpfs(sessions, "64k"):
        pytest.skip("needs root and tmpfs mounts (a small full file system)")
    try:
        world.write_config(f"backends:\n  claude:\n    command: {FAKECLI_DIR / 'ok'}\n    mode: oneshot\n")
        world.start_daemon()
        url = world.url
        status, first, _ = post(url + "/api/v1/prompt", {"backend": "claude", "prompt": "one"})
        assert status == 200 and first["error"] is None, first
        sid = first["session_id"]
        with open(sessions / "filler", "wb") as f:
            with pytest.raises(OSError):
                f.write(b"x" * 256 * 1024)
                f.flush()

        # Full: a new session cannot be stored — refused before any CLI starts, in each style.
        status, r, _ = post(url + "/api/v1/prompt", {"backend": "claude", "prompt": "two"})
        assert status == 500 and r["code"] == "session_store_error", r
        assert "No space left on device" in r["error"]
        status, r, _ = post(url + "/openai/v1/chat/completions",
                            {"model": "claude", "messages": [{"role": "user", "content": "x"}]})
        assert status == 500 and r["error"]["code"] == "session_store_error", r
        # A continued session still answers; its turn is kept in memory and written later.
        status, r, _ = post(url + "/api/v1/prompt", {"backend": "claude", "prompt": "three", "session_id": sid})
        assert status == 200 and r["output"] == "fakecli reply to: three", r

        # Read-only: the same clear refusal.
        subprocess.run(["mount", "-o", "remount,ro", str(sessions)], check=True)
        status, r, _ = post(url + "/api/v1/prompt", {"backend": "claude", "prompt": "ro"})
        assert status == 500 and "Read-only file system" in r["error"], r

        # Space back: the session goes on and holds every turn; no temp file was left behind.
        subprocess.run(["mount", "-o", "remount,rw", str(sessions)], check=True)
        os.remove(sessions / "filler")
        status, r, _ = post(url + "/api/v1/prompt", {"backend": "claude", "prompt": "four", "session_id": sid})
        assert status == 200 and r["error"] is None, r
        names = sorted(p.name for p in sessions.iterdir())
        assert names == [f"{sid}.json"], names
        s = json.loads((sessions / f"{sid}.json").read_text())
        assert [t["prompt"] for t in s["turns"]] == ["one", "three", "four"] and s["turn_count"] == 3, s
        assert not world.status()["runs"]
    finally:
        world.stop_all()
        subprocess.run(["umount", "-l", str(sessions)], capture_output=True)


def test_a_one_shot_cli_killed_mid_answer_is_a_clear_error(world):
    world.write_config(f"backends:\n  claude:\n    command: {FAKECLI_DIR / 'slow-ok'}\n    mode: oneshot\n")
    world.start_daemon()
    url = world.url
    out = {}

    import threading
    t = threading.Thread(target=lambda: out.update(r=post(url + "/api/v1/prompt", {
        "backend": "claude", "prompt": "a long answer with many words to stream slowly"})))
    t.start()
    run = poll(lambda: next((r for r in world.status()["runs"] if r.get("pid")), None), 30, "the CLI to start")
    os.kill(run["pid"], signal.SIGKILL)
    t.join(60)
    status, r, _ = out["r"]
    assert status == 200 and r["exit_code"] != 0, r
    assert r["error"] == "claude: claude was killed by a signal", r
    status, s = get_json(url + f"/api/v1/sessions/{r['session_id']}")
    assert s["status"] == "error" and s["turn_count"] == 1, s
    poll(lambda: not world.status()["runs"], 20, "the run to be gone")


def test_a_warm_worker_killed_mid_turn_fails_the_turn_and_the_session_resumes(live_world, fake_model):
    url = start_live(live_world)
    status, r, _ = post(url + "/api/v1/prompt", {"backend": "claude", "prompt": "first"})
    assert status == 200 and r["error"] is None, r
    sid = r["session_id"]
    [w] = live_world.status()["workers"]
    out = {}

    import threading
    t = threading.Thread(target=lambda: out.update(r=post(url + "/api/v1/prompt", {
        "backend": "claude", "prompt": "held [[gate]]", "session_id": sid})))
    t.start()
    poll(lambda: any(x["state"] == "busy" for x in live_world.status()["workers"]), 30, "the turn to start")
    poll(lambda: any(q["last_user"].startswith("held") for q in fake_model.requests()), 30, "the model call")
    os.killpg(w["pid"], signal.SIGKILL)
    t.join(60)
    fake_model.release()
    status, r2, _ = out["r"]
    assert status == 200 and r2["exit_code"] != 0, r2
    assert r2["error"].startswith(f"claude: the claude worker (pid {w['pid']}) exited during the turn"), r2
    assert not pid_alive(w["pid"])
    # Not retried behind the client's back; its next turn resumes the session in a new worker.
    status, r3, _ = post(url + "/api/v1/prompt", {"backend": "claude", "prompt": "after the crash", "session_id": sid})
    assert status == 200 and r3["error"] is None and "after the crash" in r3["output"], r3
    [w2] = live_world.status()["workers"]
    assert w2["pid"] != w["pid"] and w2["backend_session_id"] == w["backend_session_id"]


@pytest.mark.parametrize("backend", ["claude", "codex", "gemini"])
def test_the_model_server_gone_is_a_clear_error(compat, backend):
    # codex 0.169 retries a refused connection for as long as it runs (even with its retries
    # set to 0, one-shot and app-server alike), gemini 0.61 for about a minute: clinvk's run
    # timeout bounds them.
    d = compat(config="backends:\n  codex:\n    timeout_secs: 10\n  gemini:\n    timeout_secs: 10\n")
    d.fake_model.stop()
    status, r, _ = post(d.url + "/api/v1/prompt", {"backend": backend, "prompt": "anyone there?"}, timeout=240)
    assert status == 200 and r["exit_code"] != 0 and r["error"], r
    assert r["error"].startswith(backend), r
    if backend != "claude":
        assert r["error"] == f"{backend} timed out after 10 s and was stopped", r
    with pytest.raises(Exception) as e:
        d.openai().chat.completions.create(model=backend, messages=[{"role": "user", "content": "hello?"}])
    assert getattr(e.value, "status_code", None) == (502 if backend == "claude" else 504), e.value
    poll(lambda: not d.runs(), 20, "no run left")
