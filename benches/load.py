#!/usr/bin/env python3
"""clinvk load figures: a real load generator (`wrk`, Debian package `wrk`) against a fresh
clinvkd whose claude backend is the `tests/fakecli/ok` fault CLI (so the daemon and process
spawning are measured, not a model):

* `GET /health`, `GET /api/v1/backends` and a trivial `POST /api/v1/prompt` at concurrency 1,
  16, 64 and 256 (`wrk --latency`, 2 threads): requests/s, p50/p99, errors, the daemon's RSS
  and CPU while it ran;
* 256 concurrent long runs (the `slow-ok` fault CLI, about 3 s each): all complete, every
  child reaped, the daemon's peak RSS;
* idle RSS, start-to-ready time (spawn → `/health` answers, median of 5) and binary sizes.

Targets (issue "proof under load"): /health ≥ 20,000 requests/s on 2 cores; 256 concurrent runs
with daemon RSS ≤ 64 MB; idle RSS ≤ 15 MB; ready ≤ 100 ms. Reported, never asserted.

    cargo build --release --bins
    CLINVK_BIN_DIR=target/release .test-cache/venv/bin/python benches/load.py --json load.json
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def parse_wrk(out: str) -> dict:
    def ms(v: str) -> float:
        n = float(re.match(r"[\d.]+", v).group())
        return round(n / 1000 if v.endswith("us") else n * 1000 if v.endswith("s") and not v.endswith("ms") else n, 2)

    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    lat = dict(re.findall(r"^\s+(50|99)%\s+(\S+)", out, re.M))
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    total = int(re.search(r"(\d+) requests in", out).group(1))
    return {"rps": round(rps), "p50_ms": ms(lat["50"]), "p99_ms": ms(lat["99"]), "requests": total,
            "non_2xx": int(non2xx.group(1)) if non2xx else 0,
            "socket_errors": sum(map(int, sock.groups())) if sock else 0}


def wrk(url: str, conns: int, secs: int, script: Path | None) -> str:
    argv = ["wrk", "-t", str(min(2, conns)), "-c", str(conns), "-d", f"{secs}s", "--latency", "--timeout", "30s"]
    if script:
        argv += ["-s", str(script)]
    return subprocess.run(argv + [url], capture_output=True, text=True, check=True, timeout=secs + 60).stdout


def ready_time(bin_dir: Path, tmp: Path) -> float:
    """Seconds from spawning clinvkd to its first `/health` answer (fresh HOME each time)."""
    home = tmp / f"ready-{time.monotonic_ns()}"
    (home / ".clinvk").mkdir(parents=True)
    port = 20000 + os.getpid() % 20000
    env = {"HOME": str(home), "PATH": os.environ["PATH"]}
    start = time.perf_counter()
    p = subprocess.Popen([str(bin_dir / "clinvkd"), "--port", str(port)], env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1).read()
                return time.perf_counter() - start
            except OSError:
                if p.poll() is not None:
                    raise RuntimeError("clinvkd exited before it was ready")
                time.sleep(0.001)
    finally:
        p.terminate()
        p.wait(10)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=int, default=8, help="seconds per wrk run (default 8)")
    ap.add_argument("--json", dest="json_out", help="write the figures to this file")
    args = ap.parse_args(argv)
    if not shutil.which("wrk"):
        print("wrk is not installed: apt-get install wrk", file=sys.stderr)
        return 2

    from harness import BIN_DIR, FAKECLI_DIR, World

    tmp = Path(tempfile.mkdtemp(prefix="clinvk-load-"))
    report: dict = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": bench.machine(),
        "binaries": str(BIN_DIR),
        "binary_bytes": {b: (Path(BIN_DIR) / b).stat().st_size for b in ("clinvkd", "clinvk", "clinvkctl")},
    }
    world = None
    try:
        readies = sorted(ready_time(Path(BIN_DIR), tmp) for _ in range(5))
        report["ready_ms_median"] = round(readies[2] * 1000, 1)
        world = World(tmp / "world")
        world.write_config(
            f"backends:\n  claude:\n    command: {FAKECLI_DIR / 'ok'}\n    mode: oneshot\n"
            "server:\n  max_connections: 2048\n"
            "limits:\n  max_concurrent: 256\n  queue_size: 1024\n  queue_timeout_secs: 300\n")
        proc = world.start_daemon()
        pid, url = proc.pid, world.url
        time.sleep(0.5)  # settle after start (the figure is the idle state)
        report["idle_rss"] = bench.rss(pid)
        script = tmp / "prompt.lua"
        script.write_text('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
                          'wrk.body = \'{"backend":"claude","prompt":"load","ephemeral":true}\'\n')
        runs = []
        for name, path, lua, levels in [("health", "/health", None, (1, 16, 64, 256)),
                                        ("backends", "/api/v1/backends", None, (1, 16, 64, 256)),
                                        ("prompt", "/api/v1/prompt", script, (1, 16, 64, 256))]:
            for c in levels:
                print(f"… {name} at {c}", file=sys.stderr, flush=True)
                cpu0, t0 = cpu_seconds(pid), time.perf_counter()
                out = wrk(url + path, c, args.seconds, lua)
                cpu = (cpu_seconds(pid) - cpu0) / (time.perf_counter() - t0)
                runs.append({"endpoint": name, "concurrency": c, **parse_wrk(out),
                             "daemon_cpu_percent": round(cpu * 100), **bench.rss(pid)})
        report["wrk"] = runs

        # 256 concurrent long runs.
        world.write_config(
            f"backends:\n  claude:\n    command: {FAKECLI_DIR / 'slow-ok'}\n    mode: oneshot\n"
            "    env:\n      FAKECLI_DELAY_MS: '400'\n"
            "server:\n  max_connections: 2048\n"
            "limits:\n  max_concurrent: 256\n  queue_size: 1024\n  queue_timeout_secs: 300\n")
        world.ctl("reload")
        print("… 256 concurrent long runs", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(256) as ex:
            results = list(ex.map(lambda i: bench.http_post(url + "/api/v1/prompt", {
                "backend": "claude", "prompt": f"long run {i} a b c d e", "ephemeral": True}, 300), range(256)))
        ok = sum(1 for s, r in results if s == 200 and r and r.get("exit_code") == 0)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (world.status() or {}).get("runs"):
            time.sleep(0.1)
        left = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
        report["long_runs"] = {"runs": 256, "ok": ok, "seconds": round(time.perf_counter() - t0, 1),
                               "children_left": len(left), **bench.rss(pid)}
    finally:
        if world is not None:
            world.stop_all()
        subprocess.run(["rm", "-rf", str(tmp)], check=False)

    print(f"machine: {report['machine']['cpus']} CPUs, {report['machine']['cpu']}; binaries {report['binaries']}")
    print(f"binary sizes: " + ", ".join(f"{k} {v / 2**20:.1f} MiB" for k, v in report["binary_bytes"].items()))
    print(f"start to ready: {report['ready_ms_median']} ms (median of 5); idle RSS {report['idle_rss']['rss_kb'] / 1024:.1f} MiB")
    print(f"{'endpoint':<10}{'conc':>6}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}{'cpu %':>7}{'RSS MiB':>9}")
    for r in report["wrk"]:
        print(f"{r['endpoint']:<10}{r['concurrency']:>6}{r['rps']:>9}{r['p50_ms']:>9}{r['p99_ms']:>9}"
              f"{r['non_2xx'] + r['socket_errors']:>8}{r['daemon_cpu_percent']:>7}{r['rss_kb'] / 1024:>9.1f}")
    lr = report["long_runs"]
    print(f"256 concurrent long runs: {lr['ok']}/256 ok in {lr['seconds']} s, {lr['children_left']} children left, "
          f"daemon RSS {lr['rss_kb'] / 1024:.1f} MiB (peak {lr['peak_rss_kb'] / 1024:.1f} MiB)")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
