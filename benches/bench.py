#!/usr/bin/env python3
"""clinvk benchmark: what the daemon adds on top of the CLIs it serves.

Builds the same world as the black-box tests (tests/conftest.py FakeModel, tests/fakemodel/cli_env.py
setup(), tests/harness.py World/start_live): a fresh clinvkd in a temporary HOME whose real CLIs
(claude, codex, gemini from the test cache) talk to the fake model server on loopback. Then, per
backend:

* latency added: median wall time of N identical prompts through POST /api/v1/prompt, minus the
  median of the same CLI run bare (the argv is the daemon's own dry-run `command`), alternating
  the two so drift hits both alike;
* time to first streamed byte and to the first `message` line of an NDJSON (`stream-json`) prompt
  (and, for scale, the bare CLI's time to its first stdout line);

then throughput: K concurrent clients sending prompts to a claude backend that is the
`tests/fakecli/ok` fault CLI (no model, so the daemon and process spawning are what is measured);
and the daemon's RSS (VmRSS, and VmHWM = peak) before, after the latency runs and after throughput.

Bounded runs only (timeouts everywhere), loopback only. Prints a table; `--json out.json` writes
the figures.

    CLINVK_TEST_CACHE=/path/.test-cache CLINVK_BIN_DIR=target/release \\
        .test-cache/venv/bin/python benches/bench.py --runs 5 --json bench.json
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import http.client
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TESTS = REPO / "tests"
sys.path.insert(0, str(TESTS))

BACKENDS = ["claude", "codex", "gemini", "copilot", "opencode"]
# Values of the variables the daemon sets for a CLI (the dry run names them, not their values).
KNOWN_CHILD_ENV = {"GEMINI_CLI_TRUST_WORKSPACE": "true"}
PROMPT = "benchmark prompt: say hello"


def ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


def pct(xs, q: float):
    """The q-quantile of durations in seconds, in ms (None for no samples)."""
    if not xs:
        return None
    xs = sorted(xs)
    k = min(len(xs) - 1, max(0, round(q * (len(xs) - 1))))
    return round(xs[k] * 1000, 1)


def median(xs):
    return statistics.median(xs) if xs else None


def http_post(url: str, body: dict, timeout: float):
    u = urllib.parse.urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    try:
        conn.request("POST", u.path, body=json.dumps(body), headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        raw = resp.read()
        return resp.status, json.loads(raw) if raw else None
    finally:
        conn.close()


def rss(pid: int) -> dict:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])  # kB
    return {"rss_kb": out.get("VmRSS"), "peak_rss_kb": out.get("VmHWM")}


def run_bare(argv, cwd, env, timeout: float) -> float:
    """Seconds until the bare CLI exits. Spawned as the daemon spawns it (own process group via
    setpgid, stdin /dev/null — not setsid: claude runs about 250 ms slower without a controlling
    terminal's session), waiting for the CLI's own exit, not for EOF on its output (helpers a CLI
    leaves behind may hold the pipe open), then killing its process group."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        p = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out,
                             stderr=err, process_group=0)
        try:
            code = p.wait(timeout=timeout)
            elapsed = time.perf_counter() - start
        finally:
            kill_group(p)
        if code != 0:
            err.seek(0)
            raise RuntimeError(f"bare {argv[0]} exited {code}: {err.read()[-2000:]!r}")
    return elapsed


def kill_group(p: subprocess.Popen) -> None:
    try:
        os.killpg(p.pid, 9)
    except (ProcessLookupError, PermissionError):
        pass
    if p.poll() is None:
        p.wait()


def bare_first_line(argv, cwd, env, timeout: float) -> float:
    """Seconds until the bare CLI prints its first stdout line (then it runs to its exit)."""
    start = time.perf_counter()
    p = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, process_group=0)
    try:
        p.stdout.readline()
        first = time.perf_counter() - start
        threading.Thread(target=p.stdout.read, daemon=True).start()  # drain; never block the CLI
        p.wait(timeout=timeout)
    finally:
        kill_group(p)
    return first


def daemon_prompt(url: str, body: dict, timeout: float, outside: list | None = None) -> float:
    """Wall seconds of one prompt over HTTP; appends to `outside` the part spent outside the CLI
    (HTTP wall time minus the run's own `duration_ms`, spawn to exit)."""
    start = time.perf_counter()
    status, r = http_post(url + "/api/v1/prompt", body, timeout)
    elapsed = time.perf_counter() - start
    if status != 200 or r.get("exit_code") != 0 or r.get("error"):
        raise RuntimeError(f"daemon prompt failed: {status} {r}")
    if outside is not None:
        outside.append(elapsed - r["duration_ms"] / 1000)
    return elapsed


def daemon_stream(url: str, body: dict, timeout: float) -> tuple[float, float, float]:
    """(first byte, first `message` line, end) in seconds for a stream-json prompt."""
    u = urllib.parse.urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    start = time.perf_counter()
    try:
        conn.request("POST", "/api/v1/prompt", body=json.dumps({**body, "output_format": "stream-json"}),
                     headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        if resp.status != 200:
            raise RuntimeError(f"stream answered {resp.status}: {resp.read()[:500]!r}")
        first_byte = first_message = None
        while True:
            line = resp.readline()
            if not line:
                break
            now = time.perf_counter() - start
            if first_byte is None:
                first_byte = now
            event = json.loads(line)
            if event["type"] == "message" and first_message is None:
                first_message = now
            if event["type"] == "done" and event["content"].get("exit_code") != 0:
                raise RuntimeError(f"stream run failed: {event}")
        return first_byte, first_message, time.perf_counter() - start
    finally:
        conn.close()


def bench_backend(url: str, backend: str, workdir: Path, env: dict, runs: int, timeout: float) -> dict:
    body = {"backend": backend, "prompt": PROMPT, "workdir": str(workdir), "ephemeral": True}
    status, dry = http_post(url + "/api/v1/prompt", {**body, "dry_run": True}, timeout)
    if status != 200:
        raise RuntimeError(f"{backend} dry run answered {status}: {dry}")
    argv, cwd = dry["command"], dry.get("cwd") or str(workdir)
    child_env = dict(env)
    unknown = [n for n in dry.get("env", []) if n not in KNOWN_CHILD_ENV]
    child_env.update({n: KNOWN_CHILD_ENV[n] for n in dry.get("env", []) if n in KNOWN_CHILD_ENV})
    status, dry_stream = http_post(url + "/api/v1/prompt",
                                   {**body, "dry_run": True, "output_format": "stream-json"}, timeout)
    stream_argv = dry_stream["command"]

    # Warm-up (page cache, node's compile cache, the fake model), not counted.
    run_bare(argv, cwd, child_env, timeout)
    daemon_prompt(url, body, timeout)

    bare, daemon, ttfb, ttfm, stream_total, bare_first, outside = [], [], [], [], [], [], []
    for i in range(runs):
        # Alternate which goes first, so a slow drift affects both alike.
        if i % 2 == 0:
            bare.append(run_bare(argv, cwd, child_env, timeout))
            daemon.append(daemon_prompt(url, body, timeout, outside))
        else:
            daemon.append(daemon_prompt(url, body, timeout, outside))
            bare.append(run_bare(argv, cwd, child_env, timeout))
        fb, fm, total = daemon_stream(url, body, timeout)
        ttfb.append(fb)
        ttfm.append(fm if fm is not None else float("nan"))
        stream_total.append(total)
        bare_first.append(bare_first_line(stream_argv, cwd, child_env, timeout))
    return {
        "backend": backend,
        "argv": argv,
        "unknown_child_env": unknown,
        "runs": runs,
        "bare_ms": [ms(x) for x in bare],
        "daemon_ms": [ms(x) for x in daemon],
        "bare_median_ms": ms(median(bare)),
        "daemon_median_ms": ms(median(daemon)),
        "added_median_ms": ms(median(daemon) - median(bare)),
        "outside_cli_median_ms": ms(median(outside)),
        "stream_first_byte_median_ms": ms(median(ttfb)),
        "stream_first_message_median_ms": ms(median(ttfm)),
        "stream_total_median_ms": ms(median(stream_total)),
        "bare_first_stdout_line_median_ms": ms(median(bare_first)),
    }


def bench_throughput(url: str, concurrency: int, total: int, timeout: float) -> dict:
    body = {"backend": "claude", "prompt": PROMPT}
    latencies: list[float] = []
    errors: list[str] = []

    def one(_):
        start = time.perf_counter()
        try:
            status, r = http_post(url + "/api/v1/prompt", body, timeout)
            if status != 200 or r.get("exit_code") != 0:
                errors.append(f"{status} {str(r)[:200]}")
                return
        except Exception as e:  # noqa: BLE001 — counted, reported
            errors.append(repr(e))
            return
        latencies.append(time.perf_counter() - start)

    # Warm-up.
    for _ in range(3):
        one(None)
    latencies.clear()
    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, range(total)))
    wall = time.perf_counter() - start
    lat = sorted(latencies)
    return {
        "concurrency": concurrency,
        "requests": total,
        "ok": len(latencies),
        "errors": len(errors),
        "error_samples": errors[:3],
        "wall_s": round(wall, 2),
        "requests_per_s": round(len(latencies) / wall, 1) if wall else None,
        "latency_median_ms": ms(median(lat)) if lat else None,
        "latency_p95_ms": ms(lat[int(0.95 * (len(lat) - 1))]) if lat else None,
    }


def machine() -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpus": os.cpu_count(), "cpu": cpu, "kernel": platform.release(), "python": platform.python_version()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5, help="runs per backend and per way (default 5)")
    ap.add_argument("--backends", default=",".join(BACKENDS), help="comma-separated (default all)")
    ap.add_argument("--concurrency", type=int, default=8, help="concurrent clients for throughput (default 8)")
    ap.add_argument("--requests", type=int, default=200, help="prompts in the throughput run (default 200)")
    ap.add_argument("--timeout", type=float, default=120, help="seconds allowed for any one run")
    ap.add_argument("--json", dest="json_out", help="write the figures to this file")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder (logs)")
    args = ap.parse_args(argv)

    # The test world's pieces; harness.BIN_DIR comes from CLINVK_BIN_DIR (default target/debug).
    from conftest import FakeModel  # also puts tests/fakemodel on sys.path
    import cli_env
    from harness import BIN_DIR, FAKECLI_DIR, World, start_live

    backends = [b for b in args.backends.split(",") if b]
    missing = [b for b in backends if not (cli_env.npm_bin_dir() / b).exists()]
    if missing:
        print(f"missing CLIs in {cli_env.npm_bin_dir()}: {missing}; run tests/install-clis.sh "
              f"or set CLINVK_TEST_CACHE", file=sys.stderr)
        return 2

    tmp = Path(tempfile.mkdtemp(prefix="clinvk-bench-"))
    fake = FakeModel(tmp / "fakemodel")
    world = None
    try:
        home = tmp / "home"
        workdir = tmp / "work"
        workdir.mkdir()
        env = cli_env.setup(home, fake.port)
        world = World(tmp / "world", home=home, base_env=env)
        # One-shot mode: this measures what the daemon adds to a fresh CLI run (benches/warm.py
        # measures the warm workers).
        oneshot = "backends:\n" + "".join(f"  {b}:\n    mode: oneshot\n" for b in BACKENDS)
        url = start_live(world, oneshot)
        pid = world.status()["pid"]
        report = {
            "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "machine": machine(),
            "binaries": str(BIN_DIR),
            "cli_versions": {k: v for k, v in cli_env_versions().items()},
            "rss": {"start": rss(pid)},
            "backends": [],
        }
        for b in backends:
            print(f"… {b}: {args.runs} runs each way", file=sys.stderr, flush=True)
            report["backends"].append(bench_backend(url, b, workdir, world.env, args.runs, args.timeout))
        report["rss"]["after_latency"] = rss(pid)

        # Throughput: claude is the `ok` fault CLI now (live reload, same daemon).
        world.write_config(f"backends:\n  claude:\n    command: {FAKECLI_DIR / 'ok'}\n    mode: oneshot\n")
        r = world.ctl("reload")
        if r.returncode != 0:
            raise RuntimeError(f"reload failed: {r.stderr}")
        print(f"… throughput: {args.requests} prompts, {args.concurrency} at a time", file=sys.stderr, flush=True)
        report["throughput"] = bench_throughput(url, args.concurrency, args.requests, args.timeout)
        report["rss"]["after_throughput"] = rss(pid)
    finally:
        if world is not None:
            world.stop_all()
        fake.stop()
        if not args.keep:
            subprocess.run(["rm", "-rf", str(tmp)], check=False)
        else:
            print(f"kept {tmp}", file=sys.stderr)

    print_table(report)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(report, indent=2) + "\n")
    return 0


def cli_env_versions() -> dict:
    from conftest import CLI_VERSIONS
    return CLI_VERSIONS


def print_table(report: dict) -> None:
    m = report["machine"]
    print(f"clinvk bench {report['date']}  {m['cpus']} CPUs ({m['cpu']})  binaries: {report['binaries']}")
    print()
    head = ["backend", "bare ms", "via clinvk ms", "added ms", "outside CLI ms", "1st byte ms",
            "1st message ms", "bare 1st line ms"]
    rows = [[b["backend"], b["bare_median_ms"], b["daemon_median_ms"], b["added_median_ms"],
             b["outside_cli_median_ms"],
             b["stream_first_byte_median_ms"], b["stream_first_message_median_ms"],
             b["bare_first_stdout_line_median_ms"]] for b in report["backends"]]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    for row in [head] + rows:
        print("  ".join(str(x).rjust(w) for x, w in zip(row, widths)))
    print(f"(medians of {report['backends'][0]['runs'] if report['backends'] else 0} runs)")
    t = report.get("throughput")
    if t:
        print()
        print(f"throughput (fakecli ok as claude): {t['requests_per_s']} req/s, {t['ok']}/{t['requests']} ok, "
              f"{t['errors']} errors, concurrency {t['concurrency']}, median {t['latency_median_ms']} ms, "
              f"p95 {t['latency_p95_ms']} ms")
    print()
    for phase, v in report["rss"].items():
        print(f"RSS {phase}: {v['rss_kb'] / 1024:.1f} MiB (peak {v['peak_rss_kb'] / 1024:.1f} MiB)")


if __name__ == "__main__":
    sys.exit(main())
