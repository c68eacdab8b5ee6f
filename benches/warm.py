#!/usr/bin/env python3
"""clinvk warm-worker benchmark: a turn through clinvk against the bare CLI.

The same world as the black-box tests: a fresh clinvkd in a temporary HOME whose real CLIs
(claude, codex, gemini from the test cache) talk to the fake model server on loopback, which
answers at once — so what is measured is the CLIs' own start-up and clinvk's handling. Per
backend, N times each:

* bare CLI: the one-shot argv the daemon would run (its dry run's `command`), started fresh:
  time to the first stdout line carrying answer text, and to its exit;
* clinvk one-shot (`mode: oneshot`): a new session, and a follow-up turn of one session;
* clinvk warm (`mode: warm`, `warm.pool: 1`): a new session taken from the pool (refilled
  before each run; the run waits until the pooled worker is 5 s old, as it would be between a
  user's requests), and a follow-up turn of a session whose worker is alive;
* clinvk warm in another folder: a new session with a `workdir` other than the default, once
  the folder was used (it then keeps a spare, `warm.folders`), the same way; and the `clinvk`
  command itself run in that folder (wall time of the whole command, which sends its folder);

for clinvk: time to the first streamed answer text (an NDJSON `message` line) and to the end,
p50 and p95. Then the daemon's RSS and each live worker's (its process group's) RSS.

    CLINVK_BIN_DIR=target/release .test-cache/venv/bin/python benches/warm.py --runs 10 --json warm.json
"""

from __future__ import annotations

import argparse
import datetime
import http.client
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402  (the shared helpers: world, machine, rss, http)

BACKENDS = bench.BACKENDS
# How long a pooled worker has been alive before a new session takes it.
POOL_SETTLE_MS = 5000


def summary(first: list[float], end: list[float]) -> dict:
    return {"first_p50_ms": bench.pct(first, 0.5), "first_p95_ms": bench.pct(first, 0.95),
            "end_p50_ms": bench.pct(end, 0.5), "end_p95_ms": bench.pct(end, 0.95), "n": len(first)}


def stream_turn(url: str, body: dict, timeout: float) -> tuple[float, float, str | None]:
    """(first answer text, end) in seconds of one stream-json prompt, and its session id."""
    u = urllib.parse.urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    start = time.perf_counter()
    try:
        conn.request("POST", "/api/v1/prompt", body=json.dumps({**body, "output_format": "stream-json"}),
                     headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        if resp.status != 200:
            raise RuntimeError(f"stream answered {resp.status}: {resp.read()[:500]!r}")
        first = None
        session = None
        while True:
            line = resp.readline()
            if not line:
                break
            event = json.loads(line)
            if event["type"] == "message" and first is None:
                first = time.perf_counter() - start
            if event["type"] == "done":
                if event["content"].get("exit_code") != 0:
                    raise RuntimeError(f"turn failed: {event}")
                session = event["content"].get("session_id")
        return first, time.perf_counter() - start, session
    finally:
        conn.close()


def bare_turn(argv, cwd, env, timeout: float, stdin: str | None = None) -> tuple[float, float]:
    """(first stdout line with answer text, exit) in seconds of the bare CLI; ``stdin``: the
    prompt, for a CLI the daemon gives it on standard input (the dry run's ``stdin``)."""
    start = time.perf_counter()
    p = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                         stdin=subprocess.DEVNULL if stdin is None else subprocess.PIPE,
                         process_group=0)
    if stdin is not None:
        p.stdin.write(stdin.encode())
        p.stdin.close()
    first = None
    try:
        timer = threading.Timer(timeout, lambda: bench.kill_group(p))
        timer.start()
        for line in p.stdout:
            if first is None and b"fake-reply" in line:
                first = time.perf_counter() - start
        p.wait()
        timer.cancel()
        if p.returncode != 0:
            raise RuntimeError(f"bare {argv[0]} exited {p.returncode}")
        return first, time.perf_counter() - start
    finally:
        bench.kill_group(p)


def workers(world, backend: str, state: str | None = None) -> list[dict]:
    s = world.status() or {}
    return [w for w in s.get("workers", []) if w["backend"] == backend and (state is None or w["state"] == state)]


def wait_for(pred, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(0.05)
    raise RuntimeError(f"timed out waiting for {what}")


def set_mode(world, mode: str, pool: int) -> None:
    # Every measured new session leaves its worker idle for `warm.idle_secs`: room for all of
    # them, so that the next backend's pool is not held back by `limits.max_workers`.
    text = "limits:\n  max_workers: 64\nbackends:\n" + "".join(
        f"  {b}:\n    mode: {mode}\n    warm:\n      pool: {pool}\n" for b in BACKENDS)
    world.write_config(text)
    r = world.ctl("reload")
    if r.returncode != 0:
        raise RuntimeError(f"reload failed: {r.stderr}")


def bench_backend(url, world, backend: str, runs: int, timeout: float) -> dict:
    body = {"backend": backend, "prompt": bench.PROMPT}
    status, dry = bench.http_post(url + "/api/v1/prompt", {**body, "dry_run": True, "ephemeral": True}, timeout)
    if status != 200:
        raise RuntimeError(f"dry run answered {status}: {dry}")
    child_env = dict(world.env)
    child_env.update({k: bench.KNOWN_CHILD_ENV[k] for k in dry.get("env", []) if k in bench.KNOWN_CHILD_ENV})
    out: dict = {"backend": backend}

    first, end = [], []
    for _ in range(runs):
        f, e = bare_turn(dry["command"], dry.get("cwd"), child_env, timeout,
                         bench.PROMPT if dry.get("stdin") else None)
        first.append(f)
        end.append(e)
    out["bare"] = summary(first, end)

    for mode in ("oneshot", "warm"):
        set_mode(world, mode, 1 if mode == "warm" else 0)
        # A new session (warm: from the pool, refilled before each run).
        first, end = [], []
        for _ in range(runs):
            if mode == "warm":
                # A pooled worker that has had its start-up time (as between a user's requests).
                wait_for(lambda: any(w["age_ms"] >= POOL_SETTLE_MS for w in workers(world, backend, "pooled")),
                         timeout, f"a settled pooled {backend} worker")
            f, e, _ = stream_turn(url, body, timeout)
            first.append(f)
            end.append(e)
        out[f"{mode}_new"] = summary(first, end)
        # Follow-up turns of one session.
        _, _, session = stream_turn(url, body, timeout)
        first, end = [], []
        for i in range(runs):
            f, e, _ = stream_turn(url, {**body, "session_id": session, "prompt": f"follow-up {i}"}, timeout)
            first.append(f)
            end.append(e)
        out[f"{mode}_followup"] = summary(first, end)
        if mode == "warm":
            live = workers(world, backend)
            out["worker_rss_mb"] = [round((w["rss_bytes"] or 0) / 2**20, 1) for w in live]
            out.update(bench_folder(url, world, backend, body, runs, timeout))
    bare = out["bare"]["first_p50_ms"]
    out["ratio_folder_new_first"] = round(out["warm_folder_new"]["first_p50_ms"] / bare, 3) if bare else None
    bare_end = out["bare"]["end_p50_ms"]
    out["ratio_folder_new_end"] = round(out["warm_folder_new"]["end_p50_ms"] / bare_end, 3) if bare_end else None
    out["ratio_followup_first"] = round(out["warm_followup"]["first_p50_ms"] / bare, 3) if bare else None
    out["ratio_new_first"] = round(out["warm_new"]["first_p50_ms"] / bare, 3) if bare else None
    return out


def bench_folder(url, world, backend: str, body: dict, runs: int, timeout: float) -> dict:
    """New sessions in a folder other than the default, once it was used (warm mode, pool 1)."""
    from harness import BIN_DIR

    proj = Path(world.root) / f"project-{backend}"
    proj.mkdir(exist_ok=True)
    at = {**body, "workdir": str(proj)}
    stream_turn(url, at, timeout)  # the folder is used once: from now on it keeps a spare

    def settled_spares() -> bool:
        # The default pool's worker and the folder's spare, both past their start-up.
        return sum(w["age_ms"] >= POOL_SETTLE_MS for w in workers(world, backend, "pooled")) >= 2

    first, end = [], []
    for _ in range(runs):
        wait_for(settled_spares, timeout, f"a settled {backend} spare for the folder")
        f, e, _ = stream_turn(url, at, timeout)
        first.append(f)
        end.append(e)
    cmd = []
    for _ in range(runs):
        wait_for(settled_spares, timeout, f"a settled {backend} spare for the folder")
        t0 = time.monotonic()
        r = subprocess.run([str(Path(BIN_DIR) / "clinvk"), "-b", backend, bench.PROMPT], cwd=proj,
                           env=world.env, capture_output=True, text=True, timeout=timeout)
        if r.returncode != 0:
            raise RuntimeError(f"clinvk failed: {r.stderr[-2000:]}")
        cmd.append((time.monotonic() - t0) * 1000)
    return {"warm_folder_new": summary(first, end),
            "clinvk_command_ms": {"p50": round(statistics.median(cmd)), "max": round(max(cmd))}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=10, help="runs per backend and per way (default 10)")
    ap.add_argument("--backends", default=",".join(BACKENDS), help="comma-separated (default all)")
    ap.add_argument("--timeout", type=float, default=120, help="seconds allowed for any one turn")
    ap.add_argument("--json", dest="json_out", help="write the figures to this file")
    args = ap.parse_args(argv)

    from conftest import FakeModel  # also puts tests/fakemodel on sys.path
    import cli_env
    from harness import BIN_DIR, World, start_live

    tmp = Path(tempfile.mkdtemp(prefix="clinvk-warm-bench-"))
    fake = FakeModel(tmp / "fakemodel")
    world = None
    try:
        home = tmp / "home"
        env = cli_env.setup(home, fake.port)
        world = World(tmp / "world", home=home, base_env=env)
        for b in BACKENDS:
            world.env.pop(f"CLINVK_BACKENDS_{b.upper()}_WARM_POOL", None)
        url = start_live(world, "backends:\n" + "".join(f"  {b}:\n    mode: oneshot\n" for b in BACKENDS))
        pid = world.status()["pid"]
        report = {
            "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "machine": bench.machine(),
            "binaries": str(BIN_DIR),
            "cli_versions": bench.cli_env_versions(),
            "backends": [],
        }
        for b in [b for b in args.backends.split(",") if b]:
            print(f"… {b}: {args.runs} runs each way", file=sys.stderr, flush=True)
            report["backends"].append(bench_backend(url, world, b, args.runs, args.timeout))
        report["daemon_rss"] = bench.rss(pid)
    finally:
        if world is not None:
            world.stop_all()
        fake.stop()
        subprocess.run(["rm", "-rf", str(tmp)], check=False)

    print(f"machine: {report['machine']['cpus']} CPUs, {report['machine']['cpu']}; binaries {report['binaries']}")
    print("time to the first answer text / to the end, p50 (p95), ms")
    cols = ["bare", "oneshot_new", "oneshot_followup", "warm_new", "warm_followup", "warm_folder_new"]
    print(f"{'backend':<8}" + "".join(f"{c:>26}" for c in cols))
    for r in report["backends"]:
        cells = []
        for c in cols:
            s = r[c]
            cells.append(f"{s['first_p50_ms']}({s['first_p95_ms']})/{s['end_p50_ms']}({s['end_p95_ms']})")
        print(f"{r['backend']:<8}" + "".join(f"{x:>26}" for x in cells))
    for r in report["backends"]:
        print(f"{r['backend']}: warm follow-up first text = {r['ratio_followup_first']}× bare, "
              f"warm new session (pool) = {r['ratio_new_first']}× bare; new session in a recent folder: "
              f"first text {r['ratio_folder_new_first']}×, whole turn {r['ratio_folder_new_end']}× bare; "
              f"`clinvk` command there {r['clinvk_command_ms']['p50']} ms; worker RSS MiB {r.get('worker_rss_mb')}")
    print(f"daemon RSS: {report['daemon_rss']}")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
