"""Several accounts per CLI: a new session goes where `routing` says, a turn a spent window
refuses before any output moves to the next account (as a new CLI session carrying the
conversation), a session stays on its account, a model route falls through to the next
backend, and `clinvkctl accounts` adds an account with a token that is never shown or passed to
another CLI — the real claude (and codex) against two fake-model instances, the first refusing
every request."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time

import openai
import pytest

from compat_world import compat, fakecli  # noqa: F401  (fixture)
from conftest import FakeModel, http_json
from harness import binary, poll, post

RESET_IN = 3600


@pytest.fixture
def refusing_model(tmp_path):
    """A second fake model whose every answer is a spent 5-hour window."""
    fm = FakeModel(tmp_path / "refusing")
    status, body = http_json("POST", fm.url + "/_fake/limits", {"mode": "rejected", "reset_in": RESET_IN})
    assert status == 200, body
    yield fm
    fm.stop()


def accounts_config(first_url: str, second_url: str, routing: str = "fill_first", extra: str = "") -> str:
    # The accounts log in by token (a subscription login: claude reports its windows then).
    return f"""
backends:
  claude:
    routing: {routing}
    accounts:
      - name: first
        env: {{ANTHROPIC_BASE_URL: "{first_url}", CLAUDE_CODE_OAUTH_TOKEN: tok-first}}
      - name: second
        env: {{ANTHROPIC_BASE_URL: "{second_url}", CLAUDE_CODE_OAUTH_TOKEN: tok-second}}
{extra}"""


def chat(d, text: str, model: str = "claude", session: str | None = None):
    headers = {"X-Clinvk-Session": session} if session else {}
    raw = d.openai().chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": text}], extra_headers=headers)
    return raw.headers, raw.parse()


def answered(fm, marker: str) -> list[dict]:
    """The model calls of `fm` whose prompt holds `marker`."""
    return [r for r in fm.requests() if marker in json.dumps(r["body"])]


def test_a_refused_account_hands_the_turn_to_the_next(compat, fake_model, refusing_model):
    d = compat(config=accounts_config(refusing_model.url, fake_model.url))
    t0 = time.monotonic()
    headers, r = chat(d, "first question m1")
    assert "fake-reply" in r.choices[0].message.content
    assert headers["x-clinvk-account"] == "second", dict(headers)
    assert headers["x-clinvk-backend"] == "claude"
    print(f"refused account to an answer from the next: {time.monotonic() - t0:.2f} s (whole request)")
    assert len(answered(refusing_model, "m1")) == 1, "the first account was asked once"
    assert answered(fake_model, "m1"), "the second answered"
    # The refused CLI session's worker is gone; the session's worker on the second stays.
    workers = [w for w in d.world.status()["workers"] if w["backend"] == "claude"]
    assert len(workers) == 1, workers
    # The first account is known refused until its reset: later new sessions skip it.
    headers, _ = chat(d, "second question m2")
    assert headers["x-clinvk-account"] == "second"
    assert not answered(refusing_model, "m2"), "a refused account is not asked again"
    status, body = http_json("GET", d.url + "/api/v1/accounts")
    assert status == 200, body
    claude = {a["account"]: a for a in body["accounts"] if a["backend"] == "claude"}
    assert set(claude) == {"first", "second"}, claude
    assert claude["first"]["limits"]["status"] == "rejected"
    assert abs(claude["first"]["limits"]["resets_at"] - (time.time() + RESET_IN)) < 120
    # The session stays on its account, its history whole.
    sid = headers["x-clinvk-session"]
    session = d.session(sid)
    assert session["account"] == "second", session
    headers, r = chat(d, "follow-up m3", session=sid)
    assert headers["x-clinvk-account"] == "second" and headers["x-clinvk-session"] == sid
    follow = answered(fake_model, "m3")
    assert follow and "m2" in json.dumps(follow[-1]["body"]), "the CLI session kept its history"
    # Usage rows name the account that answered.
    out = d.world.ctl("usage", "--by", "account", "--json").stdout
    groups = {g["group"]: g["requests"] for g in json.loads(out)["groups"]}
    assert groups.get("claude/second") == 3, groups


def test_when_every_account_is_refused_the_429_names_the_earliest_reset(compat, fake_model, tmp_path):
    soon, later = FakeModel(tmp_path / "soon"), FakeModel(tmp_path / "later")
    try:
        for fm, reset_in in ((soon, 600), (later, RESET_IN)):
            status, body = http_json("POST", fm.url + "/_fake/limits", {"mode": "rejected", "reset_in": reset_in})
            assert status == 200, body
        d = compat(config=accounts_config(soon.url, later.url))
        for attempt in ("asks both", "asks none"):
            with pytest.raises(openai.RateLimitError) as e:
                chat(d, f"anyone m11 {attempt}")
            retry = int(e.value.response.headers["retry-after"])
            assert 480 <= retry <= 600, (attempt, retry)
            assert e.value.body["code"] == "usage_limit_reached", e.value.body
        # Each account was asked once: the second request knew both were refused.
        assert len(answered(soon, "m11")) == 1 and len(answered(later, "m11")) == 1
    finally:
        soon.stop()
        later.stop()


def test_a_continued_session_moves_with_its_conversation(compat, fake_model, tmp_path):
    # Both accounts fine at first (two fake models; the second refuses later).
    other = FakeModel(tmp_path / "other")
    try:
        d = compat(config=accounts_config(other.url, fake_model.url))
        headers, _ = chat(d, "remember the word pelican m4")
        assert headers["x-clinvk-account"] == "first"
        sid = headers["x-clinvk-session"]
        status, body = http_json("POST", other.url + "/_fake/limits", {"mode": "rejected", "reset_in": RESET_IN})
        assert status == 200, body
        headers, r = chat(d, "which word m5", session=sid)
        assert "fake-reply" in r.choices[0].message.content
        assert headers["x-clinvk-account"] == "second" and headers["x-clinvk-session"] == sid
        moved = answered(fake_model, "m5")
        assert moved, "the second account answered"
        body = json.dumps(moved[-1]["body"])
        assert "pelican" in body, "the new CLI session carries the earlier turns"
        session = d.session(sid)
        assert session["account"] == "second" and session["turn_count"] == 2, session
        assert "remember the word pelican" in session["turns"][0]["prompt"]
    finally:
        other.stop()


def test_a_model_route_falls_through_to_the_next_backend(compat, fake_model, refusing_model, tmp_path):
    logins = tmp_path / "logins" / "claude-solo"
    config = f"""
backends:
  claude:
    accounts:
      - name: solo
        config_dir: {logins}
        env: {{ANTHROPIC_BASE_URL: "{refusing_model.url}", CLAUDE_CODE_OAUTH_TOKEN: tok-solo}}
models:
  best: [claude, codex]
"""
    d = compat(config=config)
    ids = [m.id for m in d.openai().models.list().data]
    assert "best" in ids, ids
    headers, r = chat(d, "route me m6", model="best")
    assert headers["x-clinvk-backend"] == "codex", dict(headers)
    assert headers["x-clinvk-account"] == "default"
    assert r.model == "codex", "the answer names the target that served it"
    assert "fake-reply" in r.choices[0].message.content
    assert len(answered(refusing_model, "m6")) == 1
    # Known refused: the route starts at codex now, claude is not asked (streamed, Anthropic).
    with d.anthropic().messages.stream(model="best", max_tokens=100,
                                       messages=[{"role": "user", "content": "route me again m7"}]) as s:
        final = s.get_final_message()
        assert s.response.headers["x-clinvk-backend"] == "codex"
    assert final.model == "codex" and "fake-reply" in final.content[0].text
    assert not answered(refusing_model, "m7")
    # The account's folder, outside the state folder, holds its login: no request works there.
    assert logins.is_dir() and oct(logins.stat().st_mode & 0o777) == "0o700"
    status, body = http_json("POST", d.url + "/api/v1/prompt",
                             {"backend": "codex", "prompt": "x", "workdir": str(logins), "dry_run": True})
    assert status == 400 and body["code"] == "workdir_not_allowed", body


def add_account(d, name: str, token: str):
    add = d.world.ctl("accounts", "add", "claude", name, "--token", "-", input=token + "\n")
    assert add.returncode == 0, add.stderr
    assert token not in add.stdout + add.stderr
    return add


def test_accounts_added_with_a_token_stay_secret(compat, fake_model):
    token = "sk-ant-oat-secret-" + os.urandom(6).hex()
    d = compat()
    add_account(d, "work", token)
    folder = d.world.state_dir / "accounts" / "claude" / "work"
    assert oct(folder.stat().st_mode & 0o777) == "0o700"
    token_file = folder / ".clinvk-token"
    assert oct(token_file.stat().st_mode & 0o777) == "0o600"
    listing = d.world.ctl("accounts", "list")
    assert listing.returncode == 0, listing.stderr
    assert "work" in listing.stdout and token not in listing.stdout, listing.stdout
    status, body = http_json("GET", d.url + "/api/v1/accounts")
    assert status == 200 and token not in json.dumps(body)
    work = [a for a in body["accounts"] if a["account"] == "work"]
    assert work and work[0]["token"] is True, body
    # The account answers, its token the CLI's credential.
    headers, r = chat(d, "as work m8")
    assert headers["x-clinvk-account"] == "work", dict(headers)
    calls = answered(fake_model, "m8")
    assert calls and any(token in v for v in calls[-1]["headers"].values()), calls[-1]["headers"]
    assert token not in d.proc.log_path.read_text(), "never in the daemon's log"
    # Another account's CLI never sees it (nor the daemon's own login): claude replaced by a
    # fake that prints its environment, the two accounts taken in turn.
    other = "sk-ant-oat-other-" + os.urandom(6).hex()
    add_account(d, "other", other)
    d.world.write_config(f"backends:\n  claude:\n    mode: oneshot\n    routing: round_robin\n"
                         f"    command: {fakecli('env-dump')}\n")
    assert d.world.ctl("reload").returncode == 0
    poll(lambda: any(b["name"] == "claude" and (b.get("path") or "").endswith("env-dump")
                     for b in http_json("GET", d.url + "/api/v1/backends")[1]["backends"]),
         30, "the reloaded claude command")
    seen = {}
    for _ in range(2):
        status, body, hdrs = post(d.url + "/api/v1/prompt", {"backend": "claude", "prompt": "env please"})
        assert status == 200, body
        hdrs = {k.lower(): v for k, v in hdrs.items()}
        assert hdrs["x-clinvk-account"] == body["account"], "the native answer names it too"
        seen[body["account"]] = body["output"].splitlines()
    assert set(seen) == {"work", "other"}, seen
    assert f"CLAUDE_CODE_OAUTH_TOKEN={token}" in seen["work"]
    assert f"CLAUDE_CODE_OAUTH_TOKEN={other}" in seen["other"]
    assert not any(token in line for line in seen["other"])
    assert not any(other in line for line in seen["work"])
    for lines in seen.values():
        assert not any(line.startswith("ANTHROPIC_API_KEY=") for line in lines), lines
    # Removed: gone from the disk and the listing.
    rm = d.world.ctl("accounts", "remove", "claude", "work")
    assert rm.returncode == 0, rm.stderr
    assert not folder.exists()
    assert "work" not in d.world.ctl("accounts", "list").stdout


def test_accounts_add_runs_the_cli_login_on_a_terminal(compat, tmp_path):
    # claude is a fake whose `auth login` saves a login where its state variable points.
    cli = tmp_path / "fake-claude"
    cli.write_text("#!/bin/sh\n"
                   "if [ \"$1\" = --version ]; then echo '9.9.9 (fake)'; exit 0; fi\n"
                   "if [ \"$1 $2\" = 'auth login' ]; then\n"
                   "  echo '{}' > \"$CLAUDE_CONFIG_DIR/.credentials.json\"; echo logged-in; exit 0\n"
                   "fi\n"
                   "exit 1\n")
    cli.chmod(0o755)
    d = compat(config=f"backends:\n  claude:\n    command: {cli}\n    mode: oneshot\n")
    # On a terminal (script(1) gives it one): the CLI's own login runs in the account's folder.
    r = subprocess.run(["script", "-qec", f"{binary('clinvkctl')} accounts add claude personal", "/dev/null"],
                       env=d.world.env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "logged-in" in r.stdout, r.stdout
    folder = d.world.state_dir / "accounts" / "claude" / "personal"
    assert (folder / ".credentials.json").exists()
    listing = d.world.ctl("accounts", "list").stdout
    assert re.search(r"claude/personal\s+login saved", listing), listing
    # Off a terminal: the login command is printed, not run.
    r = d.world.ctl("accounts", "add", "claude", "later")
    assert r.returncode == 0, r.stderr
    assert "CLAUDE_CONFIG_DIR=" in r.stderr and f"{cli} auth login" in r.stderr, r.stderr
    assert not (d.world.state_dir / "accounts" / "claude" / "later" / ".credentials.json").exists()
    assert re.search(r"claude/later\s+login unknown", d.world.ctl("accounts", "list").stdout)
    # Bad input: a clear refusal, nothing made.
    for args in (["claude", "default"], ["claude", "../x"], ["nobody", "x"]):
        r = d.world.ctl("accounts", "add", *args)
        assert r.returncode != 0 and r.stderr.strip(), (args, r.stderr)
    r = d.world.ctl("accounts", "add", "claude", "personal")
    assert r.returncode != 0 and "already has an account" in r.stderr, r.stderr
    r = d.world.ctl("accounts", "add", "opencode", "tok", "--token", "-", input="t\n")
    assert r.returncode != 0 and "takes no token" in r.stderr, r.stderr
