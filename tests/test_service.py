"""clinvkd as a system service, driven from outside: systemd socket activation (through
systemd-socket-activate), sd_notify readiness as a service manager sees it (a NOTIFY_SOCKET
datagram socket of the test's own), the unit files and the launchd plist, `clinvk serve` next to
a socket-activated daemon, and the graceful drain on SIGTERM."""

from __future__ import annotations

import json
import os
import plistlib
import random
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from conftest import http_json

from harness import REPO_ROOT, TESTS_DIR, VERSION, World, binary, pid_alive, poll, world  # noqa: F401

SOCKET_ACTIVATE = shutil.which("systemd-socket-activate")
FAKECLI = TESTS_DIR / "fakecli"

needs_socket_activate = pytest.mark.skipif(
    SOCKET_ACTIVATE is None,
    reason="systemd-socket-activate is missing (Debian package `systemd`): cannot test socket activation",
)


# --- helpers ----------------------------------------------------------------------------------


# The socket-activation tests take a free port and let systemd-socket-activate bind it a moment
# later: they run one after another, so that two of them never pick the same one.
socket_activation = pytest.mark.xdist_group("socket-activation")


def free_port() -> int:
    """A port free now, for systemd-socket-activate to bind a moment later. Taken below the
    kernel's ephemeral range (when that leaves room), so that in between no port-0 listener or
    outgoing connection of the tests running alongside (their daemons, fake model servers, HTTP
    clients) can be given it."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 0
    below = range(10000, low) if low - 10000 >= 1000 else None
    rng = random.Random()
    for _ in range(200):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", rng.choice(below) if below else 0))
            except OSError:  # taken: try another
                continue
            return s.getsockname()[1]
    raise AssertionError("no free port found")


def http(method: str, url: str, body=None, timeout: float = 30):
    return http_json(method, url, body, timeout)


def socket_activate(world: World, *listen: str, fdnames: str | None = None, port: int | None = None):
    """Starts systemd-socket-activate listening on `listen` addresses, which execs clinvkd on the
    first connection (same pid). Waits until its sockets are bound."""
    argv = [SOCKET_ACTIVATE]
    for addr in listen:
        argv += ["-l", addr]
    if fdnames:
        argv.append(f"--fdname={fdnames}")
    for var in ("HOME", "PATH", "NO_COLOR"):
        argv += ["-E", var]
    argv.append(binary("clinvkd"))
    log = open(world.root / "socket-activate.stderr", "w+")
    p = world.popen(*argv, stdout=subprocess.DEVNULL, stderr=log)
    p.log_path = Path(log.name)  # type: ignore[attr-defined]

    def bound():
        if p.poll() is not None:
            raise AssertionError(f"systemd-socket-activate exited {p.returncode}: {p.log_path.read_text()}")
        return p.log_path.read_text().count("Listening on") >= len(listen)

    poll(bound, 15, "systemd-socket-activate to bind its sockets")
    return p


def wait_exit(p: subprocess.Popen, timeout: float) -> int:
    try:
        return p.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"pid {p.pid} did not exit within {timeout}s")


def assert_clean_exit(world: World, p: subprocess.Popen, timeout: float = 20, socket_kept: bool = False):
    rc = wait_exit(p, timeout)
    log = getattr(p, "log_path", None)
    assert rc == 0, f"clinvkd exited {rc}: {log.read_text() if log else ''}"
    assert not world.pid_file.exists(), "the pid file is removed at stop"
    assert world.socket.exists() == socket_kept, "the control socket is removed unless systemd owns it"


# --- socket activation ------------------------------------------------------------------------


@needs_socket_activate
@socket_activation
def test_first_http_request_starts_the_daemon(world):
    port = free_port()
    sa = socket_activate(world, f"127.0.0.1:{port}")
    assert not world.pid_file.exists(), "nothing runs before the first connection"
    status, body = http("GET", f"http://127.0.0.1:{port}/health")
    assert status in (200, 503) and body["version"] == VERSION, body
    st = poll(world.status, 20, "the activated daemon to answer on its control socket")
    assert st["pid"] == sa.pid, "systemd-socket-activate execs clinvkd in place"
    assert st["socket_activated"] is True
    assert st["http_addr"] == f"127.0.0.1:{port}"
    # Serves more than the first request, on the passed socket.
    for _ in range(3):
        assert http("GET", f"http://127.0.0.1:{port}/health")[0] in (200, 503)
    sa.send_signal(signal.SIGTERM)
    assert_clean_exit(world, sa)


@needs_socket_activate
@socket_activation
def test_fdnames_route_the_control_socket(world):
    port = free_port()
    world.socket.parent.mkdir(parents=True, mode=0o700)
    sa = socket_activate(world, f"127.0.0.1:{port}", str(world.socket), fdnames="http:control")
    assert world.socket.exists() and not world.pid_file.exists()
    # The first connection is clinvkctl's on the control socket: it starts the daemon and is answered.
    r = world.ctl("status", "--json", timeout=30)
    assert r.returncode == 0, r.stderr
    st = json.loads(r.stdout)
    assert st["pid"] == sa.pid and st["socket_activated"] is True
    assert st["socket_path"] == str(world.socket)
    assert st["http_url"] == f"http://127.0.0.1:{port}"
    assert http("GET", f"http://127.0.0.1:{port}/health")[0] in (200, 503)
    r = world.ctl("stop", "--timeout", "20", timeout=30)
    assert r.returncode == 0, r.stderr
    # The socket file is systemd's (here: systemd-socket-activate's): left in place.
    assert_clean_exit(world, sa, socket_kept=True)


@needs_socket_activate
@socket_activation
def test_clinvk_serve_attaches_to_a_socket_activated_daemon(world, tmp_path):
    port = free_port()
    sa = socket_activate(world, f"127.0.0.1:{port}")
    # Another state folder: it must not start a second daemon that dies on "address in use".
    other = World(tmp_path / "other")
    r = other.clinvk("serve", "--port", str(port), "--detach", timeout=60)
    assert r.returncode == 1
    assert f"port {port}" in r.stderr and "socket-activated" in r.stderr, r.stderr
    assert "clinvkctl" not in r.stderr or "another clinvkd" in r.stderr
    # Our own state folder: the probe starts the daemon and `clinvk serve` attaches to it.
    r = world.clinvk("serve", "--port", str(port), "--detach", timeout=60)
    assert r.returncode == 0, r.stderr
    assert "already running" in r.stdout and "socket-activated" in r.stdout, r.stdout
    assert f"http://127.0.0.1:{port}" in r.stdout
    st = world.status()
    assert st and st["pid"] == sa.pid
    assert not other.pid_file.exists()
    sa.send_signal(signal.SIGTERM)
    assert_clean_exit(world, sa)


# --- sd_notify --------------------------------------------------------------------------------


class NotifySocket:
    """The service manager's end of NOTIFY_SOCKET: an AF_UNIX datagram socket."""

    def __init__(self, path: Path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.messages: list[dict[str, str]] = []

    def next(self, timeout: float = 20) -> dict[str, str]:
        self.sock.settimeout(timeout)
        data = self.sock.recv(4096).decode()
        msg = dict(line.split("=", 1) for line in data.splitlines() if "=" in line)
        self.messages.append(msg)
        return msg

    def wait_for(self, key: str, timeout: float = 20) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{key}=1 not received; got {self.messages}")
            msg = self.next(left)
            if msg.get(key) == "1":
                return msg

    def close(self):
        self.sock.close()


def test_notify_ready_reloading_stopping(tmp_path):
    short = Path(f"/tmp/clinvk-notify-{os.getpid()}-{time.monotonic_ns()}.sock")
    ns = NotifySocket(short)
    w = World(tmp_path, extra_env={"NOTIFY_SOCKET": str(short)})
    try:
        p = w.start_daemon(wait=False)
        ready = ns.wait_for("READY")
        assert ready.get("STATUS", "").startswith("serving http://127.0.0.1:"), ready
        # READY=1 is sent once the daemon serves: the control socket answers at once.
        st = w.status()
        assert st and st["pid"] == p.pid and st["socket_activated"] is False
        before = time.clock_gettime(time.CLOCK_MONOTONIC) * 1e6
        p.send_signal(signal.SIGHUP)
        reloading = ns.wait_for("RELOADING")
        usec = int(reloading["MONOTONIC_USEC"])
        assert before - 1e6 <= usec <= time.clock_gettime(time.CLOCK_MONOTONIC) * 1e6 + 1e6
        ns.wait_for("READY")
        assert poll(lambda: (w.status() or {}).get("reloads") == 1, 10, "the reload to count")
        p.send_signal(signal.SIGTERM)
        stopping = ns.wait_for("STOPPING")
        assert "draining" in stopping.get("STATUS", "")
        rc = wait_exit(p, 20)
        assert rc == 0, p.log_path.read_text()
    finally:
        ns.close()
        short.unlink(missing_ok=True)
        w.stop_all()


# --- unit files and plist ---------------------------------------------------------------------


def _verify(units: list[Path], user: bool, runtime_dir: Path):
    argv = ["systemd-analyze", "verify"] + (["--user"] if user else []) + [str(u) for u in units]
    env = dict(os.environ, XDG_RUNTIME_DIR=str(runtime_dir))
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60)


@pytest.mark.parametrize("flavour", ["user", "system"])
def test_systemd_units_verify(flavour, tmp_path):
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is missing (Debian package `systemd`): cannot verify the units")
    src = REPO_ROOT / "systemd" / flavour
    units = sorted(src.glob("*.service")) + sorted(src.glob("*.socket"))
    assert {u.name for u in units} >= {"clinvkd.service", "clinvkd.socket"}
    # Verified as shipped, except ExecStart pointing at the binary built here (verify checks
    # that the program exists).
    dest = tmp_path / flavour
    dest.mkdir()
    copies = []
    for u in units:
        text = u.read_text()
        if u.suffix == ".service":
            assert "Type=notify" in text and "ExecReload=/bin/kill -HUP $MAINPID" in text
            text = text.replace("%h/.cargo/bin/clinvkd", binary("clinvkd"))
            text = text.replace("/usr/local/bin/clinvkd", binary("clinvkd"))
        (dest / u.name).write_text(text)
        copies.append(dest / u.name)
    runtime = tmp_path / "xdg-runtime"
    runtime.mkdir(mode=0o700)
    r = _verify(copies, flavour == "user", runtime)
    if r.returncode != 0 and "Failed to initialize manager" in r.stderr:
        print(f"systemd-analyze verify cannot run in this container: {r.stderr.strip()}")
        pytest.skip(f"systemd-analyze verify cannot run here: {r.stderr.strip()}")
    # verify exits 0 on mere warnings (unknown keys, bad values): any output fails the test.
    assert r.returncode == 0 and r.stderr.strip() == "", r.stderr
    if flavour == "system":
        svc = (src / "clinvkd.service").read_text()
        for opt in ("User=clinvk", "NoNewPrivileges=yes", "ProtectSystem=strict", "PrivateTmp=yes",
                    "Environment=HOME=/var/lib/clinvk", "StateDirectory=clinvk"):
            assert opt in svc
        assert "MemoryDenyWriteExecute=" not in svc, "node's JIT needs writable+executable memory"
    else:
        assert "FileDescriptorName=control" in (src / "clinvkd-control.socket").read_text()
        assert "ListenStream=%t/clinvk/clinvkd.sock" in (src / "clinvkd-control.socket").read_text()


def test_systemd_verify_catches_mistakes(tmp_path):
    """Guards the check above: a broken unit does produce output."""
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is missing")
    bad = tmp_path / "clinvkd.service"
    bad.write_text(f"[Service]\nType=notifyy\nExecStart={binary('clinvkd')}\nBogus=1\n")
    r = _verify([bad], False, tmp_path)
    if r.returncode != 0 and "Failed to initialize manager" in r.stderr:
        pytest.skip(f"systemd-analyze verify cannot run here: {r.stderr.strip()}")
    assert "notifyy" in r.stderr and "Bogus" in r.stderr


def test_launchd_plist_parses():
    path = REPO_ROOT / "launchd" / "dev.clinvk.clinvkd.plist"
    if shutil.which("plutil"):
        r = subprocess.run(["plutil", "-lint", str(path)], capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr
    raw = path.read_bytes()
    plist = plistlib.loads(raw)
    assert plist["Label"] == "dev.clinvk.clinvkd"
    assert plist["ProgramArguments"][0].endswith("/clinvkd")
    assert plist["KeepAlive"] in (True, {"SuccessfulExit": False})
    assert plist["RunAtLoad"] is True
    assert plist["StandardOutPath"] and plist["StandardErrorPath"]
    env = plist["EnvironmentVariables"]
    assert "/usr/local/bin" in env["PATH"] and ".npm-global/bin" in env["PATH"]
    assert plist["ExitTimeOut"] >= 30, "longer than the default drain grace"
    # As installed (docs/service.md): __HOME__ replaced; still a valid plist with absolute paths.
    installed = plistlib.loads(raw.replace(b"__HOME__", b"/Users/someone"))
    assert installed["ProgramArguments"][0] == "/Users/someone/.cargo/bin/clinvkd"
    assert all(p.startswith("/") for p in installed["EnvironmentVariables"]["PATH"].split(":"))


# --- graceful drain ---------------------------------------------------------------------------


def drain_world(tmp_path: Path, cli: str, grace: int, extra_env: dict | None = None) -> World:
    w = World(tmp_path, extra_env=extra_env)
    w.write_config(
        "server:\n"
        f"  shutdown_grace_secs: {grace}\n"
        "backends:\n"
        "  claude:\n"
        f"    command: {FAKECLI / cli}\n    mode: oneshot\n"
    )
    return w


def post_prompt_in_thread(url: str, out: dict) -> threading.Thread:
    def go():
        try:
            out["status"], out["body"] = http("POST", url + "/api/v1/prompt",
                                              {"backend": "claude", "prompt": "drain me"}, timeout=60)
        except Exception as e:  # connection closed by the daemon, etc.
            out["error"] = repr(e)

    t = threading.Thread(target=go, daemon=True)
    t.start()
    return t


def running_run(w: World) -> dict:
    def find():
        st = w.status()
        runs = (st or {}).get("runs") or []
        return next((r for r in runs if r.get("pid") and r["state"] == "running"), None)

    return poll(find, 20, "a run to be in flight")


def test_drain_lets_a_slow_run_finish_and_refuses_new_requests(tmp_path):
    w = drain_world(tmp_path, "slow-ok", grace=30, extra_env={"FAKECLI_DELAY_MS": "400"})
    try:
        p = w.start_daemon()
        url = p.status["http_url"]
        out: dict = {}
        t = post_prompt_in_thread(url, out)
        run = running_run(w)
        p.send_signal(signal.SIGTERM)
        poll(lambda: (w.status() or {}).get("draining"), 10, "the drain to start")
        status, body = http("GET", url + "/api/v1/sessions")
        assert status == 503 and body["code"] == "shutting_down", body
        assert http("GET", url + "/health")[0] in (200, 503), "health still answers while draining"
        status, body = http("POST", url + "/api/v1/prompt", {"backend": "claude", "prompt": "late"})
        assert status == 503, body
        t.join(60)
        assert out.get("status") == 200, out
        assert "fakecli reply to: drain me" in json.dumps(out["body"]), out
        assert_clean_exit(w, p, timeout=30)
        assert not pid_alive(run["pid"])
    finally:
        w.stop_all()


def test_drain_kills_a_run_longer_than_the_grace_with_its_group(tmp_path):
    w = drain_world(tmp_path, "hang", grace=1)
    try:
        p = w.start_daemon()
        url = p.status["http_url"]
        out: dict = {}
        t = post_prompt_in_thread(url, out)
        run = running_run(w)
        pgid = os.getpgid(run["pid"])
        started = time.monotonic()
        p.send_signal(signal.SIGTERM)
        assert_clean_exit(w, p, timeout=20)
        took = time.monotonic() - started
        assert took >= 1.0, "the run had its grace period"
        assert not pid_alive(run["pid"])
        with pytest.raises(ProcessLookupError):
            os.killpg(pgid, 0)
        t.join(20)
        # The client got an answer (an error) or the connection was closed: never a hang.
        assert not t.is_alive()
        # On restart, the session of the cut-short run says so.
        p2 = w.start_daemon()
        status, body = http("GET", p2.status["http_url"] + "/api/v1/sessions")
        assert status == 200, body
        sessions = body.get("sessions", body) if isinstance(body, dict) else body
        assert any(s.get("status") == "interrupted" for s in sessions), body
    finally:
        w.stop_all()


def stream_lines(url: str, path: str, body: dict, out: list) -> threading.Thread:
    """POSTs `body` and appends every line of the streamed answer to `out` (in a thread)."""
    def go():
        req = urllib.request.Request(url + path, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                for line in r:
                    out.append(line.decode().strip())
        except Exception as e:  # a stream cut short shows up as a missing last line
            out.append(f"error: {e!r}")

    t = threading.Thread(target=go, daemon=True)
    t.start()
    return t


def test_drain_lets_streams_and_clinvk_runs_finish(tmp_path):
    """A stop while a native NDJSON stream, an OpenAI SSE stream and a `clinvk "prompt"` run are
    in flight lets all three end normally within the grace period."""
    w = drain_world(tmp_path, "slow-ok", grace=30, extra_env={"FAKECLI_DELAY_MS": "300"})
    try:
        p = w.start_daemon()
        url = p.status["http_url"]
        native: list = []
        openai: list = []
        cli: dict = {}
        threads = [
            stream_lines(url, "/api/v1/prompt",
                         {"backend": "claude", "prompt": "drain me", "output_format": "stream-json"}, native),
            stream_lines(url, "/openai/v1/chat/completions",
                         {"model": "claude", "stream": True,
                          "messages": [{"role": "user", "content": "drain me"}]}, openai),
        ]

        def run_cli():
            cli["result"] = w.clinvk("-b", "claude", "drain me", timeout=60)

        threads.append(threading.Thread(target=run_cli, daemon=True))
        threads[-1].start()
        poll(lambda: len((w.status() or {}).get("runs") or []) == 3, 30, "three runs in flight")
        p.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(60)
        done = [json.loads(l) for l in native if l.startswith("{")]
        assert done and done[-1]["type"] == "done" and done[-1]["content"]["exit_code"] == 0, native
        assert "data: [DONE]" in openai, openai
        chunks = [json.loads(l[6:]) for l in openai if l.startswith("data: {")]
        assert any(c["choices"] and c["choices"][0].get("finish_reason") == "stop" for c in chunks), openai
        r = cli["result"]
        assert r.returncode == 0 and "fakecli reply to: drain me" in r.stdout, (r.returncode, r.stdout, r.stderr)
        assert_clean_exit(w, p, timeout=30)
    finally:
        w.stop_all()


# --- clinvkctl service install / uninstall ----------------------------------------------------


def _installed(root: Path, home: Path, rel: str) -> Path:
    return root / str(home).lstrip("/") / rel


@pytest.mark.parametrize("flavour", ["user", "system"])
def test_service_install_writes_verified_units_and_uninstall_removes_them(flavour, world, tmp_path):
    world.write_config("server:\n  port: 9123\n")
    root = tmp_path / "root"
    flag = f"--{flavour}"
    daemon = os.path.realpath(binary("clinvkd"))
    # A dry run shows everything and writes nothing.
    r = world.ctl("service", "install", flag, "--root", root, "--dry-run")
    assert r.returncode == 0, r.stderr
    assert "would write" in r.stdout and f"ExecStart={daemon}" in r.stdout
    assert not root.exists()

    r = world.ctl("service", "install", flag, "--root", root)
    assert r.returncode == 0, r.stderr
    if flavour == "user":
        unit_dir = _installed(root, world.home, ".config/systemd/user")
        names = {"clinvkd.service", "clinvkd.socket", "clinvkd-control.socket"}
    else:
        unit_dir = root / "etc/systemd/system"
        names = {"clinvkd.service", "clinvkd.socket"}
        sysusers = root / "etc/sysusers.d/clinvk.conf"
        assert "u clinvk" in sysusers.read_text()
    assert {p.name for p in unit_dir.iterdir()} == names
    service = (unit_dir / "clinvkd.service").read_text()
    assert f"\nExecStart={daemon}\n" in service, service
    assert "ListenStream=127.0.0.1:9123" in (unit_dir / "clinvkd.socket").read_text()
    if flavour == "user":
        # The folders holding the CLIs the user has now are on the service's PATH.
        path_line = next(l for l in service.splitlines() if l.startswith("Environment=PATH="))
        assert "/usr/bin" in path_line
    assert world.ctl("service", "status", flag, "--root", root).returncode == 0

    if shutil.which("systemd-analyze"):
        runtime = tmp_path / "xdg-runtime"
        runtime.mkdir(mode=0o700)
        units = sorted(unit_dir.iterdir())
        v = _verify(units, flavour == "user", runtime)
        if v.returncode != 0 and "Failed to initialize manager" in v.stderr:
            print(f"systemd-analyze verify cannot run in this container: {v.stderr.strip()}")
        else:
            assert v.returncode == 0 and v.stderr.strip() == "", v.stderr

    r = world.ctl("service", "uninstall", flag, "--root", root)
    assert r.returncode == 0, r.stderr
    assert not any(unit_dir.iterdir()), list(unit_dir.iterdir())
    if flavour == "system":
        assert not sysusers.exists()
    assert world.ctl("service", "status", flag, "--root", root).returncode == 1
    # Uninstalling again is no error.
    r = world.ctl("service", "uninstall", flag, "--root", root)
    assert r.returncode == 0 and "nothing to remove" in r.stdout


def test_service_install_launchd_agent_is_a_valid_plist(world, tmp_path):
    root = tmp_path / "root"
    r = world.ctl("service", "install", "--launchd", "--root", root)
    assert r.returncode == 0, r.stderr
    path = _installed(root, world.home, "Library/LaunchAgents/dev.clinvk.clinvkd.plist")
    plist = plistlib.loads(path.read_bytes())
    assert plist["Label"] == "dev.clinvk.clinvkd"
    assert plist["ProgramArguments"] == [os.path.realpath(binary("clinvkd"))]
    assert plist["EnvironmentVariables"]["HOME"] == str(world.home)
    assert "__HOME__" not in path.read_text()
    assert world.ctl("service", "uninstall", "--launchd", "--root", root).returncode == 0
    assert not path.exists()

