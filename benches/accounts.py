#!/usr/bin/env python3
"""clinvk accounts benchmark: what a refused account costs a new session.

The same world as the black-box tests: a fresh clinvkd in a temporary HOME whose real claude
talks to fake model servers on loopback. Two accounts (`routing: fill_first`), each a claude
login by token against its own fake model. Per mode (`oneshot`, `warm`; warm pools off, so
every new session starts its CLI), N new conversations through the OpenAI chat API:

* **direct**: the first account answers (both fake models accept);
* **moved**: the first account's model refuses every request with a spent 5-hour window, so
  the turn is refused before any output and moves to the second account (a new CLI session
  there). After a refusal clinvkd skips that account until its reset, so each round ends by
  restarting the daemon without its `quotas.json`;
* **skipped**: the refusal known (the next new session goes straight to the second account).

The difference moved − direct is the time from a refused account to an answer from the next.
p50 and p95 in ms.

    CLINVK_BIN_DIR=target/release .test-cache/venv/bin/python benches/accounts.py --runs 5
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


def chat(url: str, text: str, timeout: float) -> tuple[float, str]:
    start = time.perf_counter()
    status, answer = bench.http_post(url + "/openai/v1/chat/completions", {
        "model": "claude", "messages": [{"role": "user", "content": text}]}, timeout)
    took = time.perf_counter() - start
    if status != 200:
        raise RuntimeError(f"chat answered {status}: {str(answer)[:500]}")
    return took, answer["choices"][0]["message"]["content"]


def config(mode: str, first: str, second: str) -> str:
    return f"""backends:
  claude:
    mode: {mode}
    warm:
      pool: 0
    routing: fill_first
    accounts:
      - name: first
        env: {{ANTHROPIC_BASE_URL: "{first}", CLAUDE_CODE_OAUTH_TOKEN: tok-1}}
      - name: second
        env: {{ANTHROPIC_BASE_URL: "{second}", CLAUDE_CODE_OAUTH_TOKEN: tok-2}}
"""


def limits(fake, mode: str) -> None:
    status, body = bench.http_post(fake.url + "/_fake/limits", {"mode": mode, "reset_in": 3600}, 10)
    if status != 200:
        raise RuntimeError(f"fake model limits: {status} {body}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5, help="new conversations per case and mode")
    ap.add_argument("--timeout", type=float, default=120)
    ap.add_argument("--json", dest="json_out", help="write the figures to this file")
    args = ap.parse_args(argv)

    from conftest import FakeModel  # also puts tests/fakemodel on sys.path
    import cli_env
    from harness import BIN_DIR, World, start_live

    tmp = Path(tempfile.mkdtemp(prefix="clinvk-accounts-bench-"))
    first, second = FakeModel(tmp / "first"), FakeModel(tmp / "second")
    world = None
    report = {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
              "machine": bench.machine(), "binaries": str(BIN_DIR), "rows": []}
    try:
        home = tmp / "home"
        env = cli_env.setup(home, second.port)
        world = World(tmp / "world", home=home, base_env=env)
        for mode in ("oneshot", "warm"):
            url = start_live(world, config(mode, first.url, second.url))
            cases = {"direct": [], "moved": [], "skipped": []}
            print(f"… claude {mode}: {args.runs} runs per case", file=sys.stderr, flush=True)
            for i in range(args.runs):
                limits(first, "none")
                t, _ = chat(url, f"direct {mode} {i}", args.timeout)
                cases["direct"].append(t)
                limits(first, "rejected")
                t, _ = chat(url, f"moved {mode} {i}", args.timeout)
                cases["moved"].append(t)
                t, _ = chat(url, f"skipped {mode} {i}", args.timeout)
                cases["skipped"].append(t)
                # Forget the refusal for the next round: restart the daemon without its book.
                world.stop_all()
                (world.state_dir / "quotas.json").unlink(missing_ok=True)
                if i + 1 < args.runs:
                    url = start_live(world, config(mode, first.url, second.url))
            row = {"mode": mode, "n": args.runs}
            for name, xs in cases.items():
                row[f"{name}_p50_ms"] = bench.pct(xs, 0.5)
                row[f"{name}_p95_ms"] = bench.pct(xs, 0.95)
            row["moved_minus_direct_p50_ms"] = round(row["moved_p50_ms"] - row["direct_p50_ms"], 1)
            report["rows"].append(row)
    finally:
        if world is not None:
            world.stop_all()
        first.stop()
        second.stop()
        subprocess.run(["rm", "-rf", str(tmp)], check=False)

    print(f"machine: {report['machine']['cpus']} CPUs; binaries {report['binaries']}")
    print(f"{'mode':<9}{'direct p50 (p95)':>20}{'moved p50 (p95)':>20}{'skipped p50 (p95)':>22}"
          f"{'moved - direct p50':>20}")
    for r in report["rows"]:
        print(f"{r['mode']:<9}{r['direct_p50_ms']:>12} ({r['direct_p95_ms']})"
              f"{r['moved_p50_ms']:>12} ({r['moved_p95_ms']})"
              f"{r['skipped_p50_ms']:>14} ({r['skipped_p95_ms']})"
              f"{r['moved_minus_direct_p50_ms']:>20}")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
