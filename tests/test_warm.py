"""Warm workers: the real claude, codex and gemini kept alive between turns (claude's stream-json
input, codex app-server, gemini ACP), against the fake model server."""

from __future__ import annotations

import os
import signal
import urllib.request

import pytest

from compat_world import compat  # noqa: F401
from harness import get_json, live_world, pid_alive, poll, post, start_live, stream_ndjson, world  # noqa: F401

from compat_world import BACKENDS  # every pinned CLI


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


def pooled_world(world):
    """Lets the test's config decide the pool (the suite's default is none)."""
    for b in BACKENDS:
        world.env.pop(f"CLINVK_BACKENDS_{b.upper()}_WARM_POOL", None)


@pytest.mark.parametrize("backend", BACKENDS)
def test_pool_replenishes_idle_workers_retire_and_a_reload_renews_the_pool(live_world, fake_model, backend):
    pooled_world(live_world)
    url = start_live(live_world, config(backend, pool=1))
    [p] = poll(lambda: workers(live_world, backend, "pooled"), 60, "a pooled worker")
    assert pid_alive(p["pid"]) and p["turns"] == 0 and p["backend_session_id"] is None

    # A new session with the default settings takes the pooled worker; the pool is refilled.
    status, r, _ = post(url + "/api/v1/prompt", {"backend": backend, "prompt": "pool turn"})
    assert status == 200 and r["error"] is None, r
    assert "turns=1 last=pool turn" in r["output"]
    [used] = workers(live_world, backend, "idle")
    assert used["pid"] == p["pid"] and used["turns"] == 1, used
    [refill] = poll(lambda: workers(live_world, backend, "pooled"), 60, "the pool to be refilled")
    assert refill["pid"] != p["pid"]
    # The same workers in /api/v1/backends and /metrics.
    status, b = get_json(url + "/api/v1/backends")
    mine = next(x for x in b["backends"] if x["name"] == backend)
    assert mine["mode"] == "warm"
    assert sorted(w["pid"] for w in mine["workers"]) == sorted([used["pid"], refill["pid"]]), mine
    metrics = urllib.request.urlopen(url + "/metrics", timeout=10).read().decode()
    assert f'clinvk_workers{{backend="{backend}",state="pooled"}} 1' in metrics
    assert f'clinvk_workers{{backend="{backend}",state="idle"}} 1' in metrics
    assert f'clinvk_time_to_first_output_seconds_count{{backend="{backend}",mode="warm"}} 1' in metrics

    # warm.idle_secs lowered by a reload: the idle session worker is retired, the pooled one
    # (same settings) stays.
    live_world.write_config(config(backend, pool=1, idle=1))
    r = live_world.ctl("reload")
    assert r.returncode == 0, r.stderr
    poll(lambda: not workers(live_world, backend, "idle"), 60, "the idle worker to be retired")
    poll(lambda: not pid_alive(used["pid"]), 10, "the retired worker's process to end")
    assert [w["pid"] for w in workers(live_world, backend, "pooled")] == [refill["pid"]]

    # A reload that changes the backend's model retires the pool and starts it anew.
    live_world.write_config(config(backend, pool=1, idle=1, extra=f"    model: {backend}-renewed-model\n"))
    r = live_world.ctl("reload")
    assert r.returncode == 0, r.stderr
    poll(lambda: not pid_alive(refill["pid"]), 60, "the old pooled worker to be retired")
    [renewed] = poll(lambda: workers(live_world, backend, "pooled"), 60, "the pool to be renewed")
    assert renewed["pid"] != refill["pid"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_folder_used_lately_keeps_a_spare_worker(live_world, fake_model, backend):
    """A new session in another folder than the default starts its worker on demand; from then
    on that folder keeps a spare (`warm.folders`), so the next new session there is answered by
    a worker that was started before it was asked for."""
    pooled_world(live_world)
    url = start_live(live_world, config(backend, pool=1))
    [default] = poll(lambda: workers(live_world, backend, "pooled"), 60, "the default pool")
    proj = live_world.root / "proj"
    proj.mkdir()
    status, r, _ = post(url + "/api/v1/prompt",
                        {"backend": backend, "prompt": "in the project", "workdir": str(proj)})
    assert status == 200 and r["error"] is None, r
    [first] = workers(live_world, backend, "idle")
    assert first["pid"] != default["pid"], "the default pool's worker is for the default folder"

    def spare():
        return [w for w in workers(live_world, backend, "pooled") if w["pid"] != default["pid"]]

    [kept] = poll(spare, 60, "a spare worker for the folder")
    status, r2, _ = post(url + "/api/v1/prompt",
                         {"backend": backend, "prompt": "a second session", "workdir": str(proj)})
    assert status == 200 and r2["error"] is None, r2
    assert r2["session_id"] != r["session_id"] and "turns=1 last=a second session" in r2["output"]
    [second] = [w for w in workers(live_world, backend, "idle") if w["pid"] != first["pid"]]
    assert second["pid"] == kept["pid"] and second["turns"] == 1, (second, kept)
    # The default folder's pooled worker was left alone, and the folder's spare is refilled.
    pooled = poll(lambda: len(workers(live_world, backend, "pooled")) == 2 and workers(live_world, backend, "pooled"),
                  60, "the folder's spare to be refilled")
    assert default["pid"] in [w["pid"] for w in pooled]


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_cancelled_turn_is_interrupted_and_the_session_goes_on_in_its_worker(live_world, fake_model, backend):
    url = start_live(live_world, config(backend))
    status, r, _ = post(url + "/api/v1/prompt", {"backend": backend, "prompt": "opening words"})
    assert status == 200 and r["error"] is None, r
    sid = r["session_id"]
    [w] = workers(live_world, backend)

    # A streamed turn held by the fake model is abandoned by its client mid-answer.
    stream = stream_ndjson(url + "/api/v1/prompt", {"backend": backend, "session_id": sid,
                                                    "output_format": "stream-json",
                                                    "prompt": "never finished [[gate]]"})
    for ev in stream:
        if ev["type"] == "message" and ev["content"].get("delta"):
            break
    stream.close()
    # The turn is interrupted (claude's interrupt request, codex turn/interrupt, ACP
    # session/cancel), not the worker: it waits for the session's next turn.
    poll(lambda: [x for x in workers(live_world, backend, "idle") if x["pid"] == w["pid"] and x["turns"] == 2],
         30, "the interrupted turn to end in its worker")
    fake_model.release()

    status, r3, _ = post(url + "/api/v1/prompt", {"backend": backend, "prompt": "after the cancel", "session_id": sid})
    assert status == 200 and r3["error"] is None, r3
    # (a CLI may merge the interrupted message into the next one, as gemini does)
    assert r3["output"].startswith("fake-reply") and "after the cancel" in r3["output"], r3["output"]
    [w3] = workers(live_world, backend)
    assert w3["pid"] == w["pid"] and w3["turns"] == 3, w3
    status, s = get_json(url + f"/api/v1/sessions/{sid}")
    assert s["turn_count"] >= 2, s


def test_codex_streams_token_deltas_in_every_api_style(compat, fake_model):
    """codex's app-server streams deltas: the first arrives while the model still holds the rest
    of the answer (the fake model's gate), through the native, OpenAI and Anthropic streams."""
    d = compat()

    # Native NDJSON.
    deltas = []
    stream = stream_ndjson(d.url + "/api/v1/prompt", {"backend": "codex", "output_format": "stream-json",
                                                      "prompt": "native stream [[gate]]"})
    for ev in stream:
        if ev["type"] == "message" and ev["content"].get("delta"):
            deltas.append(ev)
            if len(deltas) == 1:
                fake_model.release()  # the answer could not have been complete before this
    assert len(deltas) >= 2, deltas
    assert "".join(e["content"]["text"] for e in deltas).startswith("fake-reply turns=1 last=native stream")
    fake_model.reset()

    # OpenAI chat completions, streamed.
    chunks = []
    for chunk in d.openai().chat.completions.create(
            model="codex", stream=True,
            messages=[{"role": "user", "content": "openai stream [[gate]]"}]):
        text = chunk.choices[0].delta.content if chunk.choices else None
        if text:
            chunks.append(text)
            if len(chunks) == 1:
                fake_model.release()
    assert len(chunks) >= 2, chunks
    assert "".join(chunks).startswith("fake-reply turns=1 last=openai stream")
    fake_model.reset()

    # Anthropic messages, streamed.
    pieces = []
    with d.anthropic().messages.stream(model="codex", max_tokens=100,
                                       messages=[{"role": "user", "content": "anthropic stream [[gate]]"}]) as s:
        for text in s.text_stream:
            pieces.append(text)
            if len(pieces) == 1:
                fake_model.release()
    assert len(pieces) >= 2, pieces
    assert "".join(pieces).startswith("fake-reply turns=1 last=anthropic stream")


@pytest.mark.parametrize("how", ["stop", "kill -9"])
def test_no_worker_outlives_the_daemon(live_world, fake_model, how):
    pooled_world(live_world)
    start_live(live_world, "backends:\n" + "".join(
        f"  {b}:\n    warm:\n      pool: 1\n" for b in BACKENDS))
    pooled = poll(lambda: len(workers(live_world, state="pooled")) == len(BACKENDS), 90, "a pooled worker per backend")
    assert pooled
    pids = [w["pid"] for w in workers(live_world)]
    daemon = live_world.status()["pid"]
    if how == "stop":
        r = live_world.ctl("stop", "--timeout", "20", timeout=40)
        assert r.returncode == 0, r.stderr
    else:
        os.kill(daemon, signal.SIGKILL)
    poll(lambda: not pid_alive(daemon), 20, "the daemon to end")
    poll(lambda: not any(pid_alive(p) for p in pids), 20, "every worker to end with the daemon")


def test_codex_app_server_schema_is_the_pinned_one(cli_home, tmp_path):
    """The typed app-server messages follow the schema checked in beside the Rust tests; this
    fails when the pinned codex prints another one (regenerate the fixture and re-check)."""
    import json
    import subprocess
    from pathlib import Path

    out = tmp_path / "schema"
    r = subprocess.run(["codex", "app-server", "generate-json-schema", "--out", str(out)],
                       env=cli_home.env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    pinned = Path(__file__).resolve().parent.parent / "clinvkd/tests/fixtures/codex-0.169.0-app-server-schema"
    files = sorted(pinned.rglob("*.json"))
    assert len(files) >= 10
    for f in files:
        rel = f.relative_to(pinned)
        assert json.loads(f.read_text()) == json.loads((out / rel).read_text()), f"{rel} changed"


def test_max_workers_retires_the_least_recently_used(live_world, fake_model):
    url = start_live(live_world, config("claude") + "  max_workers: 1\n")
    status, a, _ = post(url + "/api/v1/prompt", {"backend": "claude", "prompt": "session a"})
    assert status == 200 and a["error"] is None, a
    [wa] = workers(live_world, "claude")
    status, b, _ = post(url + "/api/v1/prompt", {"backend": "claude", "prompt": "session b"})
    assert status == 200 and b["error"] is None, b
    [wb] = workers(live_world, "claude")
    assert wb["pid"] != wa["pid"] and wb["backend_session_id"] != wa["backend_session_id"]
    poll(lambda: not pid_alive(wa["pid"]), 10, "the older worker to end")
    # Session a goes on: resumed in a new worker, which takes b's place.
    status, a2, _ = post(url + "/api/v1/prompt", {"backend": "claude", "prompt": "a again", "session_id": a["session_id"]})
    assert status == 200 and "turns=2 last=a again" in a2["output"], a2
    [wa2] = workers(live_world, "claude")
    assert wa2["backend_session_id"] == wa["backend_session_id"] and wa2["pid"] not in (wa["pid"], wb["pid"])


def test_a_pool_whose_cli_cannot_stay_up_backs_off(world):
    """A pooled worker that exits before its first turn is not restarted every second: the
    refill waits 1 s, 2 s, 4 s, … (the fault CLI answers once and exits; it has no live mode)."""
    pooled_world(world)
    from harness import FAKECLI_DIR
    world.write_config(f"backends:\n  claude:\n    command: {FAKECLI_DIR / 'ok'}\n    warm:\n      pool: 1\n")
    proc = world.start_daemon()
    log = proc.log_path
    poll(lambda: "retry_in_secs=4" in log.read_text(), 60, "the refill to back off to 4 s")
    text = log.read_text()
    waits = [int(x) for x in __import__("re").findall(r"retry_in_secs=(\d+)", text)]
    assert waits[:3] == [1, 2, 4], waits
    assert "a pooled worker exited before its first turn" in text


def test_key_holders_see_workers_but_not_whose_session_they_hold(live_world, fake_model):
    live_world.env["CLINVK_API_KEYS"] = "key-one"
    url = start_live(live_world, config("claude"))
    auth = {"Authorization": "Bearer key-one"}
    status, r, _ = post(url + "/api/v1/prompt", {"backend": "claude", "prompt": "mine"}, headers=auth)
    assert status == 200 and r["error"] is None, r
    [owner_view] = workers(live_world, "claude")  # the control socket: the daemon's owner
    assert owner_view["backend_session_id"]
    req = urllib.request.Request(url + "/api/v1/backends", headers=auth)
    b = __import__("json").loads(urllib.request.urlopen(req, timeout=10).read())
    [seen] = next(x for x in b["backends"] if x["name"] == "claude")["workers"]
    assert seen["pid"] == owner_view["pid"] and seen["backend_session_id"] is None, seen
