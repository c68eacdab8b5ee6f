#!/usr/bin/env python3
"""clinvk side by side with an established wrapper of the same CLI: `claude-code-relay` (PyPI,
pinned below; an OpenAI-compatible server that runs `claude -p` per request), both in front of
the same real `claude` and the same fake model server, in one run.

Per server, N OpenAI chat completions (a new one-message conversation each, as a stateless
client sends them), through the same raw HTTP client:

* non-streamed: wall time;
* streamed, with the fake model pacing its answer (`[[slow:150]]`: 150 ms between pieces): time
  to the first content chunk, to the end, and how many content chunks arrived — a wrapper that
  really streams delivers several, the first long before the end.

Servers: claude-code-relay; clinvkd one-shot (`mode: oneshot`); clinvkd warm (`mode: warm`, a
pooled worker that has been alive 5 s for each conversation). The relay is installed into
`<test cache>/peer-venv` on first use.

    CLINVK_BIN_DIR=target/release .test-cache/venv/bin/python benches/peer.py --runs 7 --json peer.json
"""

from __future__ import annotations

import argparse
import datetime
import http.client
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402
import warm  # noqa: E402

RELAY = "claude-code-relay==0.0.9"
PACED = "[[slow:150]] pace this answer please"


def relay_bin(cache: Path) -> Path:
    venv = cache / "peer-venv"
    exe = venv / "bin" / "claude-code-relay"
    if not exe.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", RELAY], check=True)
    return exe


def chat(base: str, path: str, content: str, stream: bool, timeout: float):
    """(first content chunk s, end s, content chunks, text) of one chat completion."""
    u = urllib.parse.urlparse(base)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    # clinvk's model name for its claude backend; the relay's own alias for claude's default.
    body = {"model": "claude" if path.startswith("/openai") else "sonnet", "stream": stream,
            "messages": [{"role": "user", "content": content}]}
    start = time.perf_counter()
    try:
        conn.request("POST", path, body=json.dumps(body),
                     headers={"Content-Type": "application/json", "Connection": "close"})
        resp = conn.getresponse()
        if resp.status != 200:
            raise RuntimeError(f"{base}{path} answered {resp.status}: {resp.read()[:300]!r}")
        if not stream:
            text = json.loads(resp.read())["choices"][0]["message"]["content"]
            end = time.perf_counter() - start
            return end, end, 1, text
        first, chunks, text = None, 0, []
        while True:
            line = resp.readline()
            if not line:
                break
            line = line.strip()
            if line == b"data: [DONE]":
                break  # (the relay keeps the connection open after it)
            if not line.startswith(b"data: "):
                continue
            piece = (json.loads(line[6:])["choices"] or [{}])[0].get("delta", {}).get("content")
            if piece:
                chunks += 1
                text.append(piece)
                if first is None:
                    first = time.perf_counter() - start
        return first, time.perf_counter() - start, chunks, "".join(text)
    finally:
        conn.close()


def measure(name, base, path, runs, timeout, before=None) -> dict:
    walls, firsts, ends, chunks = [], [], [], []
    for i in range(runs):
        if before:
            before()
        wall, _, _, text = chat(base, path, f"side by side {i}", False, timeout)
        if "fake-reply" not in text:
            raise RuntimeError(f"{name}: unexpected answer {text!r}")
        walls.append(wall)
        if before:
            before()
        f, e, n, text = chat(base, path, f"{PACED} {i}", True, timeout)
        if "fake-reply" not in text:
            raise RuntimeError(f"{name}: unexpected streamed answer {text!r}")
        firsts.append(f)
        ends.append(e)
        chunks.append(n)
    return {"server": name, "wall_p50_ms": warm.pct(walls, 0.5), "stream_first_p50_ms": warm.pct(firsts, 0.5),
            "stream_end_p50_ms": warm.pct(ends, 0.5), "stream_chunks_median": sorted(chunks)[len(chunks) // 2]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--timeout", type=float, default=120)
    ap.add_argument("--json", dest="json_out")
    args = ap.parse_args(argv)

    from conftest import FakeModel
    import cli_env
    from harness import BIN_DIR, World, start_live

    exe = relay_bin(cli_env.cache_dir())
    tmp = Path(tempfile.mkdtemp(prefix="clinvk-peer-"))
    fake = FakeModel(tmp / "fakemodel")
    world, relay = None, None
    try:
        env = cli_env.setup(tmp / "home", fake.port)
        world = World(tmp / "world", home=tmp / "home", base_env=env)
        world.env.pop("CLINVK_BACKENDS_CLAUDE_WARM_POOL", None)
        url = start_live(world, "backends:\n  claude:\n    mode: oneshot\n")
        port = 30000 + os.getpid() % 20000
        relay = subprocess.Popen([str(exe), "serve", "--port", str(port), "--claude-path",
                                  str(cli_env.npm_bin_dir() / "claude")], env=world.env,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        relay_url = f"http://127.0.0.1:{port}"
        warm.wait_for(lambda: _answers(relay_url + "/v1/models"), 30, "claude-code-relay to answer")
        report = {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                  "machine": bench.machine(), "binaries": str(BIN_DIR), "relay": RELAY,
                  "cli_versions": bench.cli_env_versions(), "servers": []}
        print("… claude-code-relay", file=sys.stderr, flush=True)
        report["servers"].append(measure("claude-code-relay", relay_url, "/v1/chat/completions", args.runs, args.timeout))
        print("… clinvk one-shot", file=sys.stderr, flush=True)
        report["servers"].append(measure("clinvk oneshot", url, "/openai/v1/chat/completions", args.runs, args.timeout))
        world.write_config("backends:\n  claude:\n    mode: warm\n    warm:\n      pool: 1\n")
        world.ctl("reload")

        def settled_pool():
            warm.wait_for(lambda: any(w["age_ms"] >= warm.POOL_SETTLE_MS for w in warm.workers(world, "claude", "pooled")),
                          args.timeout, "a settled pooled claude worker")

        print("… clinvk warm", file=sys.stderr, flush=True)
        report["servers"].append(measure("clinvk warm", url, "/openai/v1/chat/completions", args.runs, args.timeout,
                                         before=settled_pool))
    finally:
        if relay is not None:
            relay.terminate()
            relay.wait(10)
        if world is not None:
            world.stop_all()
        fake.stop()
        subprocess.run(["rm", "-rf", str(tmp)], check=False)

    base = report["servers"][0]
    print(f"machine: {report['machine']['cpus']} CPUs; {RELAY}; CLIs {report['cli_versions']}")
    print(f"{'server':<20}{'wall ms':>9}{'1st chunk ms':>14}{'stream end ms':>15}{'chunks':>8}{'wall ×':>8}{'1st ×':>8}")
    for s in report["servers"]:
        print(f"{s['server']:<20}{s['wall_p50_ms']:>9}{s['stream_first_p50_ms']:>14}{s['stream_end_p50_ms']:>15}"
              f"{s['stream_chunks_median']:>8}{s['wall_p50_ms'] / base['wall_p50_ms']:>8.2f}"
              f"{s['stream_first_p50_ms'] / base['stream_first_p50_ms']:>8.2f}")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(report, indent=2) + "\n")
    return 0


def _answers(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=2).read()
        return True
    except OSError:
        return False


if __name__ == "__main__":
    sys.exit(main())
