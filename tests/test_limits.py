"""Subscription limits: the quota windows a CLI reports are read, shown (`/api/v1/accounts`,
`/metrics`, `clinvkctl status`), kept across a restart, and a spent window is a 429 with
`Retry-After` in every API style — the real claude under a subscription login, against the fake
model sending Anthropic's `anthropic-ratelimit-unified-*` headers and 429s."""

from __future__ import annotations

import json
import re
import time
import urllib.request

import anthropic
import openai
import pytest

from compat_world import compat  # noqa: F401  (fixture)
from conftest import http_json

# claude reports its windows only under a subscription login (measured: with an API key, none).
SUBSCRIPTION = {"ANTHROPIC_API_KEY": None, "CLAUDE_CODE_OAUTH_TOKEN": "fake-oauth-token"}
RESET_IN = 3600
METRICS = "server:\n  metrics_enabled: true\n"


def set_limits(fake_model, mode: str, reset_in: int = RESET_IN) -> None:
    status, body = http_json("POST", fake_model.url + "/_fake/limits", {"mode": mode, "reset_in": reset_in})
    assert status == 200, body


def accounts(d) -> dict:
    status, body = http_json("GET", d.url + "/api/v1/accounts")
    assert status == 200, body
    return {a["backend"]: a for a in body["accounts"]}


def metrics(d) -> str:
    with urllib.request.urlopen(d.url + "/metrics", timeout=10) as r:
        return r.read().decode()


def test_a_warning_passes_and_the_windows_are_shown(compat, fake_model):
    d = compat(config=METRICS, env=SUBSCRIPTION)
    set_limits(fake_model, "warning")
    r = d.openai(max_retries=0).chat.completions.create(
        model="claude", messages=[{"role": "user", "content": "near the limit"}])
    assert "fake-reply" in r.choices[0].message.content
    claude = accounts(d)["claude"]
    assert claude["account"] == "default" and claude["available"] is True
    limits = claude["limits"]
    assert limits["status"] == "allowed_warning", limits
    windows = {w["name"]: w for w in limits["windows"]}
    assert windows["five_hour"]["utilization"] == pytest.approx(0.91)
    assert windows["five_hour"]["status"] == "allowed_warning"
    assert windows["seven_day"]["utilization"] == pytest.approx(0.42)
    assert abs(windows["five_hour"]["resets_at"] - (time.time() + RESET_IN)) < 120
    assert accounts(d)["codex"]["limits"] is None, "no report, no windows"
    text = metrics(d)
    assert re.search(r'clinvk_account_utilization\{[^}]*backend="claude"[^}]*window="five_hour"[^}]*\} 0\.91', text), \
        [l for l in text.splitlines() if "account_utilization" in l]
    # clinvkctl status shows them.
    out = d.world.ctl("status").stdout
    assert "claude/default five_hour 91% allowed_warning" in out, out
    # Kept across a restart until the windows reset.
    assert d.world.ctl("stop", "--timeout", "20", timeout=30).returncode == 0
    d.proc.wait(timeout=30)
    d.world.start_daemon()
    d.url = d.world.url
    assert accounts(d)["claude"]["limits"]["windows"] == limits["windows"]


def retry_after(headers) -> int:
    value = int(headers["retry-after"])
    assert RESET_IN - 120 <= value <= RESET_IN, value
    return value


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_a_spent_window_is_a_429_in_every_style(compat, fake_model, stream):
    # The status of a stream waits for the first output or the verdict, up to one keep-alive
    # period: a long one keeps a slow start from deciding 200 first.
    d = compat(config=METRICS + "  sse_keepalive_secs: 600\n", env=SUBSCRIPTION)
    set_limits(fake_model, "rejected")
    msg = [{"role": "user", "content": "over the limit"}]
    # OpenAI chat completions: the SDK raises RateLimitError (with max_retries=0, at once).
    with pytest.raises(openai.RateLimitError) as e:
        r = d.openai(max_retries=0).chat.completions.create(model="claude", messages=msg, stream=stream)
        if stream:
            list(r)
    assert e.value.status_code == 429
    retry_after(e.value.response.headers)
    body = e.value.body
    assert body["code"] == "usage_limit_reached" and "five_hour" in body["message"], body
    # Responses.
    with pytest.raises(openai.RateLimitError) as e:
        r = d.openai(max_retries=0).responses.create(model="claude", input="over", stream=stream)
        if stream:
            list(r)
    assert e.value.body["code"] == "usage_limit_reached"
    # Anthropic messages: rate_limit_error.
    with pytest.raises(anthropic.RateLimitError) as e:
        r = d.anthropic(max_retries=0).messages.create(model="claude", max_tokens=100, messages=msg, stream=stream)
        if stream:
            list(r)
    assert e.value.status_code == 429 and e.value.body["error"]["type"] == "rate_limit_error"
    retry_after(e.value.response.headers)
    # The native API: 429 with its code, streamed (NDJSON) or not.
    body = {"backend": "claude", "prompt": "over", "workdir": str(d.world.root / "work")}
    if stream:
        body["output_format"] = "stream-json"
    req = urllib.request.Request(d.url + "/api/v1/prompt", data=json.dumps(body).encode(),
                                 headers={"content-type": "application/json"}, method="POST")
    with pytest.raises(urllib.error.HTTPError) as e:
        answer = urllib.request.urlopen(req, timeout=120).read()
        pytest.fail(f"not refused: {answer[:2000]!r}")
    assert e.value.code == 429
    retry_after(e.value.headers)
    assert json.loads(e.value.read())["code"] == "usage_limit_reached"
    # Shown and counted.
    limits = accounts(d)["claude"]["limits"]
    assert limits["status"] == "rejected" and limits["limiting_window"] == "five_hour", limits
    text = metrics(d)
    refusals = re.search(r'clinvk_usage_limit_refusals_total\{[^}]*backend="claude"[^}]*\} (\d+)', text)
    assert refusals and int(refusals.group(1)) == 4, [l for l in text.splitlines() if "refusals" in l]
    # The window resets: runs go on, and a warning never blocks.
    set_limits(fake_model, "warning")
    r = d.openai(max_retries=0).chat.completions.create(model="claude", messages=msg)
    assert "fake-reply" in r.choices[0].message.content


def test_codex_reports_its_windows_and_a_spent_one_is_a_429(compat, fake_model):
    """codex's app-server (its warm mode, the default) reports `account/rateLimits/updated`
    after each turn from the API's `x-codex-*` headers; a turn refused with
    `usageLimitExceeded` is a 429."""
    d = compat()
    set_limits(fake_model, "warning")
    r = d.openai(max_retries=0).chat.completions.create(
        model="codex", messages=[{"role": "user", "content": "near the limit"}])
    assert "fake-reply" in r.choices[0].message.content
    limits = accounts(d)["codex"]["limits"]
    windows = {w["name"]: w for w in limits["windows"]}
    assert windows["primary"]["utilization"] == pytest.approx(0.91), limits
    assert windows["primary"]["minutes"] == 300 and windows["secondary"]["minutes"] == 10080
    set_limits(fake_model, "rejected")
    with pytest.raises(openai.RateLimitError) as e:
        d.openai(max_retries=0).chat.completions.create(
            model="codex", messages=[{"role": "user", "content": "over the limit"}])
    assert e.value.body["code"] == "usage_limit_reached" and "primary" in e.value.body["message"]
    retry_after(e.value.response.headers)
    assert accounts(d)["codex"]["limits"]["status"] == "rejected"


# The CLIs that report no windows, only a refusal: (backend, mode, the window clinvk names).
REFUSALS = [
    ("gemini", "oneshot"), ("gemini", "warm"),
    ("copilot", "oneshot"), ("copilot", "warm"),
    ("codex", "oneshot"),
]


@pytest.mark.parametrize("backend,mode", REFUSALS, ids=[f"{b}-{m}" for b, m in REFUSALS])
def test_a_refusal_without_windows_is_a_429(compat, fake_model, backend, mode):
    """gemini (a spent daily quota: exit 173), copilot (`session.error` `rate_limit`; warm, the
    error as the turn's text) and codex's one-shot `exec` (its message only) report no windows,
    only the refusal: still a 429 with `Retry-After`, and the account shows it rejected."""
    d = compat(config=f"backends:\n  {backend}:\n    mode: {mode}\n")
    set_limits(fake_model, "rejected")
    with pytest.raises(openai.RateLimitError) as e:
        d.openai(max_retries=0).chat.completions.create(
            model=backend, messages=[{"role": "user", "content": "over the limit"}])
    assert e.value.status_code == 429 and e.value.body["code"] == "usage_limit_reached", e.value.body
    if (backend, mode) == ("gemini", "oneshot"):
        retry_after(e.value.response.headers)  # the API's RetryInfo, from gemini's stderr
    else:
        assert int(e.value.response.headers["retry-after"]) >= 1
    limits = accounts(d)[backend]["limits"]
    assert limits["status"] == "rejected" and limits["windows"] == [], limits
    # A task of `parallel` reports it in its result.
    status, body = http_json("POST", d.url + "/api/v1/parallel", {"tasks": [
        {"backend": backend, "prompt": "a task over the limit", "workdir": str(d.world.root / "work")}]},
        timeout=120)
    assert status == 200 and body["failed"] == 1, body
    [task] = body["results"]
    assert task["error"] and task["usage_limit"]["status"] == "rejected", task
    set_limits(fake_model, "none")
    r = d.openai(max_retries=0).chat.completions.create(
        model=backend, messages=[{"role": "user", "content": "after the reset"}])
    assert "fake-reply" in r.choices[0].message.content
    # A run that went through ends a refusal known only from the CLI's words.
    assert accounts(d)[backend]["limits"] is None
