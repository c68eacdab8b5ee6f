"""Soak: a bounded mixed load (a fixed number of requests, not a fixed time) over the native,
OpenAI (chat and Responses) and Anthropic APIs, streamed and not, with clients that go away
mid-stream and malformed requests, 8 at a time, against fault-injection CLIs (no model). After
it: no 5xx, no CLI process left, the daemon's open files and memory back near where they were,
and every session file parseable and consistent."""

from __future__ import annotations

import http.client
import json
import os
import random
import threading
import urllib.parse
from pathlib import Path

from harness import FAKECLI_DIR, pid_alive, poll, world  # noqa: F401  (fixture)

REQUESTS = 480
CONCURRENCY = 8


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def children(pid: int) -> list[int]:
    """Every process whose parent is `pid`."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry))
    return out


class Client:
    def __init__(self, url: str):
        u = urllib.parse.urlparse(url)
        self.host, self.port = u.hostname, u.port

    def call(self, path: str, body, stream: bool = False, leave_after: int | None = None) -> int:
        """Sends one request; reads the answer (all of it, or `leave_after` lines, then hangs up).
        Returns the status."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
        try:
            data = body if isinstance(body, (bytes, str)) else json.dumps(body)
            conn.request("POST" if body is not None else "GET", path, body=data,
                         headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            if leave_after is None:
                resp.read()
            else:
                for _ in range(leave_after):
                    if not resp.readline():
                        break
            return resp.status
        finally:
            conn.close()


def request_mix(rng: random.Random, n: int):
    text = f"soak request {n} words here"
    chat = {"model": "claude", "messages": [{"role": "user", "content": text}]}
    msgs = {"model": "claude", "max_tokens": 64, "messages": [{"role": "user", "content": text}]}
    resp = {"model": "claude", "input": text}
    native = {"backend": "claude", "prompt": text}
    choices = [
        ("/api/v1/prompt", native, None),
        ("/api/v1/prompt", {**native, "output_format": "stream-json"}, None),
        ("/api/v1/prompt", {**native, "output_format": "stream-json"}, 2),  # goes away mid-stream
        ("/api/v1/prompt", {**native, "ephemeral": True}, None),
        ("/openai/v1/chat/completions", chat, None),
        ("/openai/v1/chat/completions", {**chat, "stream": True}, None),
        ("/openai/v1/chat/completions", {**chat, "stream": True}, 3),
        ("/openai/v1/responses", resp, None),
        ("/openai/v1/responses", {**resp, "stream": True}, None),
        ("/openai/v1/responses", {**resp, "stream": True}, 4),
        ("/anthropic/v1/messages", msgs, None),
        ("/anthropic/v1/messages", {**msgs, "stream": True}, None),
        ("/anthropic/v1/messages", {**msgs, "stream": True}, 3),
        ("/api/v1/prompt", b"{not json", None),  # malformed: 400
        ("/openai/v1/chat/completions", {"model": "claude", "messages": []}, None),  # 400
        ("/health", None, None),
        ("/api/v1/sessions", None, None),
    ]
    return rng.choice(choices)


def test_soak_mixed_load_leaves_nothing_behind(world):
    world.write_config(
        f"backends:\n  claude:\n    command: {FAKECLI_DIR / 'slow-ok'}\n    mode: oneshot\n"
        "    env:\n      FAKECLI_DELAY_MS: '15'\n"
        "limits:\n  max_concurrent: 16\n  queue_size: 64\n  kill_grace_secs: 1\n")
    proc = world.start_daemon()
    pid, url = proc.pid, world.url
    client = Client(url)
    # Warm up once so lazily built state (OpenAPI, TLS-free pools, caches) is in the baseline.
    assert client.call("/api/v1/prompt", {"backend": "claude", "prompt": "warm up"}) == 200
    base_fds, base_rss = fds(pid), rss_kib(pid)

    statuses: dict[int, int] = {}
    errors: list[str] = []
    lock = threading.Lock()
    counter = iter(range(REQUESTS))

    def worker(seed: int):
        rng = random.Random(seed)
        while True:
            with lock:
                n = next(counter, None)
            if n is None:
                return
            path, body, leave = request_mix(rng, n)
            try:
                status = client.call(path, body, leave_after=leave)
            except Exception as e:  # a transport failure is a finding too
                with lock:
                    errors.append(f"{path}: {e!r}")
                continue
            with lock:
                statuses[status] = statuses.get(status, 0) + 1

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(CONCURRENCY)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    print(f"soak: {REQUESTS} requests, statuses {statuses}, transport errors {len(errors)}")
    assert not any(t.is_alive() for t in threads), "a client hung"
    assert not errors, errors[:5]
    assert sum(statuses.values()) == REQUESTS
    assert not [s for s in statuses if s >= 500], statuses
    assert statuses.get(200, 0) > REQUESTS // 2 and statuses.get(400, 0) > 0, statuses

    # Every CLI is gone, the runs list is empty, files and memory are back near the baseline.
    poll(lambda: not children(pid), 30, "every CLI process to be reaped")
    poll(lambda: not world.status()["runs"], 30, "no run left")
    poll(lambda: fds(pid) <= base_fds + 2, 30, f"open files back near {base_fds}")
    assert rss_kib(pid) <= base_rss + 32 * 1024, (base_rss, rss_kib(pid))
    assert pid_alive(pid)

    # Every session file parses and agrees with itself.
    sessions = list((world.state_dir / "sessions").glob("*.json"))
    assert sessions
    poll(lambda: all(json.loads(f.read_text())["status"] != "active" for f in sessions), 30,
         "every session's last turn to be recorded")
    for f in sessions:
        s = json.loads(f.read_text())
        assert s["id"] == f.stem
        assert s["turn_count"] == len(s["turns"]), f
        assert s["status"] in ("completed", "error", "interrupted"), s["status"]
        assert s["backend"] == "claude"
