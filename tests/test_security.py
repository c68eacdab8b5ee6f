"""API keys (environment and the daemon's own store via clinvkctl keys), CORS and the rate
limit, across the API styles."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

from harness import FAKECLI_DIR, World, binary, world  # noqa: F401


def call(url, method="GET", body=None, headers=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


def test_env_keys_are_required_and_checked(world):
    world.env["CLINVK_API_KEYS"] = "k-one, k-two"
    world.write_config(f"backends:\n  claude:\n    command: {FAKECLI_DIR / 'ok'}\n    mode: oneshot\n")
    url = world.start_daemon().status["http_url"]
    s, h, b = call(url + "/api/v1/sessions")
    assert s == 401 and h["www-authenticate"] == "Bearer"
    assert json.loads(b)["code"] == "missing_api_key"
    s, h, b = call(url + "/api/v1/sessions", headers={"Authorization": "Bearer wrong"})
    assert s == 401 and json.loads(b)["code"] == "invalid_api_key"
    assert call(url + "/api/v1/sessions", headers={"Authorization": "Bearer k-two"})[0] == 200
    assert call(url + "/api/v1/sessions", headers={"X-Api-Key": "k-one"})[0] == 200
    # Public paths never need a key.
    assert call(url + "/health")[0] == 200
    # The key never reaches the log.
    s, _, b = call(url + "/api/v1/prompt", "POST", {"backend": "claude", "prompt": "hi"}, {"Authorization": "Bearer k-one"})
    assert s == 200 and json.loads(b)["exit_code"] == 0
    world.ctl("stop")
    logs = "".join(p.read_text() for p in world.root.glob("clinvkd-*.stderr"))
    assert "k-one" not in logs and "k-two" not in logs


def test_error_shape_follows_the_api_style(world):
    world.env["CLINVK_API_KEYS"] = "secret"
    url = world.start_daemon().status["http_url"]
    s, _, b = call(url + "/openai/v1/models")
    assert s == 401 and json.loads(b)["error"]["type"] == "authentication_error"
    s, _, b = call(url + "/anthropic/v1/messages", "POST", {})
    assert s == 401 and json.loads(b) == {"type": "error", "error": {"type": "authentication_error", "message": json.loads(b)["error"]["message"]}}


def test_clinvkctl_keys_are_live_without_restart(world):
    url = world.start_daemon().status["http_url"]
    assert call(url + "/api/v1/sessions")[0] == 200, "no keys: open"
    r = world.ctl("keys", "add", "ci")
    assert r.returncode == 0, r.stderr
    key = r.stdout.strip()
    assert key.startswith("ck-")
    assert call(url + "/api/v1/sessions")[0] == 401
    assert call(url + "/api/v1/sessions", headers={"Authorization": f"Bearer {key}"})[0] == 200
    store = (world.state_dir / "keys.json").read_text()
    assert key not in store, "only a hash is stored"
    import os
    import stat
    assert stat.S_IMODE(os.stat(world.state_dir / "keys.json").st_mode) == 0o600
    listed = json.loads(world.ctl("keys", "list", "--json").stdout)
    kid = listed["keys"][0]["id"]
    r = world.ctl("keys", "revoke", kid)
    assert r.returncode == 0 and "closed" in r.stderr, r.stderr
    # Revoking the last key never opens the API (it fails closed).
    assert call(url + "/api/v1/sessions", headers={"Authorization": f"Bearer {key}"})[0] == 401
    assert call(url + "/api/v1/sessions")[0] == 401
    assert world.ctl("keys", "revoke", "nothing").returncode == 1


def test_cors_preflight_before_auth(world):
    world.env["CLINVK_API_KEYS"] = "secret"
    world.write_config("server:\n  cors_allowed_origins: ['http://localhost:3000']\n")
    url = world.start_daemon().status["http_url"]
    s, h, _ = call(url + "/openai/v1/chat/completions", "OPTIONS", headers={
        "Origin": "http://localhost:3000", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type, x-stainless-os"})
    assert s == 204
    assert h["access-control-allow-origin"] == "http://localhost:3000"
    assert "x-stainless-os" in h["access-control-allow-headers"]
    s, h, _ = call(url + "/openai/v1/models", "OPTIONS", headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "GET"})
    assert s == 403 and "access-control-allow-origin" not in h
    s, h, _ = call(url + "/health", headers={"Origin": "http://localhost:3000"})
    assert h["access-control-allow-origin"] == "http://localhost:3000"


def test_rate_limit_with_retry_after_and_trusted_proxies(world):
    world.write_config("server:\n  rate_limit_enabled: true\n  rate_limit_rps: 0.5\n  rate_limit_burst: 2\n  trusted_proxies: ['127.0.0.1']\n")
    url = world.start_daemon().status["http_url"]
    a = {"X-Forwarded-For": "10.0.0.1"}
    assert [call(url + "/api/v1/sessions", headers=a)[0] for _ in range(2)] == [200, 200]
    s, h, b = call(url + "/api/v1/sessions", headers=a)
    assert s == 429 and int(h["retry-after"]) >= 1 and json.loads(b)["code"] == "rate_limited"
    # Another client (as forwarded by the trusted proxy) has its own bucket.
    assert call(url + "/api/v1/sessions", headers={"X-Forwarded-For": "10.0.0.2"})[0] == 200


def test_a_clis_own_error_text_reaches_admins_only(world, tmp_path):
    """A failing CLI's stderr can carry paths and tokens: a `use` key gets a message naming the
    request id (the full text is in the log); an admin key, or the owner with auth off, gets the
    text. Executable paths in /api/v1/backends are for admins only too."""
    cli = tmp_path / "leaky-cli"
    cli.write_text("#!/bin/sh\n"
                   'case "$1" in --version) echo "fakecli 0.0.0"; exit 0;; esac\n'
                   'echo "Error: bad token sk-LEAK-4242 in /home/someone/.secret" >&2\n'
                   "exit 3\n")
    cli.chmod(0o755)
    world.write_config(f"backends:\n  claude:\n    command: {cli}\n    mode: oneshot\n")
    url = world.start_daemon().status["http_url"]
    r = world.ctl("keys", "add", "ops", "--scope", "admin")
    assert r.returncode == 0, r.stderr
    admin = {"Authorization": f"Bearer {r.stdout.strip()}"}
    r = world.ctl("keys", "add", "bot")
    assert r.returncode == 0, r.stderr
    user = {"Authorization": f"Bearer {r.stdout.strip()}"}
    prompt = {"backend": "claude", "prompt": "hi"}

    s, h, b = call(url + "/api/v1/prompt", "POST", prompt, user)
    body = json.loads(b)
    assert s == 200 and body["exit_code"] == 3, body
    assert "sk-LEAK" not in b.decode() and "/home/someone" not in b.decode(), body
    assert h["x-request-id"] in body["error"], (h, body)
    s, h, b = call(url + "/openai/v1/chat/completions", "POST",
                   {"model": "claude", "messages": [{"role": "user", "content": "hi"}]}, user)
    assert s == 502 and "sk-LEAK" not in b.decode(), b
    assert h["x-request-id"] in json.loads(b)["error"]["message"], b
    # The session the key can read does not keep the text either.
    sessions = json.loads(call(url + "/api/v1/sessions", headers=user)[2])["sessions"]
    for sess in sessions:
        detail = call(url + f"/api/v1/sessions/{sess['id']}", headers=user)[2].decode()
        assert "sk-LEAK" not in detail, detail

    s, _, b = call(url + "/api/v1/prompt", "POST", prompt, admin)
    assert s == 200 and "sk-LEAK-4242" in json.loads(b)["error"], b

    s, _, b = call(url + "/api/v1/backends", headers=user)
    claude = next(x for x in json.loads(b)["backends"] if x["name"] == "claude")
    assert s == 200 and not claude.get("path"), claude
    s, _, b = call(url + "/api/v1/backends", headers=admin)
    claude = next(x for x in json.loads(b)["backends"] if x["name"] == "claude")
    assert claude["path"] == str(cli), claude

    world.ctl("stop")
    logs = "".join(p.read_text() for p in world.root.glob("clinvkd-*.stderr"))
    assert "sk-LEAK-4242" in logs, "the full text goes to the log"
