"""Safe by default: what a browser page, a network neighbour, another key holder or a careless
request can (not) make the daemon do. Each test runs clinvkd in its own temporary HOME with a
fake claude CLI (tests/fakecli) and speaks raw HTTP (http.client / sockets), so every header is
exactly what the test sends."""

from __future__ import annotations

import http.client
import json
import os
import selectors
import signal
import socket
import stat
import struct
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from harness import CONTROL_PROTOCOL, FAKECLI_DIR, World, binary, pid_alive, poll, world  # noqa: F401  (fixture)

# --------------------------------------------------------------------------------------------
# helpers


def fake(name: str) -> str:
    return str(FAKECLI_DIR / name)


@dataclass
class Resp:
    status: int
    headers: dict = field(repr=False)
    raw: bytes = b""

    @property
    def json(self):
        try:
            return json.loads(self.raw)
        except ValueError:
            return None

    @property
    def code(self):
        """The machine code of an error in any API style (native, OpenAI); None otherwise."""
        body = self.json
        if not isinstance(body, dict):
            return None
        if isinstance(body.get("error"), dict):
            return body["error"].get("code")
        return body.get("code")

    @property
    def message(self) -> str:
        body = self.json
        if not isinstance(body, dict):
            return ""
        if isinstance(body.get("error"), dict):
            return body["error"].get("message", "")
        return str(body.get("error", ""))


def hostport(url: str) -> tuple[str, int]:
    u = urllib.parse.urlsplit(url)
    return u.hostname, u.port


def call(url: str, method: str, path: str, body=None, headers: dict | None = None,
         timeout: float = 60) -> Resp:
    """One request with exactly these headers (http.client adds Host unless given, and
    Content-Length for a body; never a Content-Type)."""
    host, port = hostport(url)
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    data = json.dumps(body).encode() if isinstance(body, (dict, list)) else body
    try:
        conn.request(method, path, body=data, headers=headers or {})
        r = conn.getresponse()
        return Resp(r.status, {k.lower(): v for k, v in r.getheaders()}, r.read())
    finally:
        conn.close()


JSON = {"Content-Type": "application/json"}


def jpost(url: str, path: str, body, headers: dict | None = None, **kw) -> Resp:
    return call(url, "POST", path, body, {**JSON, **(headers or {})}, **kw)


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def start(world: World, config: str = "", env: dict | None = None, *args) -> str:
    """Writes the config, starts clinvkd and returns its URL."""
    world.env.update(env or {})
    world.write_config(config or "# test\n")
    return world.start_daemon(*args).status["http_url"]


def claude_config(cli: str, claude_extra: str = "", rest: str = "") -> str:
    """A config whose claude is the fake CLI `cli`; `claude_extra` is YAML indented under
    `backends.claude`, `rest` is top-level YAML."""
    text = f"backends:\n  claude:\n    command: {fake(cli)}\n    mode: oneshot\n"
    if claude_extra:
        text += "".join(f"    {line}\n" for line in claude_extra.strip("\n").splitlines())
    text += rest
    if "limits:" not in rest:
        text += "\nlimits:\n  kill_grace_secs: 1\n"
    return text


def runs(world: World) -> list[dict]:
    st = world.status()
    return st["runs"] if st else []


def proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (state, ppid, pgrp, …)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def pgid_of(pid: int) -> int | None:
    f = proc_stat(pid)
    return int(f[2]) if f else None


def group_members(pgid: int) -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            f = proc_stat(int(d))
            if f and int(f[2]) == pgid and f[0] != "Z":
                out.append(int(d))
    return out


def raw_request(url: str, method: str, path: str, body: bytes, headers: dict | None = None
                ) -> socket.socket:
    """Sends a request on a fresh socket and returns the socket (nothing read)."""
    host, port = hostport(url)
    s = socket.create_connection((host, port), timeout=30)
    head = f"{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
    for k, v in {**JSON, **(headers or {}), "Content-Length": str(len(body))}.items():
        head += f"{k}: {v}\r\n"
    s.sendall(head.encode() + b"\r\n" + body)
    return s


def readable(sock: socket.socket) -> bool:
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_READ)
    try:
        return bool(sel.select(timeout=0))
    finally:
        sel.close()


def frame(obj) -> bytes:
    data = json.dumps(obj).encode()
    return struct.pack(">I", len(data)) + data


PROMPT = {"backend": "claude", "prompt": "hi"}
OPENAI_CHAT = {"model": "claude", "messages": [{"role": "user", "content": "hi"}]}
ANTHROPIC_MSG = {"model": "claude", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}

# Every POST route, with a body that WOULD run claude if the request got through.
POST_ROUTES = [
    ("/api/v1/prompt", PROMPT),
    ("/api/v1/parallel", {"tasks": [PROMPT]}),
    ("/api/v1/chain", {"steps": [PROMPT]}),
    ("/api/v1/compare", {"backends": ["claude"], "prompt": "hi"}),
    ("/openai/v1/chat/completions", OPENAI_CHAT),
    ("/anthropic/v1/messages", ANTHROPIC_MSG),
]


def dry(url: str, body: dict, headers: dict | None = None) -> Resp:
    return jpost(url, "/api/v1/prompt", {**PROMPT, "dry_run": True, **body}, headers)


# --------------------------------------------------------------------------------------------
# 1. browsers


def test_cross_site_and_form_posts_never_start_a_cli(world, tmp_path):
    log = tmp_path / "cli-started.log"
    url = start(world, claude_config("record-start", f"env:\n  FAKECLI_START_LOG: {log}"))
    own = "http://" + "%s:%d" % hostport(url)
    evil = {"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"}
    answers = []
    for path, body in POST_ROUTES:
        data = json.dumps(body).encode()
        attempts = {
            "cross-site text/plain": call(url, "POST", path, data, {**evil, "Content-Type": "text/plain"}),
            "cross-site form": call(url, "POST", path, data,
                                    {**evil, "Content-Type": "application/x-www-form-urlencoded"}),
            "cross-site multipart": call(url, "POST", path, data,
                                         {**evil, "Content-Type": "multipart/form-data; boundary=x"}),
            "Origin null, JSON": call(url, "POST", path, data, {"Origin": "null", **JSON}),
            "text/plain, no Origin": call(url, "POST", path, data, {"Content-Type": "text/plain"}),
        }
        for what, r in attempts.items():
            answers.append((path, what, r.status, r.raw[:200]))
        assert attempts["Origin null, JSON"].status == 403, (path, attempts["Origin null, JSON"])
        assert attempts["text/plain, no Origin"].status == 415, (path, attempts["text/plain, no Origin"])
        if path.startswith("/api/"):
            assert attempts["Origin null, JSON"].code == "origin_not_allowed"
            assert attempts["text/plain, no Origin"].code == "unsupported_media_type"
    bad = [a for a in answers if a[2] not in (403, 415)]
    assert not bad, bad
    assert not log.exists(), f"a CLI was started: {log.read_text()}"
    # Control: the same POST as the daemon's own /docs page sends it runs the CLI.
    r = jpost(url, "/api/v1/prompt", PROMPT, {"Origin": own, "Sec-Fetch-Site": "same-origin"})
    assert r.status == 200 and r.json["exit_code"] == 0, r
    assert log.exists() and len(log.read_text().splitlines()) == 1


def test_origin_content_type_and_preflight_rules(world, tmp_path):
    url = start(world, claude_config("ok"))
    own = "http://" + "%s:%d" % hostport(url)
    # cors_allowed_origins is empty by default: a local dev server's origin is foreign too.
    for origin in ("http://localhost:3000", "http://localhost", "null", "https://evil.example",
                   own + ".evil.example", "http://127.0.0.1"):
        r = call(url, "GET", "/api/v1/sessions", headers={"Origin": origin})
        assert r.status == 403 and r.code == "origin_not_allowed", (origin, r)
        assert "access-control-allow-origin" not in r.headers
        p = call(url, "OPTIONS", "/api/v1/prompt", headers={
            "Origin": origin, "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type"})
        assert p.status == 403, ("preflight", origin, p)
        assert "access-control-allow-origin" not in p.headers
    r = call(url, "GET", "/api/v1/sessions", headers={"Sec-Fetch-Site": "cross-site"})
    assert r.status == 403 and r.code == "origin_not_allowed", r
    # Other API styles answer in their own shape.
    r = call(url, "GET", "/openai/v1/models", headers={"Origin": "https://evil.example"})
    assert r.status == 403 and isinstance(r.json["error"], dict), r
    r = jpost(url, "/anthropic/v1/messages", ANTHROPIC_MSG, {"Origin": "https://evil.example"})
    assert r.status == 403 and r.json["type"] == "error", r
    # The daemon's own origin is fine (the /docs page), with JSON in any charset.
    r = call(url, "GET", "/api/v1/sessions", headers={"Origin": own, "Sec-Fetch-Site": "same-origin"})
    assert r.status == 200, r
    r = call(url, "POST", "/api/v1/prompt", {**PROMPT, "dry_run": True},
             {"Origin": own, "Sec-Fetch-Site": "same-origin",
              "Content-Type": "application/json; charset=utf-8"})
    assert r.status == 200 and r.json["dry_run"] is True, r
    # A body must be JSON.
    body = json.dumps({**PROMPT, "dry_run": True}).encode()
    for ctype in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=b",
                  None):
        r = call(url, "POST", "/api/v1/prompt", body, {"Content-Type": ctype} if ctype else {})
        assert r.status == 415 and r.code == "unsupported_media_type", (ctype, r)
    r = call(url, "POST", "/openai/v1/chat/completions", json.dumps(OPENAI_CHAT).encode(),
             {"Content-Type": "text/plain"})
    assert r.status == 415 and isinstance(r.json["error"], dict), r


def test_configured_and_wildcard_origins(world):
    url = start(world, claude_config("ok", rest="server:\n  cors_allowed_origins: ['http://localhost:3000']\n"))
    p = call(url, "OPTIONS", "/openai/v1/chat/completions", headers={
        "Origin": "http://localhost:3000", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type"})
    assert p.status == 204 and p.headers["access-control-allow-origin"] == "http://localhost:3000", p
    r = dry(url, {}, {"Origin": "http://localhost:3000"})
    assert r.status == 200 and r.headers["access-control-allow-origin"] == "http://localhost:3000"
    assert call(url, "GET", "/api/v1/sessions", headers={"Origin": "http://localhost:3001"}).status == 403
    world.write_config(claude_config("ok", rest="server:\n  cors_allowed_origins: ['*']\n"
                                                "  cors_allow_credentials: true\n"))
    assert world.ctl("reload").returncode == 0
    for r in (call(url, "GET", "/api/v1/sessions", headers={"Origin": "https://any.example"}),
              call(url, "OPTIONS", "/api/v1/prompt", headers={
                  "Origin": "https://any.example", "Access-Control-Request-Method": "POST"})):
        assert r.status in (200, 204), r
        assert r.headers.get("access-control-allow-origin") == "*", r.headers
        assert "access-control-allow-credentials" not in r.headers, r.headers


def test_host_header_must_be_local(world):
    url = start(world, claude_config("ok", rest="server:\n  allowed_hosts: ['myhost.lan']\n"))
    _, port = hostport(url)
    r = jpost(url, "/api/v1/prompt", PROMPT)
    assert r.status == 200, r
    sid = r.json["session_id"]
    for host in (f"rebind.example:{port}", "rebind.example", f"myhost.lan.evil:{port}",
                 f"10.1.2.3:{port}"):
        r = call(url, "GET", "/api/v1/sessions", headers={"Host": host})
        assert r.status == 421 and r.code == "misdirected_request", (host, r)
    r = call(url, "DELETE", f"/api/v1/sessions/{sid}", headers={"Host": f"rebind.example:{port}"})
    assert r.status == 421 and r.code == "misdirected_request", r
    r = call(url, "POST", "/openai/v1/chat/completions", json.dumps(OPENAI_CHAT).encode(),
             {"Host": f"rebind.example:{port}", **JSON})
    assert r.status == 421, r
    assert call(url, "GET", f"/api/v1/sessions/{sid}").status == 200, "the session was not deleted"
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"127.0.0.5:{port}", f"[::1]:{port}",
                 "localhost", f"myhost.lan:{port}"):
        r = call(url, "GET", "/api/v1/sessions", headers={"Host": host})
        assert r.status == 200, (host, r)


# --------------------------------------------------------------------------------------------
# 2. auth fails closed


def test_corrupt_key_store_stops_the_daemon(world):
    world.state_dir.mkdir(parents=True)
    store = world.state_dir / "keys.json"
    store.write_text("{not json")
    p = world.start_daemon(wait=False)
    try:
        code = p.wait(timeout=30)
    except Exception:
        pytest.fail("clinvkd started with a corrupt key store")
    err = p.log_path.read_text()
    assert code != 0
    assert any(str(store) in line for line in err.splitlines()), err
    assert "panicked" not in err
    assert world.status() is None


def test_empty_key_store_closes_the_api(world):
    world.state_dir.mkdir(parents=True)
    (world.state_dir / "keys.json").write_text("[]")
    os.chmod(world.state_dir / "keys.json", 0o600)
    url = start(world)
    r = call(url, "GET", "/api/v1/sessions")
    assert r.status == 401, r


def test_revoking_the_last_key_keeps_the_api_closed(world):
    url = start(world)
    add = world.ctl("keys", "add", "a")
    assert add.returncode == 0, add.stderr
    key = add.stdout.strip()
    assert call(url, "GET", "/api/v1/sessions", headers=bearer(key)).status == 200
    rev = world.ctl("keys", "revoke", "a")
    assert rev.returncode == 0, rev.stderr
    assert "closed" in (rev.stdout + rev.stderr).lower(), rev
    assert call(url, "GET", "/api/v1/sessions").status == 401
    assert call(url, "GET", "/api/v1/sessions", headers=bearer(key)).status == 401
    world.write_config("server:\n  auth: 'off'\n")
    r = world.ctl("reload")
    assert r.returncode == 0, r.stderr
    assert call(url, "GET", "/api/v1/sessions").status == 200


def test_public_bind_needs_keys_or_insecure(world):
    p = world.start_daemon("--host", "0.0.0.0", wait=False)
    try:
        code = p.wait(timeout=30)
    except Exception:
        pytest.fail("clinvkd --host 0.0.0.0 started without keys and without --insecure")
    err = p.log_path.read_text()
    assert code != 0 and "server.auth" in err and "--insecure" in err, err
    assert world.status() is None
    d = world.start_daemon("--host", "0.0.0.0", "--insecure")
    assert pid_alive(d.pid)
    assert world.ctl("stop").returncode == 0
    assert d.wait(timeout=30) == 0


def test_serve_detach_on_a_public_address_without_a_key_fails(world):
    r = world.clinvk("serve", "--host", "0.0.0.0", "--port", "0", "--detach", timeout=60)
    assert r.returncode != 0, r
    assert world.status() is None


def test_concurrent_key_updates_lose_nothing(world):
    start(world)
    threads, rounds = 8, 4
    errors: list = []

    def worker(t: int):
        for i in range(rounds):
            r = world.ctl("keys", "add", f"t{t}-{i}")
            if r.returncode != 0:
                errors.append(("add", t, i, r.stderr))
            if i % 2 == 1:
                r = world.ctl("keys", "revoke", f"t{t}-{i - 1}")
                if r.returncode != 0:
                    errors.append(("revoke", t, i - 1, r.stderr))

    ts = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(120)
    assert not errors, errors
    expected = {f"t{t}-{i}" for t in range(threads) for i in range(rounds) if i % 2 == 1}
    listed = json.loads(world.ctl("keys", "list", "--json").stdout)
    assert sorted(k["name"] for k in listed["keys"]) == sorted(expected)
    stored = json.loads((world.state_dir / "keys.json").read_text())
    assert sorted(k["name"] for k in stored) == sorted(expected)


def test_failed_authentications_are_limited(world):
    url = start(world, "server:\n  max_auth_failures: 10\n", {"CLINVK_API_KEYS": "good"})
    got = [call(url, "GET", "/api/v1/sessions", headers=bearer(f"wrong-{i}")).status
           for i in range(10)]
    assert got == [401] * 10
    for _ in range(2):
        r = call(url, "GET", "/api/v1/sessions", headers=bearer("wrong-again"))
        assert r.status == 429 and r.code == "too_many_auth_failures", r
        assert int(r.headers["retry-after"]) >= 1


# --------------------------------------------------------------------------------------------
# 3. the configuration is the ceiling


def test_requests_cannot_escalate_past_the_config(world):
    cfg = claude_config("ok", rest="unified_flags:\n  approval_mode: default\n  sandbox_mode: read-only\n")
    url = start(world, cfg)
    assert dry(url, {}).status == 200
    assert dry(url, {"approval_mode": "default", "sandbox_mode": "read-only"}).status == 200
    r = dry(url, {"approval_mode": "none"})
    assert r.status == 403 and r.code == "escalation_not_allowed" and "approval_mode" in r.message, r
    r = dry(url, {"sandbox_mode": "full"})
    assert r.status == 403 and r.code == "escalation_not_allowed" and "sandbox_mode" in r.message, r
    world.write_config(cfg + "server:\n  allow_request_escalation: true\n")
    assert world.ctl("reload").returncode == 0
    for body in ({"approval_mode": "none"}, {"sandbox_mode": "full"}):
        r = dry(url, body)
        assert r.status == 200 and r.json["dry_run"] is True, (body, r)


def test_extra_flags_request_env_and_model_names(world):
    url = start(world, claude_config("env-dump"))
    for extra in (["--permission-mode", "bypassPermissions"], ["--add-dir", "/"],
                  ["--allowedTools", "Bash"], ["--allowed-tools", "Bash"],
                  ["--dangerously-skip-permissions"], ["--verbose", "smuggled"],
                  ["--strict-mcp-config", "smuggled"], ["--fallback-model", "x", "smuggled"],
                  ["--", "smuggled"], ["smuggled"]):
        r = dry(url, {"extra": extra})
        assert r.status == 400, (extra, r)
    r = dry(url, {"extra": ["--fallback-model", "sonnet"]})
    assert r.status == 200, ("a harmless allowed flag", r)
    for model in ("-rf", "a b", "--help"):
        r = dry(url, {"model": model})
        assert r.status == 400 and r.code == "invalid_model", (model, r)
    r = dry(url, {"model": "claude-sonnet-4-5"})
    assert r.status == 200 and "claude-sonnet-4-5" in r.json["command"], r
    r = jpost(url, "/openai/v1/chat/completions", {**OPENAI_CHAT, "model": "claude/--x"})
    assert r.status == 400 and isinstance(r.json["error"], dict), r
    # Request env: refused unless the backend allows that name.
    r = dry(url, {"env": {"FOO": "1"}})
    assert r.status == 400, r
    world.write_config(claude_config("env-dump", "allowed_request_env: [FOO]"))
    assert world.ctl("reload").returncode == 0
    assert dry(url, {"env": {"BAR": "1"}}).status == 400
    r = jpost(url, "/api/v1/prompt", {**PROMPT, "env": {"FOO": "from-request"}})
    assert r.status == 200 and r.json["exit_code"] == 0, r
    assert "FOO=from-request" in r.json["output"].splitlines(), r.json["output"]


# --------------------------------------------------------------------------------------------
# 4. agents do not see secrets


def test_cli_environment_holds_no_daemon_secrets(world):
    env = {"CLINVK_API_KEYS": "sekrit-key", "CLINVK_SERVER_REQUEST_TIMEOUT_SECS": "100",
           "SOME_SECRET": "x"}
    url = start(world, claude_config("env-dump", "env_remove: [SOME_SECRET]"), env)
    r = jpost(url, "/api/v1/prompt", PROMPT, bearer("sekrit-key"))
    assert r.status == 200 and r.json["exit_code"] == 0, r
    out = r.json["output"]
    names = [line.split("=", 1)[0] for line in out.splitlines()]
    assert "HOME" in names, out
    assert not [n for n in names if n.startswith("CLINVK_")], names
    assert "SOME_SECRET" not in names
    assert "sekrit-key" not in out



def test_version_probe_environment_holds_no_daemon_secrets(world, tmp_path):
    """The availability probe (`<cli> --version`, at start) gets the environment a run gets."""
    seen = tmp_path / "probe-env.txt"
    cli = tmp_path / "probe-cli"
    cli.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = --version ]; then\n'
        f"  env > '{seen}.part' && mv '{seen}.part' '{seen}'\n"
        "  echo 'probe-cli 1.0'; exit 0\n"
        "fi\n"
        f"exec '{fake('ok')}' \"$@\"\n")
    cli.chmod(0o755)
    env = {"CLINVK_SECRET_TEST": "probe-secret", "CLINVK_API_KEYS": "sekrit-key",
           "SOME_SECRET": "x"}
    config = (f"backends:\n  claude:\n    command: {cli}\n    mode: oneshot\n"
              "    env_remove: [SOME_SECRET]\n")
    start(world, config, env)
    text = poll(lambda: seen.exists() and seen.read_text(), 30, "the --version probe to run")
    names = [line.split("=", 1)[0] for line in text.splitlines() if "=" in line]
    assert "HOME" in names, text
    assert not [n for n in names if n.startswith("CLINVK_")], names
    assert "SOME_SECRET" not in names
    assert "probe-secret" not in text and "sekrit-key" not in text

# --------------------------------------------------------------------------------------------
# 5. key holders see only their own sessions


def test_sessions_belong_to_their_key(world):
    url = start(world, claude_config("ok"), {"CLINVK_API_KEYS": "key-a,key-b"})
    a, b = bearer("key-a"), bearer("key-b")
    r = jpost(url, "/api/v1/prompt", PROMPT, a)
    assert r.status == 200 and r.json["exit_code"] == 0, r
    sid = r.json["session_id"]
    listed_b = call(url, "GET", "/api/v1/sessions", headers=b)
    assert listed_b.status == 200 and sid not in [s["id"] for s in listed_b.json["sessions"]]
    listed_a = call(url, "GET", "/api/v1/sessions", headers=a)
    assert sid in [s["id"] for s in listed_a.json["sessions"]]
    assert call(url, "GET", f"/api/v1/sessions/{sid}", headers=b).status == 404
    assert call(url, "GET", f"/api/v1/sessions/{sid[:8]}", headers=b).status == 404
    assert call(url, "DELETE", f"/api/v1/sessions/{sid}", headers=b).status == 404
    r = jpost(url, "/api/v1/prompt", {**PROMPT, "session_id": sid}, b)
    assert r.status == 404, r
    r = jpost(url, "/openai/v1/chat/completions", OPENAI_CHAT, {**b, "X-Clinvk-Session": sid})
    assert r.status == 404 and isinstance(r.json["error"], dict), r
    r = call(url, "GET", f"/api/v1/sessions/{sid}", headers=a)
    assert r.status == 200 and r.json["id"] == sid
    assert len(r.json["turns"]) == 1, "key B's attempts added no turn"
    assert call(url, "GET", f"/api/v1/sessions/{sid[:8]}", headers=a).status == 200
    for short in (sid[:7], sid[:1]):
        r = call(url, "GET", f"/api/v1/sessions/{short}", headers=a)
        assert r.status == 400 and r.code == "invalid_session_id", (short, r)
        r = call(url, "DELETE", f"/api/v1/sessions/{short}", headers=a)
        assert r.status == 400 and r.code == "invalid_session_id", (short, r)
    r = jpost(url, "/api/v1/prompt", {**PROMPT, "session_id": sid[:7]}, a)
    assert r.status == 400 and r.code == "invalid_session_id", r
    local = world.clinvk("sessions", "list", "--json")
    assert local.returncode == 0 and sid in local.stdout, local


# --------------------------------------------------------------------------------------------
# 6. working folders


SECRET_DIRS = [".ssh", ".aws", ".gnupg", ".kube", ".docker", ".config/gcloud", ".claude", ".codex",
               ".gemini", ".clinvk"]


def test_workdirs_keep_out_of_secrets_and_default_to_the_workspace(world, tmp_path):
    blocked = tmp_path / "blockme"
    (blocked / "sub").mkdir(parents=True)
    fine = tmp_path / "project"
    fine.mkdir()
    url = start(world, claude_config("env-dump", rest=f"server:\n  blocked_workdir_prefixes: ['{blocked}']\n"))
    for d in SECRET_DIRS:
        (world.home / d).mkdir(parents=True, exist_ok=True)
    links = tmp_path / "links"
    links.mkdir()
    (links / "ssh").symlink_to(world.home / ".ssh")
    for path in [world.home / d for d in SECRET_DIRS] + [links / "ssh", blocked, blocked / "sub",
                                                        Path("/etc")]:
        r = dry(url, {"workdir": str(path)})
        assert r.status == 400 and r.code == "workdir_not_allowed", (str(path), r)
    assert dry(url, {"workdir": str(fine)}).status == 200
    # Existence is no oracle: a missing path is refused like a blocked one.
    missing = str(world.home / ".ssh-nope")
    r_missing = dry(url, {"workdir": missing})
    r_blocked = dry(url, {"workdir": str(world.home / ".ssh")})
    assert r_missing.status == r_blocked.status == 400
    assert (r_missing.message.replace(missing, "<path>")
            == r_blocked.message.replace(str(world.home / ".ssh"), "<path>")), (r_missing, r_blocked)
    # No workdir: the state folder's workspace, not the folder clinvkd was started from.
    workspace = os.path.realpath(world.state_dir / "workspace")
    r = dry(url, {})
    assert r.status == 200 and r.json["cwd"] and os.path.realpath(r.json["cwd"]) == workspace, r
    r = jpost(url, "/api/v1/prompt", PROMPT)
    assert r.status == 200 and r.json["exit_code"] == 0, r
    cwd = [line for line in r.json["output"].splitlines() if line.startswith("FAKECLI_CWD=")][0]
    assert os.path.realpath(cwd.split("=", 1)[1]) == workspace


# --------------------------------------------------------------------------------------------
# 7. connections


def wait_closed(socks: list[socket.socket], timeout: float) -> list[socket.socket]:
    """Reads every socket until EOF (or reset); returns those still open after `timeout`."""
    sel = selectors.DefaultSelector()
    for s in socks:
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
    left = set(socks)
    deadline = time.monotonic() + timeout
    while left:
        wait = deadline - time.monotonic()
        if wait <= 0:
            break
        for key, _ in sel.select(timeout=wait):
            s = key.fileobj
            try:
                data = s.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:
                sel.unregister(s)
                left.discard(s)
    sel.close()
    return list(left)


def test_idle_connections_do_not_starve_the_server_and_time_out(world):
    url = start(world, "server:\n  read_timeout_secs: 2\n  idle_timeout_secs: 2\n")
    host, port = hostport(url)
    socks = []
    try:
        for i in range(320):
            s = socket.create_connection((host, port), timeout=30)
            if i % 16 == 0:
                s.sendall(b"GET /health HTTP/1.1\r\nHo")
            socks.append(s)
        r = call(url, "GET", "/health", timeout=30)
        assert r.status == 200, r
        still_open = wait_closed(socks, 60)
        assert not still_open, f"{len(still_open)} of {len(socks)} idle connections still open"
        assert call(url, "GET", "/health").status == 200
    finally:
        for s in socks:
            s.close()


def test_half_open_connections_at_the_cap_make_room_for_real_requests(world):
    """Connections that never send a request cannot hold the server at its connection cap (as
    when the open-file limit keeps the cap low): the oldest unused one is closed for a new one,
    long before `read_timeout_secs` (here 10 minutes) would close them."""
    url = start(world, "server:\n  max_connections: 40\n  read_timeout_secs: 600\n"
                       "  idle_timeout_secs: 600\n")
    host, port = hostport(url)
    socks = []
    try:
        for _ in range(60):
            socks.append(socket.create_connection((host, port), timeout=30))
        r = call(url, "GET", "/health", timeout=60)
        assert r.status == 200, r
        # A connection that sent a request is not the one closed: a keep-alive request works.
        conn = http.client.HTTPConnection(host, port, timeout=60)
        conn.request("GET", "/health")
        first = conn.getresponse()
        assert first.status == 200 and first.read()
        for _ in range(30):
            socks.append(socket.create_connection((host, port), timeout=30))
        conn.request("GET", "/health")
        again = conn.getresponse()
        assert again.status == 200 and again.read()
        conn.close()
    finally:
        for s in socks:
            s.close()


def test_one_client_holds_at_most_its_share_of_connections(world):
    url = start(world, "server:\n  max_connections_per_client: 4\n  read_timeout_secs: 600\n"
                       "  idle_timeout_secs: 600\n")
    host, port = hostport(url)
    first = socket.create_connection((host, port), timeout=30)
    socks = [socket.create_connection((host, port), timeout=30) for _ in range(3)]
    try:
        # The fifth connection from this address closes the oldest unused one.
        r = call(url, "GET", "/health", timeout=60)
        assert r.status == 200, r
        assert not wait_closed([first], 60), "the oldest unused connection is still open"
        assert len(wait_closed(socks, 0.5)) == len(socks), "only the oldest was closed"
    finally:
        first.close()
        for s in socks:
            s.close()


def test_oversized_body_refused_before_it_is_sent(world):
    url = start(world, "server:\n  max_request_body_bytes: 1000\n")
    host, port = hostport(url)
    s = socket.create_connection((host, port), timeout=30)
    try:
        s.sendall(f"POST /api/v1/prompt HTTP/1.1\r\nHost: {host}:{port}\r\n"
                  "Content-Type: application/json\r\nContent-Length: 10000000\r\n\r\n".encode())
        head = b""
        while b"\r\n" not in head:
            chunk = s.recv(4096)
            assert chunk, f"closed without an answer: {head!r}"
            head += chunk
        assert head.split(b"\r\n")[0].split()[1] == b"413", head
    finally:
        s.close()


def test_a_trickled_body_gets_408_before_it_is_all_sent(world):
    """A body sent one byte at a time never stalls for `read_timeout_secs`, but it may not hold
    its connection: the whole body has a deadline (read_timeout plus a minimum rate)."""
    url = start(world, "server:\n  read_timeout_secs: 3\n")
    host, port = hostport(url)
    body = json.dumps({"backend": "claude", "prompt": "x" * 2000}).encode()
    s = socket.create_connection((host, port), timeout=30)
    try:
        s.sendall(f"POST /api/v1/prompt HTTP/1.1\r\nHost: {host}:{port}\r\n"
                  f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode())
        sent = 0
        give_up = time.monotonic() + 120
        while not readable(s):
            assert sent < len(body), "the whole trickled body was read"
            assert time.monotonic() < give_up, "no answer to a trickled body within 120 s"
            s.sendall(body[sent:sent + 1])
            sent += 1
            time.sleep(0.5)  # the attack's pace (one byte every half second), not a wait
        head = s.recv(4096)
        assert head.split(b"\r\n")[0].split()[1] == b"408", head
    finally:
        s.close()


def test_idle_control_connection_is_closed(world):
    start(world, "server:\n  read_timeout_secs: 2\n")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(30)
    try:
        s.connect(str(world.socket))
        s.sendall(frame({"frame": "hello", "body": {"protocol": CONTROL_PROTOCOL, "client": "test"}}))
        (n,) = struct.unpack(">I", s.recv(4, socket.MSG_WAITALL))
        welcome = json.loads(s.recv(n, socket.MSG_WAITALL))
        assert welcome["frame"] == "welcome", welcome
        # Then nothing: the daemon says why and closes the connection.
        assert not wait_closed([s], 30), "the daemon keeps a silent control connection open"
    finally:
        s.close()
    assert world.status() is not None


# --------------------------------------------------------------------------------------------
# 8. runs die with their client, their daemon, their limit


@pytest.mark.parametrize("style", ["native", "openai", "anthropic"])
def test_client_gone_mid_stream_kills_the_silent_cli(world, style):
    url = start(world, claude_config("hang"))
    path, body = {
        "native": ("/api/v1/prompt", {**PROMPT, "output_format": "stream-json"}),
        "openai": ("/openai/v1/chat/completions", {**OPENAI_CHAT, "stream": True}),
        "anthropic": ("/anthropic/v1/messages", {**ANTHROPIC_MSG, "stream": True}),
    }[style]
    s = raw_request(url, "POST", path, json.dumps(body).encode())
    try:
        run = poll(lambda: next((r for r in runs(world) if r.get("pid")), None), 30, "the CLI to start")
        pid = run["pid"]
        if style == "native":  # the init line is streamed: the answer has begun
            poll(lambda: readable(s), 30, "the stream to begin")
    finally:
        s.close()
    poll(lambda: not pid_alive(pid) and not runs(world), 20, "the CLI to be stopped")


@pytest.mark.parametrize("style", ["openai", "anthropic"])
def test_client_gone_before_any_text_kills_the_cli_at_once(world, style):
    """A compatible stream holds its status until the first text; a client that leaves during
    that silence stops the CLI then, not at the next keep-alive (here an hour away)."""
    url = start(world, claude_config("hang", rest="server:\n  sse_keepalive_secs: 3600\n"))
    path, body = {
        "openai": ("/openai/v1/chat/completions", {**OPENAI_CHAT, "stream": True}),
        "anthropic": ("/anthropic/v1/messages", {**ANTHROPIC_MSG, "stream": True}),
    }[style]
    s = raw_request(url, "POST", path, json.dumps(body).encode())
    try:
        run = poll(lambda: next((r for r in runs(world) if r.get("pid")), None), 30, "the CLI to start")
        pid = run["pid"]
        assert not readable(s), "nothing is sent before the first text"
    finally:
        s.close()
    poll(lambda: not pid_alive(pid) and not runs(world), 60, "the CLI to be stopped")


def test_kill9_of_the_daemon_leaves_no_cli_behind(world):
    world.write_config(claude_config("hang-with-grandchild"))
    d = world.start_daemon()
    url = d.status["http_url"]
    s = raw_request(url, "POST", "/api/v1/prompt", json.dumps(PROMPT).encode())
    pgid = None
    try:
        run = poll(lambda: next((r for r in runs(world) if r.get("pid")), None), 30, "the CLI to start")
        cli = run["pid"]
        pgid = pgid_of(cli)
        assert pgid and pgid != os.getpgrp() and pgid != pgid_of(d.pid), "the CLI has its own group"
        members = poll(lambda: [p for p in group_members(pgid) if p != cli] or None, 30,
                       "the grandchild to start")
        grandchild = members[0]
        os.kill(d.pid, signal.SIGKILL)
        d.wait(timeout=10)
        s.close()
        world.start_daemon()
        poll(lambda: not pid_alive(cli) and not pid_alive(grandchild), 30,
             "the orphaned CLI and its grandchild to be gone")
    finally:
        s.close()
        if pgid and pgid != os.getpgrp():
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.mark.parametrize("limits, tasks, delay_ms", [
    ("max_parallel_per_request: 2\n  max_concurrent: 8", 6, 300),
    # the request's own cap is high: half of max_concurrent is the limit
    ("max_parallel_per_request: 8\n  max_concurrent: 4", 8, 1000),
], ids=["per-request-cap", "half-the-slots"])
def test_parallel_is_capped_per_request(world, tmp_path, limits, tasks, delay_ms):
    counter = tmp_path / "overlap.json"
    url = start(world, claude_config("count-overlap",
                                     f"env:\n  FAKECLI_OVERLAP_FILE: '{counter}'\n  FAKECLI_DELAY_MS: '{delay_ms}'",
                                     f"limits:\n  {limits}\n"))
    body = [{"backend": "claude", "prompt": f"task {i}"} for i in range(tasks)]
    r = jpost(url, "/api/v1/parallel", {"tasks": body, "max_parallel": 100}, timeout=120)
    assert r.status == 200 and r.json["completed"] == tasks, r
    seen = json.loads(counter.read_text())
    assert seen["starts"] == tasks and seen["running"] == 0, seen
    assert 1 <= seen["max"] <= 2, seen


def test_one_key_cannot_take_every_slot(world):
    url = start(world, claude_config("hang", rest="limits:\n  max_concurrent: 4\n"),
                {"CLINVK_API_KEYS": "key-a,key-b"})
    body = json.dumps({**PROMPT, "output_format": "stream-json"}).encode()
    held = []
    try:
        for _ in range(3):  # three quarters of the slots
            held.append(raw_request(url, "POST", "/api/v1/prompt", body, bearer("key-a")))
        poll(lambda: len(runs(world)) == 3, 30, "key A's three runs")
        r = jpost(url, "/api/v1/prompt", PROMPT, bearer("key-a"), timeout=30)
        assert r.status == 429 and r.json["code"] == "quota_exceeded", r
        assert int(r.headers["retry-after"]) >= 1
        # The last slot is still there for another key.
        held.append(raw_request(url, "POST", "/api/v1/prompt", body, bearer("key-b")))
        poll(lambda: len(runs(world)) == 4, 30, "key B's run beside key A's")
    finally:
        for s in held:
            s.close()
    poll(lambda: not runs(world), 30, "every run to stop with its client")


# --------------------------------------------------------------------------------------------
# 9. small things


def test_nosniff_metrics_and_health_with_auth(world):
    url = start(world, claude_config("ok", rest="server:\n  metrics_enabled: true\n"),
                {"CLINVK_API_KEYS": "k"})
    _, port = hostport(url)
    k = bearer("k")
    health = call(url, "GET", "/health")
    assert health.status == 200 and set(health.json) == {"status"}, health.json
    full = call(url, "GET", "/health", headers=k)
    assert full.status == 200 and "backends" in full.json and "version" in full.json, full.json
    answers = {
        200: health,
        404: call(url, "GET", "/no/such/path", headers=k),
        401: call(url, "GET", "/api/v1/sessions"),
        421: call(url, "GET", "/api/v1/sessions", headers={**k, "Host": f"rebind.example:{port}"}),
        415: call(url, "POST", "/api/v1/prompt", json.dumps(PROMPT).encode(),
                  {**k, "Content-Type": "text/plain"}),
    }
    for status, r in answers.items():
        assert r.status == status, (status, r)
        assert r.headers.get("x-content-type-options") == "nosniff", (status, r.headers)
    assert call(url, "GET", "/metrics").status == 401
    m = call(url, "GET", "/metrics", headers=k)
    assert m.status == 200 and b"clinvk_requests_total" in m.raw


def test_state_and_log_folders_are_private(world):
    r = world.clinvk("serve", "--port", "0", "--detach")
    assert r.returncode == 0, r.stderr
    mode = lambda p: stat.S_IMODE(os.stat(p).st_mode)  # noqa: E731
    logs = world.state_dir / "logs"
    assert mode(world.state_dir) == 0o700, oct(mode(world.state_dir))
    assert mode(logs) == 0o700, oct(mode(logs))
    poll(lambda: any(f.name.startswith("clinvkd.log") for f in logs.iterdir()), 30, "the log file")
    files = [f for f in logs.iterdir() if f.is_file()]
    assert {f.name: oct(mode(f)) for f in files} == {f.name: oct(0o600) for f in files}


def test_forwarded_for_is_read_right_to_left_past_trusted_proxies(world):
    url = start(world, "server:\n  rate_limit_enabled: true\n  rate_limit_rps: 0.01\n"
                       "  rate_limit_burst: 2\n  trusted_proxies: ['127.0.0.0/8']\n")

    def get(xff):
        return call(url, "GET", "/api/v1/sessions", headers={"X-Forwarded-For": xff})

    assert get("1.2.3.4, 127.0.0.5").status == 200
    assert get("1.2.3.4, 127.0.0.5").status == 200
    # A client cannot pick a fresh bucket by prepending an address: 1.2.3.4 is the client.
    r = get("6.6.6.6, 1.2.3.4, 127.0.0.5")
    assert r.status == 429 and r.code == "rate_limited", r
    assert get("9.9.9.9, 127.0.0.5").status == 200, "another client has its own bucket"


def test_a_continued_session_obeys_the_current_workdir_policy(world, tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    url = start(world, claude_config("ok"))
    r = jpost(url, "/api/v1/prompt", {**PROMPT, "workdir": str(project)})
    assert r.status == 200 and r.json["exit_code"] == 0, r
    sid = r.json["session_id"]
    assert jpost(url, "/api/v1/prompt", {"prompt": "again", "session_id": sid}).status == 200
    # The operator blocks the folder: the session cannot go on running there.
    world.write_config(claude_config("ok", rest=f"server:\n  blocked_workdir_prefixes: ['{project}']\n"))
    assert world.ctl("reload").returncode == 0
    r = jpost(url, "/api/v1/prompt", {"prompt": "once more", "session_id": sid})
    assert r.status == 400 and r.code == "workdir_not_allowed", r
