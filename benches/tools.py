#!/usr/bin/env python3
"""clinvk client-tool-call benchmark: one tool call round trip through the OpenAI chat API.

The same world as the black-box tests: a fresh clinvkd in a temporary HOME whose real CLIs talk
to the fake model server on loopback (which answers at once; `[[call:get_weather]]` makes it call
the client's tool). Per backend and mode (`oneshot`, `warm` — gemini takes tools in warm mode
only), N times:

* **to the call**: a new conversation with `tools`, until the answer with `tool_calls` (the CLI
  started with clinvkd's MCP endpoint, the model called the tool, the CLI's `tools/call`
  reached clinvkd and the run was parked);
* **continuation**: the request with the tool's result, until the final answer (the waiting
  `tools/call` answered, the same CLI process continued);
* **plain**: for scale, the same new conversation without tools (no MCP endpoint).

p50 and p95 in ms.

    CLINVK_BIN_DIR=target/release .test-cache/venv/bin/python benches/tools.py --runs 5
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402  (the shared helpers: world, machine, http)

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}
MODES = {"claude": ["oneshot", "warm"], "codex": ["oneshot", "warm"], "gemini": ["warm"]}


def chat(url: str, body: dict, timeout: float) -> tuple[float, dict]:
    start = time.perf_counter()
    status, answer = bench.http_post(url + "/openai/v1/chat/completions", body, timeout)
    took = time.perf_counter() - start
    if status != 200:
        raise RuntimeError(f"chat answered {status}: {str(answer)[:500]}")
    return took, answer


def set_mode(world, backend: str, mode: str) -> None:
    world.write_config(f"backends:\n  {backend}:\n    mode: {mode}\n    warm:\n      pool: 0\n")
    r = world.ctl("reload")
    if r.returncode != 0:
        raise RuntimeError(f"reload failed: {r.stderr}")


def bench_mode(url: str, backend: str, runs: int, timeout: float) -> dict:
    to_call, cont, plain = [], [], []
    for i in range(runs):
        user = {"role": "user", "content": f'run {i} [[call:get_weather={{"city":"Oslo"}}]]'}
        t, _ = chat(url, {"model": backend, "messages": [{"role": "user", "content": f"plain {i}"}]},
                    timeout)
        plain.append(t)
        t, first = chat(url, {"model": backend, "messages": [user], "tools": [WEATHER]}, timeout)
        msg = first["choices"][0]["message"]
        if first["choices"][0]["finish_reason"] != "tool_calls":
            raise RuntimeError(f"no tool call: {first}")
        to_call.append(t)
        call = msg["tool_calls"][0]
        t, final = chat(url, {"model": backend, "tools": [WEATHER], "messages": [
            user, msg, {"role": "tool", "tool_call_id": call["id"], "content": "sunny"}]}, timeout)
        if "sunny" not in final["choices"][0]["message"]["content"]:
            raise RuntimeError(f"the result did not reach the model: {final}")
        cont.append(t)
    return {"n": runs,
            "to_call_p50_ms": bench.pct(to_call, 0.5), "to_call_p95_ms": bench.pct(to_call, 0.95),
            "continuation_p50_ms": bench.pct(cont, 0.5), "continuation_p95_ms": bench.pct(cont, 0.95),
            "plain_p50_ms": bench.pct(plain, 0.5), "plain_p95_ms": bench.pct(plain, 0.95)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5, help="round trips per backend and mode")
    ap.add_argument("--backends", default="claude,codex,gemini")
    ap.add_argument("--timeout", type=float, default=120)
    ap.add_argument("--json", dest="json_out", help="write the figures to this file")
    args = ap.parse_args(argv)

    from conftest import FakeModel  # also puts tests/fakemodel on sys.path
    import cli_env
    from harness import BIN_DIR, World, start_live

    tmp = Path(tempfile.mkdtemp(prefix="clinvk-tools-bench-"))
    fake = FakeModel(tmp / "fakemodel")
    world = None
    report = {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
              "machine": bench.machine(), "binaries": str(BIN_DIR), "rows": []}
    try:
        home = tmp / "home"
        env = cli_env.setup(home, fake.port)
        world = World(tmp / "world", home=home, base_env=env)
        url = start_live(world, "")
        for b in [b for b in args.backends.split(",") if b]:
            for mode in MODES[b]:
                print(f"… {b} {mode}: {args.runs} round trips", file=sys.stderr, flush=True)
                set_mode(world, b, mode)
                report["rows"].append({"backend": b, "mode": mode,
                                       **bench_mode(url, b, args.runs, args.timeout)})
    finally:
        if world is not None:
            world.stop_all()
        fake.stop()
        subprocess.run(["rm", "-rf", str(tmp)], check=False)

    print(f"machine: {report['machine']['cpus']} CPUs; binaries {report['binaries']}")
    print(f"{'backend':<8}{'mode':<9}{'to the call p50 (p95)':>24}{'continuation p50 (p95)':>26}"
          f"{'plain turn p50 (p95)':>24}")
    for r in report["rows"]:
        print(f"{r['backend']:<8}{r['mode']:<9}"
              f"{r['to_call_p50_ms']:>15} ({r['to_call_p95_ms']})"
              f"{r['continuation_p50_ms']:>17} ({r['continuation_p95_ms']})"
              f"{r['plain_p50_ms']:>15} ({r['plain_p95_ms']})")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
