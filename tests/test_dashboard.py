"""The dashboard at /ui, driven in headless Chromium with the network off (tests/cdp.py), against
the real claude CLI and the fake model server: it loads with auth on and asks for a key; a prompt
typed in the box streams into the page; the live list shows the run while the fake model holds
it (`[[gate]]`) and its cancel button ends it (the CLI process is gone); the usage chart has a
point for the runs; a key added in the page works with curl, and revoking it in the page works.
Screenshots go to the folder the test prints (tests/artifacts/dashboard by default)."""

from __future__ import annotations

import datetime
import json
import subprocess
import time
import urllib.parse

import pytest

from cdp import Browser, artifacts_dir, chromium_path
from harness import live_world, pid_alive, poll, start_live  # noqa: F401  (fixture)

pytestmark = pytest.mark.skipif(chromium_path() is None, reason="chromium is not installed (tests/run.sh installs it)")


def curl_status(url: str, key: str) -> int:
    r = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                        "-H", f"Authorization: Bearer {key}", url + "/api/v1/sessions"],
                       capture_output=True, text=True, timeout=30)
    return int(r.stdout)


def live_rows(b: Browser) -> int:
    return b.js("document.querySelectorAll('#live-runs tr[data-run]').length")


def busy_pids(world) -> list[int]:
    """The pids of the CLI processes running a prompt now (one-shot runs and busy warm workers)."""
    s = world.status()
    return [r["pid"] for r in (s or {}).get("runs", []) if r.get("pid")]


@pytest.fixture
def browser():
    b = Browser()
    yield b
    b.close()


def test_dashboard_end_to_end(live_world, fake_model, browser):
    out = artifacts_dir("dashboard")
    print(f"\nscreenshots: {out}")
    # One-shot runs: cancelling one kills its CLI. (In warm mode a cancel interrupts the turn and
    # the session's worker stays for its next turn: see docs/architecture.md.)
    # The quota windows claude last reported (kept in the state folder across restarts; the
    # reading itself is tests/test_limits.py's): the backends view draws a bar per window.
    reset = int(time.time()) + 3600

    def window(name: str, util: float, status: str) -> dict:
        return {"name": name, "utilization": util, "resets_at": reset, "status": status}

    live_world.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    # codex has two accounts (folders under the state folder), one of them refused.
    for name in ("team-a", "team-b"):
        (live_world.state_dir / "accounts" / "codex" / name).mkdir(mode=0o700, parents=True)
    (live_world.state_dir / "quotas.json").write_text(json.dumps([{
        "backend": "claude", "account": "default", "limits": {
            "status": "allowed_warning", "limiting_window": "five_hour", "resets_at": reset,
            "windows": [window("five_hour", 0.91, "allowed_warning"), window("seven_day", 0.42, "allowed")],
            "seen_at": int(time.time()), "source": "claude"}}, {
        "backend": "codex", "account": "team-b", "limits": {
            "status": "rejected", "limiting_window": "primary", "resets_at": reset,
            "windows": [window("primary", 1.0, "rejected")],
            "seen_at": int(time.time()), "source": "codex"}}]))
    url = start_live(live_world, "backends:\n  claude:\n    mode: oneshot\n")
    r = live_world.ctl("keys", "add", "operator", "--scope", "admin")
    assert r.returncode == 0, r.stderr
    admin = r.stdout.strip()
    b = browser

    # Auth is on: the page asks for a key.
    b.goto(url + "/ui")
    b.wait("!document.getElementById('login').hidden", what="the key form")
    assert b.js("document.getElementById('app').hidden") is True
    b.screenshot(out / "01-key-form.png")
    b.type_into("key-input", admin)
    b.click("#key-submit")
    b.wait("!document.getElementById('app').hidden", what="the dashboard")
    b.wait("document.getElementById('live-state').textContent === 'live'", what="the live stream")
    b.wait("[...document.querySelectorAll('#prompt-backend option')].some(o => o.value === 'claude' && !o.disabled)",
           what="claude in the backend list")
    assert b.js("sessionStorage.getItem('clinvk.key')") == admin
    assert "0 of 8 runs at once · queue 0 of 32" in b.js("document.getElementById('capacity').textContent")
    bar = "#backends tr[data-backend=claude] .quota-window[data-window=five_hour]"
    b.wait(f"!!document.querySelector('{bar}')", what="claude's quota bars")
    assert "91% allowed warning" in b.js(f"document.querySelector('{bar}').textContent")
    assert b.js(f"document.querySelector('{bar} .quota-fill').style.width") == "91%"
    assert b.js(f"document.querySelector('{bar}').classList.contains('allowed_warning')") is True
    assert b.js("document.querySelectorAll('#backends tr[data-backend=gemini] .quota-window').length") == 0
    # The accounts of a backend, each with its windows.
    team_b = "#backends tr[data-backend=codex] .account[data-account=team-b]"
    assert "team-b" in b.js(f"document.querySelector('{team_b}').textContent")
    assert "refused" in b.js(f"document.querySelector('{team_b} .account-name').textContent")
    assert b.js(f"document.querySelector('{team_b} .quota-window[data-window=primary]').classList.contains('rejected')") is True
    assert b.js("!!document.querySelector('#backends tr[data-backend=codex] .account[data-account=team-a]')") is True

    # A prompt typed in the box streams into the page: the first piece is shown while the fake
    # model holds the rest.
    b.js("document.getElementById('prompt-backend').value = 'claude'")
    b.type_into("prompt-text", "stream this [[gate]]")
    b.click("#prompt-send")
    b.wait("document.getElementById('prompt-output').textContent.startsWith('fake-reply')",
           what="the first piece of the answer")
    assert b.js("document.getElementById('prompt-status').dataset.done") is None, "not finished yet"
    assert "last=" not in b.js("document.getElementById('prompt-output').textContent")
    b.wait("document.querySelectorAll('#live-runs tr[data-run]').length === 1", what="the run in the live list")
    b.screenshot(out / "02-streaming.png")
    fake_model.release()
    b.wait("document.getElementById('prompt-status').dataset.done === '1'", what="the end of the answer")
    assert b.js("document.getElementById('prompt-output').textContent").strip() == \
        "fake-reply turns=1 last=stream this [[gate]]"
    b.wait("document.querySelectorAll('#live-runs tr[data-run]').length === 0", what="the run to leave the live list")

    # The live list shows a held run; its cancel button ends it and its CLI process is gone.
    fake_model.reset()  # arms [[gate]] again
    b.js("document.getElementById('prompt-text').value = ''")
    b.type_into("prompt-text", "cancel me [[gate]]")
    b.click("#prompt-send")
    b.wait("document.querySelectorAll('#live-runs tr[data-run]').length === 1", what="the run in the live list")
    b.wait("document.getElementById('prompt-output').textContent.startsWith('fake-reply')",
           what="the first piece of the second answer")
    pids = poll(lambda: busy_pids(live_world), 30, "the CLI's pid in clinvkctl status")
    assert all(pid_alive(p) for p in pids)
    row = b.js("document.querySelector('#live-runs tr[data-run]').textContent")
    assert "claude" in row and "native" in row, row
    b.wait("document.getElementById('capacity').textContent.includes('1 of 8 runs at once')",
           what="the backends view to count the run's slot")
    b.screenshot(out / "03-running.png")
    b.screenshot(out / "dashboard-small.png", scale=0.6)  # what docs/dashboard.png shows
    b.click("#live-runs tr[data-run] button.cancel")
    b.wait("document.querySelectorAll('#live-runs tr[data-run]').length === 0", what="the run to end")
    poll(lambda: not any(pid_alive(p) for p in pids), 30, "the cancelled CLI to be gone")
    b.wait("document.getElementById('prompt-status').textContent.includes('cancelled')",
           what="the page to say the run was cancelled")
    fake_model.release()

    # The usage chart has today's point, counting both runs (the page redraws it when a run ends).
    today = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    point = f"#usage-chart rect.point[data-group='{today}']"
    b.wait(f"(document.querySelector(\"{point}\") || {{}}).dataset?.requests === '2'",
           what="today's point in the usage chart with 2 runs")
    r = json.loads(live_world.ctl("usage", "--by", "day", "--json").stdout)
    assert [(g["group"], g["requests"], g["errors"]) for g in r["groups"]] == [(today, 2, 1)]
    b.screenshot(out / "04-usage.png")

    # A key added in the page works with curl; revoked in the page, it stops working.
    b.type_into("key-add-name", "from-the-page")
    b.js("document.getElementById('key-add-scope').value = 'read'")
    b.click("#key-add-submit")
    b.wait("!document.getElementById('key-new').hidden", what="the new key")
    new_key = b.js("document.getElementById('key-new-value').textContent")
    assert new_key.startswith("ck-")
    b.wait("document.querySelector('#keys tr[data-name=\"from-the-page\"]') !== null", what="the new key listed")
    b.screenshot(out / "05-keys.png")
    assert curl_status(url, new_key) == 200
    b.click("#keys tr[data-name='from-the-page'] button.revoke")
    b.wait("document.querySelector('#keys tr[data-name=\"from-the-page\"]') === null", what="the key revoked")
    assert curl_status(url, new_key) == 401
    assert curl_status(url, admin) == 200

    # The sessions list shows both runs; one opens as a transcript.
    b.wait("document.querySelectorAll('#sessions tr[data-session]').length === 2", what="two sessions")
    b.click("#sessions tr[data-session]")
    b.wait("document.querySelectorAll('#transcript .turn').length >= 1", what="a transcript")
    b.js("window.scrollTo(0, 0)")
    b.screenshot(out / "dashboard.png")
    deleted = b.js("document.querySelector('#sessions tr[data-session]').dataset.session")
    b.click("#sessions tr[data-session] button.danger")
    b.wait("document.querySelectorAll('#sessions tr[data-session]').length === 1", what="the session deleted")
    r = live_world.clinvk("sessions", "list", "--json")
    assert r.returncode == 0 and deleted not in r.stdout, r.stdout

    # The API docs page links to the dashboard.
    b.goto(url + "/docs")
    b.wait("document.querySelector('a[href=\"/ui\"]') !== null", what="the dashboard link on /docs")

    # Nothing came from anywhere but the daemon.
    origin = urllib.parse.urlparse(url)
    foreign = [u for u in b.requests
               if urllib.parse.urlparse(u).netloc != origin.netloc and not u.startswith(("data:", "about:"))]
    assert not foreign, foreign
    assert b.requests, "requests were recorded"
    errors = [c for c in b.console if c.startswith(("exception", "error"))]
    assert not errors, errors
