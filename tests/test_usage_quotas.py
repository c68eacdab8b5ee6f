"""Usage accounting and keys with scopes and quotas (issue 15), against the real CLIs and the fake
model server: the usage store (SQLite) records each run, survives a restart and answers
`clinvkctl usage` and `GET /api/v1/usage`; quotas answer 429 `quota_exceeded` with `Retry-After`
in each API style's shape; scopes and expiry are enforced."""

from __future__ import annotations

import json
import stat

from harness import live_world, poll, start_live  # noqa: F401  (fixture)
from test_safe_default import bearer, call, jpost


def add_key(world, name: str, *flags: str) -> str:
    r = world.ctl("keys", "add", name, *flags)
    assert r.returncode == 0, r.stderr
    key = r.stdout.strip()
    assert key.startswith("ck-"), r.stdout
    return key


def prompt(url: str, key: str, text: str):
    return jpost(url, "/api/v1/prompt", {"backend": "claude", "prompt": text}, bearer(key))


def keys_list(world) -> dict:
    r = world.ctl("keys", "list", "--json")
    assert r.returncode == 0, r.stderr
    return {k["name"]: k for k in json.loads(r.stdout)["keys"]}


def usage(world, by: str) -> dict:
    r = world.ctl("usage", "--by", by, "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_request_quota_usage_by_key_and_restart(live_world):
    url = start_live(live_world)
    limited = add_key(live_world, "limited", "--requests-per-day", "3")
    other = add_key(live_world, "other")
    for i in range(3):
        r = prompt(url, limited, f"quota run {i}")
        assert r.status == 200 and r.json["exit_code"] == 0, r
    r = prompt(url, other, "from the other key")
    assert r.status == 200 and r.json["exit_code"] == 0, r

    # The 4th request of the limited key: 429 in each API style's shape, Retry-After at midnight UTC.
    r = prompt(url, limited, "one too many")
    assert r.status == 429 and r.json["success"] is False and r.code == "quota_exceeded", r
    assert 1 <= int(r.headers["retry-after"]) <= 86400, r.headers
    r = jpost(url, "/openai/v1/chat/completions",
              {"model": "claude", "messages": [{"role": "user", "content": "hi"}]}, bearer(limited))
    assert r.status == 429 and r.json["error"]["code"] == "quota_exceeded", r
    assert int(r.headers["retry-after"]) >= 1
    r = jpost(url, "/anthropic/v1/messages",
              {"model": "claude", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]},
              bearer(limited))
    assert r.status == 429 and r.json["type"] == "error" and r.json["error"]["type"] == "rate_limit_error", r
    assert int(r.headers["retry-after"]) >= 1
    # The other key is not affected.
    assert prompt(url, other, "still fine").status == 200

    listed = keys_list(live_world)
    assert listed["limited"]["today"]["requests"] == 3
    assert listed["limited"]["quotas"] == {"requests_per_day": 3}
    assert listed["limited"]["scope"] == "use"
    text = live_world.ctl("keys", "list").stdout
    assert "requests 3/3" in text, text

    by_key = {g["group"]: g for g in usage(live_world, "key")["groups"]}
    ids = {name: k["id"] for name, k in listed.items()}
    assert by_key[ids["limited"]]["requests"] == 3, by_key
    assert by_key[ids["other"]]["requests"] == 2, by_key
    assert by_key[ids["limited"]]["output_tokens"] > 0, "tokens as the CLI reported them"
    assert by_key[ids["limited"]]["cost_usd"] > 0, "claude reports its own cost"

    # The same report over HTTP (an admin key sees every key; another only its own).
    admin = add_key(live_world, "admin", "--scope", "admin")
    r = call(url, "GET", "/api/v1/usage?by=key&since=1d", headers=bearer(admin))
    assert r.status == 200, r
    assert {g["group"]: g["requests"] for g in r.json["groups"]} == {ids["limited"]: 3, ids["other"]: 2}
    r = call(url, "GET", "/api/v1/usage?by=key", headers=bearer(other))
    assert [g["group"] for g in r.json["groups"]] == [ids["other"]]

    db = live_world.state_dir / "usage.db"
    assert stat.S_IMODE(db.stat().st_mode) == 0o600

    # Rows and quotas survive a restart.
    live_world.ctl("stop", "--timeout", "20", timeout=30)
    live_world.start_daemon()
    url = live_world.url
    after = {g["group"]: g["requests"] for g in usage(live_world, "key")["groups"]}
    assert after == {ids["limited"]: 3, ids["other"]: 2}
    assert prompt(url, limited, "after the restart").status == 429
    by_backend = usage(live_world, "backend")
    assert [g["group"] for g in by_backend["groups"]] == ["claude"]
    assert by_backend["total"]["requests"] == 5


def test_token_quota(live_world):
    url = start_live(live_world)
    key = add_key(live_world, "tokens", "--tokens-per-day", "10")
    r = prompt(url, key, "spend some tokens")
    assert r.status == 200 and r.json["exit_code"] == 0, r
    spent = r.json["token_usage"]["input_tokens"] + r.json["token_usage"]["output_tokens"]
    assert spent >= 10, r.json
    r = prompt(url, key, "over the token quota")
    assert r.status == 429 and r.code == "quota_exceeded", r
    assert "tokens" in r.message
    assert int(r.headers["retry-after"]) >= 1
    assert keys_list(live_world)["tokens"]["today"]["tokens"] == spent


def test_scopes_and_expiry(live_world):
    url = start_live(live_world)
    reader = add_key(live_world, "reader", "--scope", "read")
    user = add_key(live_world, "user")
    admin = add_key(live_world, "admin", "--scope", "admin")
    expired = add_key(live_world, "expired", "--expires", "1s")
    # read: lists, but does not run.
    assert call(url, "GET", "/api/v1/sessions", headers=bearer(reader)).status == 200
    r = call(url, "GET", "/api/v1/backends", headers=bearer(reader))
    assert r.status == 200 and r.json["capacity"]["max_concurrent"] == 8, r
    assert r.json["capacity"]["queue_size"] == 32 and r.json["capacity"]["queued"] == 0, r
    assert call(url, "GET", "/api/v1/usage", headers=bearer(reader)).status == 200
    r = prompt(url, reader, "may I?")
    assert r.status == 403 and r.code == "insufficient_scope", r
    # use: runs, but does not manage keys.
    assert prompt(url, user, "I may").status == 200
    r = call(url, "GET", "/api/v1/keys", headers=bearer(user))
    assert r.status == 403 and r.code == "insufficient_scope", r
    # admin: manages keys over HTTP; the new key works and stops working when revoked.
    r = jpost(url, "/api/v1/keys", {"name": "made-over-http", "scope": "read"}, bearer(admin))
    assert r.status == 200 and r.json["scope"] == "read", r
    new_key, new_id = r.json["key"], r.json["id"]
    assert call(url, "GET", "/api/v1/sessions", headers=bearer(new_key)).status == 200
    r = jpost(url, "/api/v1/keys", {"name": "x", "bogus": 1}, bearer(admin))
    assert r.status == 400 and "bogus" in r.message, r
    listed = call(url, "GET", "/api/v1/keys", headers=bearer(admin)).json["keys"]
    assert "made-over-http" in [k["name"] for k in listed]
    assert all("sha256" not in k and "key" not in k for k in listed)
    assert call(url, "DELETE", f"/api/v1/keys/{new_id}", headers=bearer(admin)).status == 200
    r = call(url, "GET", "/api/v1/sessions", headers=bearer(new_key))
    assert r.status == 401 and r.code == "invalid_api_key", r
    # An expired key: 401 once its second is over.
    r = poll(lambda: (lambda r: r if r.status == 401 else None)(
        call(url, "GET", "/api/v1/sessions", headers=bearer(expired))), 10, "the key to expire")
    assert r.code == "expired_api_key", r
    assert keys_list(live_world)["expired"]["expired"] is True


def test_old_key_files_keep_working_as_use_keys(live_world):
    import hashlib
    secret = "ck-an-old-key-without-a-scope"
    live_world.state_dir.mkdir(parents=True, exist_ok=True)
    keys = live_world.state_dir / "keys.json"
    keys.write_text(json.dumps([{
        "id": "old000000001", "name": "old", "sha256": hashlib.sha256(secret.encode()).hexdigest(),
        "prefix": secret[:8], "created_at": "2026-01-01T00:00:00Z"}]))
    keys.chmod(0o600)
    url = start_live(live_world)
    r = prompt(url, secret, "an old key runs")
    assert r.status == 200 and r.json["exit_code"] == 0, r
    assert call(url, "GET", "/api/v1/keys", headers=bearer(secret)).status == 403
    assert keys_list(live_world)["old"]["scope"] == "use"


def metric(url: str, key: str, name: str) -> float:
    r = call(url, "GET", "/metrics", headers=bearer(key))
    assert r.status == 200, r
    values = [float(line.split()[-1]) for line in r.raw.decode().splitlines()
              if line.startswith(name) and not line.startswith("#")]
    return sum(values)


def test_a_corrupt_or_locked_usage_store_never_stops_a_run(live_world):
    import sqlite3
    live_world.state_dir.mkdir(parents=True, exist_ok=True)
    (live_world.state_dir / "usage.db").write_bytes(b"this is not a database" * 400)
    url = start_live(live_world)
    key = add_key(live_world, "k", "--requests-per-day", "100")
    # The corrupt file was moved aside, counted, and a new store started.
    assert list(live_world.state_dir.glob("usage.db.corrupt-*")), sorted(live_world.state_dir.iterdir())
    assert metric(url, key, "clinvk_usage_store_errors_total") >= 1
    r = prompt(url, key, "after the corruption")
    assert r.status == 200 and r.json["exit_code"] == 0, r
    assert usage(live_world, "key")["total"]["requests"] == 1

    # Locked by another process: the run goes on unrecorded; the failure is counted.
    before = metric(url, key, "clinvk_usage_store_errors_total")
    db = sqlite3.connect(live_world.state_dir / "usage.db", timeout=1, isolation_level=None)
    db.execute("BEGIN EXCLUSIVE")
    try:
        r = prompt(url, key, "while the store is locked")
        assert r.status == 200 and r.json["exit_code"] == 0, r
    finally:
        db.execute("ROLLBACK")
        db.close()
    assert metric(url, key, "clinvk_usage_store_errors_total") > before
    r = prompt(url, key, "unlocked again")
    assert r.status == 200, r
    assert usage(live_world, "key")["total"]["requests"] == 2, "the locked run is the one not recorded"


def test_live_runs_and_cancel_over_http(live_world, fake_model):
    """`GET /api/v1/live` (JSON without `Accept: text/event-stream`) lists a held run to its key
    and to admins only; `POST /api/v1/runs/{id}/cancel` ends it (warm mode: the turn is
    interrupted) and the stream says so; the usage store counts it as a failed run."""
    import http.client
    import urllib.parse
    url = start_live(live_world)
    a, b = add_key(live_world, "a"), add_key(live_world, "b")
    admin = add_key(live_world, "admin", "--scope", "admin")
    ids = {name: k["id"] for name, k in keys_list(live_world).items()}
    u = urllib.parse.urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=120)
    conn.request("POST", "/api/v1/prompt", body=json.dumps(
        {"backend": "claude", "prompt": "hold on [[gate]]", "output_format": "stream-json"}),
        headers={"Content-Type": "application/json", **bearer(a)})
    resp = conn.getresponse()
    assert resp.status == 200
    try:
        while True:  # the first piece: the run is going, the fake model holds the rest
            ev = json.loads(resp.readline())
            if ev["type"] == "message":
                break
        r = call(url, "GET", "/api/v1/live", headers=bearer(a))
        assert r.status == 200 and r.headers["content-type"] == "application/json", r
        [run] = r.json["runs"]
        assert (run["backend"], run["key_id"], run["api_style"]) == ("claude", ids["a"], "native"), run
        assert run["session_id"] == ev["session_id"]
        assert call(url, "GET", "/api/v1/live", headers=bearer(b)).json["runs"] == []
        assert [x["id"] for x in call(url, "GET", "/api/v1/live", headers=bearer(admin)).json["runs"]] == [run["id"]]
        r = jpost(url, f"/api/v1/runs/{run['id']}/cancel", {}, bearer(b))
        assert r.status == 404 and r.code == "run_not_found", r
        r = jpost(url, f"/api/v1/runs/{run['id']}/cancel", {"force": True}, bearer(a))
        assert r.status == 400 and "force" in r.message, r
        r = jpost(url, f"/api/v1/runs/{run['id']}/cancel", {}, bearer(a))
        assert r.status == 200 and r.json == {"id": run["id"], "cancelled": True}, r
        rest = [json.loads(line) for line in resp.read().splitlines() if line.strip()]
    finally:
        conn.close()
        fake_model.release()
    assert rest[-1]["type"] == "done" and rest[-1]["content"]["error"] == "cancelled", rest
    assert any(e["type"] == "error" and e["content"]["message"] == "cancelled" for e in rest), rest
    assert call(url, "GET", "/api/v1/live", headers=bearer(admin)).json["runs"] == []
    mine = {g["group"]: g for g in usage(live_world, "key")["groups"]}[ids["a"]]
    assert (mine["requests"], mine["errors"]) == (1, 1), mine

    # A client that leaves mid-stream: its run is recorded as ended (not left "running").
    fake_model.reset()  # arms [[gate]] again
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=120)
    conn.request("POST", "/api/v1/prompt", body=json.dumps(
        {"backend": "claude", "prompt": "leave me [[gate]]", "output_format": "stream-json"}),
        headers={"Content-Type": "application/json", **bearer(b)})
    resp = conn.getresponse()
    while json.loads(resp.readline())["type"] != "message":
        pass
    conn.close()
    fake_model.release()

    def b_row():
        groups = {g["group"]: g for g in usage(live_world, "key")["groups"]}
        g = groups.get(ids["b"])
        return g if g and g["errors"] == 1 else None
    g = poll(b_row, 30, "the abandoned run's row to be closed")
    assert g["requests"] == 1
