"""The native REST API (/api/v1) and the clinvk commands, against the real CLIs and the fake
model server (fault CLIs where a real one cannot be made to misbehave)."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from conftest import TESTED_VERSIONS
from harness import FAKECLI_DIR, binary, get_json, live_world, poll, post, start_live  # noqa: F401


def test_client_mistakes_are_4xx_in_the_native_shape(live_world, tmp_path):
    url = start_live(live_world, "server:\n  max_request_body_bytes: 2048\n")
    p = url + "/api/v1/prompt"
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    cases = [
        (b"{not json", 400, "invalid_request"),
        (b"", 400, "invalid_json"),
        ({"backend": "claude"}, 400, "missing_field"),
        ({"backend": "claude", "prompt": "   "}, 400, "missing_field"),
        ({"prompt": "hi"}, 400, "missing_field"),
        ({"backend": "nope", "prompt": "hi"}, 400, "unknown_backend"),
        ({"backend": "claude", "prompt": "hi", "workdir": "relative/dir"}, 400, "invalid_workdir"),
        # The same refusal whether or not the folder exists (no probing of the file system).
        ({"backend": "claude", "prompt": "hi", "workdir": "/does/not/exist"}, 400, "workdir_not_allowed"),
        ({"backend": "claude", "prompt": "hi", "workdir": str(a_file)}, 400, "workdir_not_allowed"),
        ({"backend": "claude", "prompt": "hi", "workdir": "/etc"}, 400, "workdir_not_allowed"),
        ({"backend": "claude", "prompt": "hi", "extra": ["--dangerously-skip-permissions"]}, 400, "invalid_flags"),
        ({"backend": "claude", "prompt": "hi", "approval_mode": "sometimes"}, 400, "invalid_request"),
        ({"backend": "claude", "prompt": "hi", "max_turns": "many"}, 400, "invalid_request"),
        ({"backend": "claude", "prompt": "hi", "session_id": "no-such-session"}, 404, "session_not_found"),
        # Fields that would do nothing are refused, not ignored.
        ({"backend": "claude", "prompt": "hi", "bogus": 1}, 400, "invalid_request"),
        ({"backend": "claude", "prompt": "hi", "max_tokens": 100}, 400, "unsupported_field"),
        ({"backend": "claude", "prompt": "hi", "verbose": True}, 400, "unsupported_field"),
        ({"backend": "claude", "prompt": "x" * 3000}, 413, "request_too_large"),
    ]
    for body, status, code in cases:
        got, r, _ = post(p, body)
        assert (got, r.get("code") if isinstance(r, dict) else r) == (status, code), (body if len(str(body)) < 200 else "big", r)
        assert r["success"] is False and r["error"]
    assert get_json(url + "/api/v1/sessions/nope-no-such-id")[0] == 404
    assert get_json(url + "/api/v1/sessions/nope")[0] == 400, "prefixes under 8 characters are refused"
    assert post(url + "/api/v1/parallel", {"tasks": []})[0] == 400
    s, r, _ = post(url + "/api/v1/prompt", {"backend": "claude", "prompt": "hi", "bogus": 1})
    assert "bogus" in r["error"], r
    for path, body in [("/api/v1/parallel", {"tasks": [{"backend": "claude", "prompt": "x", "nope": 1}]}),
                       ("/api/v1/chain", {"steps": [{"name": "a", "prompt": "x", "nope": 1}]}),
                       ("/api/v1/compare", {"backends": ["claude"], "prompt": "x", "nope": 1}),
                       ("/api/v1/parallel", {"tasks": [], "nope": 1})]:
        s, r, _ = post(url + path, body)
        assert s == 400 and "nope" in r["error"], (path, r)
    assert get_json(url + "/api/v1/sessions?color=blue")[0] == 400
    assert post(url + "/api/v1/chain", {"steps": [{"backend": "claude"}]})[0] == 400
    assert post(url + "/api/v1/compare", {"backends": [], "prompt": "x"})[0] == 400
    s, r = get_json(url + "/api/v1/sessions?limit=lots")
    assert s == 400
    assert live_world.status()["sessions"] == 0, "nothing was started by a bad request"


def test_workdir_policy_respects_path_boundaries(live_world, tmp_path):
    allowed = tmp_path / "proj"
    (allowed / "sub").mkdir(parents=True)
    sibling = tmp_path / "proj-evil"
    sibling.mkdir()
    link = tmp_path / "link-to-etc"
    link.symlink_to("/etc")
    url = start_live(live_world, f"server:\n  allowed_workdir_prefixes: ['{allowed}']\n")
    ok = {"backend": "claude", "prompt": "x", "dry_run": True}
    assert post(url + "/api/v1/prompt", {**ok, "workdir": str(allowed / "sub")})[0] == 200
    assert post(url + "/api/v1/prompt", {**ok, "workdir": str(sibling)})[1]["code"] == "workdir_not_allowed"
    assert post(url + "/api/v1/prompt", {**ok, "workdir": str(link)})[1]["code"] == "workdir_not_allowed"


def test_backends_and_health_list_versions(live_world):
    url = start_live(live_world)
    s, b = get_json(url + "/api/v1/backends")
    assert s == 200
    by = {x["name"]: x for x in b["backends"]}
    assert set(by) == set(TESTED_VERSIONS)
    assert all(x["available"] for x in by.values()), by
    for name, version in TESTED_VERSIONS.items():
        assert version in by[name]["version"], by
    s, h = get_json(url + "/health")
    assert h["status"] == "ok" and {x["name"] for x in h["backends"] if x["available"]} == set(by)


def sample_max_runs(world, stop: threading.Event, out: list):
    while not stop.is_set():
        st = world.status()
        if st:
            out.append(len(st["runs"]))


def test_parallel_respects_max_parallel(live_world):
    url = start_live(live_world, f"backends:\n  claude:\n    command: {FAKECLI_DIR / 'slow-ok'}\n    mode: oneshot\n")
    seen: list[int] = []
    stop = threading.Event()
    t = threading.Thread(target=sample_max_runs, args=(live_world, stop, seen))
    t.start()
    tasks = [{"backend": "claude", "prompt": f"task {i} a b"} for i in range(6)]
    s, r, _ = post(url + "/api/v1/parallel", {"tasks": tasks, "max_parallel": 2})
    stop.set()
    t.join()
    assert s == 200, r
    assert r["total_tasks"] == 6 and r["completed"] == 6 and r["failed"] == 0
    assert [f"task {i} a b" in x["output"] for i, x in enumerate(r["results"])] == [True] * 6
    assert max(seen) == 2, f"at most 2 CLIs at once, and 2 were reached: {seen}"


def test_parallel_fail_fast_reports_every_task(live_world):
    url = start_live(live_world)
    tasks = [{"backend": "claude", "prompt": "[[error]] boom"}] + [
        {"backend": "claude", "prompt": f"[[slow:3000]] slow {i} a b c d e"} for i in range(3)]
    s, r, _ = post(url + "/api/v1/parallel", {"tasks": tasks, "max_parallel": 4, "fail_fast": True})
    assert s == 200, r
    assert r["completed"] + r["failed"] == r["total_tasks"] == 4
    assert r["failed"] == 4, r
    assert "injected error" in r["results"][0]["error"]
    assert all(x["error"] == "cancelled" for x in r["results"][1:]), r["results"]
    poll(lambda: live_world.status()["runs"] == [], 10, "cancelled runs to be gone")


def test_chain_passes_real_output(live_world, fake_model):
    url = start_live(live_world)
    steps = [
        {"name": "first", "backend": "claude", "prompt": "alpha beta"},
        {"name": "second", "backend": "codex", "prompt": "summarize: {{previous}}"},
    ]
    s, r, _ = post(url + "/api/v1/chain", {"steps": steps, "stop_on_failure": True})
    assert s == 200, r
    assert r["total_steps"] == 2 and r["completed_steps"] == 2 and r["failed_step"] is None
    first_out = r["results"][0]["output"]
    assert "last=alpha beta" in first_out
    codex_req = fake_model.requests("responses")[-1]
    assert first_out[:40] in codex_req["last_user"] or "fake-reply turns=1" in codex_req["last_user"], codex_req
    # A failing step stops the chain.
    steps[0]["prompt"] = "[[error]] no"
    s, r, _ = post(url + "/api/v1/chain", {"steps": steps})
    assert r["failed_step"] == 1 and len(r["results"]) == 1


def test_compare(live_world):
    url = start_live(live_world)
    s, r, _ = post(url + "/api/v1/compare", {"backends": ["claude", "codex", "gemini"], "prompt": "compare me"})
    assert s == 200, r
    assert [x["backend"] for x in r["results"]] == ["claude", "codex", "gemini"]
    assert all("last=compare me" in x["output"] and x["exit_code"] == 0 for x in r["results"]), r


def test_sessions_listing_filters_pages_delete_and_restart(live_world):
    url = start_live(live_world, f"backends:\n  claude:\n    command: {FAKECLI_DIR / 'ok'}\n    mode: oneshot\n")
    ids = []
    for i in range(3):
        s, r, _ = post(url + "/api/v1/prompt", {"backend": "claude", "prompt": f"p{i}"})
        ids.append(r["session_id"])
    s, l = get_json(url + "/api/v1/sessions?limit=2&offset=0&backend=claude")
    assert l["total"] == 3 and len(l["sessions"]) == 2 and l["limit"] == 2
    assert [x["id"] for x in l["sessions"]] == ids[::-1][:2], "newest first"
    assert get_json(url + "/api/v1/sessions?backend=codex")[1]["total"] == 0
    assert get_json(url + "/api/v1/sessions?status=completed")[1]["total"] == 3
    import urllib.request
    req = urllib.request.Request(url + f"/api/v1/sessions/{ids[0]}", method="DELETE")
    with urllib.request.urlopen(req) as resp:
        assert json.loads(resp.read())["deleted"] is True
    # Sessions survive a restart.
    assert live_world.ctl("stop").returncode == 0
    url = live_world.start_daemon().status["http_url"]
    l = get_json(url + "/api/v1/sessions")[1]
    assert sorted(x["id"] for x in l["sessions"]) == sorted(ids[1:])


def test_kill9_while_20_prompts_write_sessions(live_world):
    url = start_live(live_world, f"limits:\n  max_concurrent: 25\nbackends:\n  claude:\n    command: {FAKECLI_DIR / 'slow-ok'}\n    mode: oneshot\n")
    pid = live_world.status()["pid"]
    def fire(i):
        try:
            post(url + "/api/v1/prompt", {"backend": "claude", "prompt": f"n{i} a b c d"}, timeout=30)
        except OSError:
            pass  # the daemon is killed under it: expected

    threads = [threading.Thread(target=fire, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    poll(lambda: len(live_world.status()["runs"]) == 20, 30, "20 runs in flight")
    os.kill(pid, signal.SIGKILL)
    for t in threads:
        t.join()
    files = list((live_world.state_dir / "sessions").glob("*.json"))
    assert len(files) == 20
    for f in files:
        json.loads(f.read_text())  # every file parseable
    url = live_world.start_daemon().status["http_url"]
    l = get_json(url + "/api/v1/sessions")[1]
    assert l["total"] == 20
    assert {x["status"] for x in l["sessions"]} == {"interrupted"}


def test_concurrent_prompts_on_one_session_are_serialised(live_world, fake_model):
    url = start_live(live_world)
    s, r, _ = post(url + "/api/v1/prompt", {"backend": "claude", "prompt": "first"})
    sid = r["session_id"]
    results = []
    ts = [threading.Thread(target=lambda i=i: results.append(post(url + "/api/v1/prompt", {"session_id": sid, "prompt": f"[[slow:200]] next {i}"})[1])) for i in range(2)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    turns = sorted(int(x["output"].split("turns=")[1].split()[0]) for x in results)
    assert turns == [2, 3], results
    assert get_json(url + f"/api/v1/sessions/{sid}")[1]["turn_count"] == 3


def test_clinvk_commands_drive_the_daemon(live_world, fake_model, tmp_path):
    live_world.write_config("server:\n  port: 0\n")
    w = live_world
    r = w.clinvk("-b", "claude", "hello from the cli", cwd=w.workdir)
    assert r.returncode == 0, r.stderr
    assert "fake-reply turns=1 last=hello from the cli" in r.stdout
    assert "starting clinvkd" in r.stderr, "the daemon is started on demand"
    r = w.clinvk("resume", "--last", "once more", cwd=w.workdir)
    assert r.returncode == 0 and "turns=2 last=once more" in r.stdout, (r.stdout, r.stderr)
    r = w.clinvk("-b", "codex", "-o", "json", "json please", cwd=w.workdir)
    res = json.loads(r.stdout)
    assert res["exit_code"] == 0 and "last=json please" in res["output"]
    r = w.clinvk("-b", "gemini", "-o", "stream-json", "events please", cwd=w.workdir)
    kinds = [json.loads(l)["type"] for l in r.stdout.splitlines()]
    assert kinds[0] == "init" and kinds[-1] == "done" and kinds.count("message") >= 2, kinds
    r = w.clinvk("--dry-run", "-b", "claude", "-m", "opus", "dry", cwd=w.workdir)
    assert r.returncode == 0 and "--model" in json.loads(r.stdout)["command"]
    r = w.clinvk("-b", "claude", "[[error]] bad", cwd=w.workdir)
    assert r.returncode == 1 and "injected error" in r.stderr

    r = w.clinvk("sessions", "list", "--json")
    sessions = json.loads(r.stdout)["sessions"]
    assert len(sessions) == 4
    first = next(s for s in sessions if s["turn_count"] == 2)
    r = w.clinvk("sessions", "show", first["id"][:8])
    assert "hello from the cli" in r.stdout and "once more" in r.stdout
    assert w.clinvk("sessions", "delete", first["id"]).returncode == 0
    assert "3 of 3" in w.clinvk("sessions", "list").stdout
    r = w.clinvk("sessions", "clean", "--older-than", "30d")
    assert r.returncode == 0 and "deleted 0" in r.stdout

    tasks = tmp_path / "tasks.json"
    tasks.write_text(json.dumps({"tasks": [{"backend": "claude", "prompt": "t1"}, {"backend": "codex", "prompt": "t2"}]}))
    r = w.clinvk("parallel", "--file", tasks, "--json")
    out = json.loads(r.stdout)
    assert r.returncode == 0 and out["completed"] == 2, out
    assert "[1/2] task" in r.stderr and "[2/2] task" in r.stderr, r.stderr  # progress per task
    chain = tmp_path / "chain.json"
    chain.write_text(json.dumps({"steps": [{"backend": "claude", "prompt": "one"}, {"backend": "claude", "prompt": "two {{previous}}"}]}))
    r = w.clinvk("chain", "--file", chain)
    assert r.returncode == 0 and "2 of 2 steps completed" in r.stdout
    r = w.clinvk("compare", "--backends", "claude,codex", "same question", cwd=w.workdir)
    assert r.returncode == 0 and r.stdout.count("last=same question") == 2, r.stdout


def test_ctrl_c_cancels_the_run_in_the_daemon(live_world):
    live_world.write_config(f"server:\n  port: 0\nbackends:\n  claude:\n    command: {FAKECLI_DIR / 'hang'}\n    mode: oneshot\n")
    assert live_world.clinvk("serve", "--detach").returncode == 0
    p = live_world.popen(binary("clinvk"), "-b", "claude", "wait forever")
    run = poll(lambda: (st := live_world.status()) and st["runs"] and st["runs"][0], 20, "the run to start")
    p.send_signal(signal.SIGINT)
    assert p.wait(timeout=10) == 130
    poll(lambda: live_world.status()["runs"] == [], 5, "the run to be cancelled")
    assert not Path(f"/proc/{run['pid']}").exists() or "Z" in Path(f"/proc/{run['pid']}/stat").read_text().split(")")[1][:3]


def test_reasoning_effort_through_the_clis_setting_or_refused(live_world):
    url = start_live(live_world)
    wd = str(live_world.workdir)
    body = {"prompt": "x", "reasoning_effort": "high", "workdir": wd, "dry_run": True}
    status, d, _ = post(url + "/api/v1/prompt", {**body, "backend": "claude"})
    assert status == 200, d
    argv = d["command"]
    assert argv[argv.index("--effort") + 1] == "high"
    assert "--effort" in d["worker_command"]
    status, d, _ = post(url + "/api/v1/prompt", {**body, "backend": "copilot"})
    assert status == 200 and "--reasoning-effort=high" in d["command"], d
    assert d["stdin"] is False
    # opencode takes every prompt on stdin (its `run` would quote argv words): the dry run says so.
    status, d, _ = post(url + "/api/v1/prompt", {**body, "backend": "opencode", "reasoning_effort": None,
                                                 "prompt": "a unique prompt"})
    assert status == 200 and d["stdin"] is True and "a unique prompt" not in " ".join(d["command"]), d
    # A CLI without such a setting: never silently dropped.
    status, e, _ = post(url + "/api/v1/prompt", {**body, "backend": "gemini"})
    assert status == 400 and e["code"] == "unsupported_field" and "reasoning_effort" in e["error"], e
    status, e, _ = post(url + "/api/v1/prompt", {**body, "backend": "claude", "reasoning_effort": "huge"})
    assert status == 400 and "reasoning_effort" in e["error"], e
