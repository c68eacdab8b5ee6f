"""The foundation, driven from outside: clinvkd as a service, its control socket, and the
clinvk/clinvkctl clients, each test in its own temporary HOME."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import stat
import struct
import subprocess
import urllib.request
from pathlib import Path

import pytest

from conftest import TESTED_VERSIONS
from harness import CONTROL_PROTOCOL, VERSION, World, binary, daemon, line_reader, pid_alive, poll, world  # noqa: F401  (fixtures)


def get(url: str, headers: dict | None = None):
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def test_versions_and_help():
    for name in ("clinvkd", "clinvk", "clinvkctl"):
        r = subprocess.run([binary(name), "--version"], capture_output=True, text=True)
        assert r.returncode == 0 and r.stdout.strip().endswith(VERSION), r
        h = subprocess.run([binary(name), "--help"], capture_output=True, text=True)
        assert h.returncode == 0 and "Usage" in h.stdout, h
    for sub in ("status", "reload", "stop"):
        h = subprocess.run([binary("clinvkctl"), sub, "--help"], capture_output=True, text=True)
        assert h.returncode == 0 and "Usage" in h.stdout
    h = subprocess.run([binary("clinvk"), "serve", "--help"], capture_output=True, text=True)
    assert "--detach" in h.stdout and "--port" in h.stdout


def test_start_health_and_request_id(world, daemon):
    st = daemon.status
    assert st["pid"] == daemon.pid
    assert st["http_url"].startswith("http://127.0.0.1:")
    status, headers, body = get(st["http_url"] + "/health", {"X-Request-Id": "abc-123"})
    assert status == 200
    health = json.loads(body)
    # No CLI is installed in this bare world: nothing can run.
    assert health["status"] == "unhealthy"
    assert {b["name"]: b["available"] for b in health["backends"]} == dict.fromkeys(TESTED_VERSIONS, False)
    assert health["version"] == VERSION
    assert health["uptime_ms"] >= 0 and "uptime" in health
    assert headers["x-request-id"] == "abc-123"
    status, headers, _ = get(st["http_url"] + "/health")
    assert len(headers["x-request-id"]) >= 16, "a request id is generated when none is sent"
    status, _, body = get(st["http_url"] + "/no/such/path")
    assert status == 404 and json.loads(body)["success"] is False


def test_second_daemon_is_refused_with_pid(world, daemon):
    r = world.run(binary("clinvkd"), "--port", "0", timeout=30)
    assert r.returncode != 0
    assert "already running" in r.stderr and str(daemon.pid) in r.stderr, r.stderr
    assert world.status()["pid"] == daemon.pid, "the first daemon keeps serving"


def test_port_in_use_is_a_clear_error(world):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    port = s.getsockname()[1]
    r = world.run(binary("clinvkd"), "--port", str(port), timeout=30)
    s.close()
    assert r.returncode == 98, "its own exit code, so clinvk serve need not read the text"
    assert f"port {port} is already in use" in r.stderr, r.stderr
    assert "panicked" not in r.stderr
    assert r.stderr.count("\n") <= 2, "one clear line, not a trace"


def test_stale_socket_after_kill9_is_recovered(world, daemon):
    os.kill(daemon.pid, signal.SIGKILL)
    daemon.wait(timeout=10)
    assert world.socket.exists(), "kill -9 leaves the socket file behind"
    r = world.ctl("status")
    assert r.returncode == 3 and "no clinvkd is running" in r.stderr
    p2 = world.start_daemon()
    assert p2.status["pid"] == p2.pid != daemon.pid


def test_temp_files_left_by_kill9_are_removed_at_start(world, daemon):
    """A daemon killed mid-write leaves `.<file>.tmp.<pid>.<n>` files; the next start removes
    them (its predecessor's pid is gone) and keeps every real file."""
    state = world.state_dir
    sid = "0badc0de-0000-4000-8000-000000000001"
    (state / "sessions" / f"{sid}.json").write_text(json.dumps({"id": sid, "backend": "claude"}))
    os.kill(daemon.pid, signal.SIGKILL)
    daemon.wait(timeout=10)
    dead = daemon.pid
    left = [state / "sessions" / f".{sid}.json.tmp.{dead}.3",
            state / "responses" / f".resp_1.json.tmp.{dead}.4",
            state / f".keys.json.tmp.{dead}.5"]
    for f in left:
        f.write_text('{"half": ')
    p2 = world.start_daemon()
    assert [f for f in left if f.exists()] == []
    status, _, raw = get(f"{p2.status['http_url']}/api/v1/sessions")
    body = json.loads(raw)
    assert status == 200 and [s["id"] for s in body["sessions"]] == [sid], body
    assert not (state / "keys.json").exists(), "no key store appears"


def test_no_daemon_answers_of_clinvkctl(world):
    for args in (["status"], ["reload"], ["stop"]):
        r = world.ctl(*args)
        assert r.returncode == 3, (args, r)
        assert "no clinvkd is running" in r.stderr
    assert not world.socket.exists(), "clinvkctl never starts a daemon"


def test_status_json_and_human(world, daemon):
    st = world.status()
    for key in ("pid", "version", "uptime_ms", "http_url", "config_path", "state_dir", "requests_total", "runs"):
        assert key in st
    assert st["state_dir"] == str(world.state_dir)
    human = world.ctl("status")
    assert human.returncode == 0
    assert f"pid {daemon.pid}" in human.stdout and st["http_url"] in human.stdout


def test_serve_starts_then_attaches(world):
    r1 = world.clinvk("serve", "--port", "0", "--detach")
    assert r1.returncode == 0, r1.stderr
    assert "clinvkd started" in r1.stdout
    url = world.status()["http_url"]
    assert f"Dashboard: {url}/ui" in r1.stdout, r1.stdout
    pid = world.status()["pid"]
    r2 = world.clinvk("serve", "--port", "0", "--detach")
    assert r2.returncode == 0
    assert "already running" in r2.stdout and str(pid) in r2.stdout
    assert world.status()["pid"] == pid, "no second daemon"
    # Asking for another port than the one served is said, not silently ignored.
    r3 = world.clinvk("serve", "--port", "1", "--detach")
    assert "--port 1 ignored" in r3.stderr


def read_until(proc, needle: str, timeout: float = 30) -> str:
    """Reads proc's stdout (through a reader thread) until a line contains needle."""
    return line_reader(proc).wait_for(needle, timeout)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_ctrl_c_stops_a_daemon_that_serve_started(world, sig):
    """Ctrl-C, a service manager's SIGTERM and a closed terminal's SIGHUP all stop the daemon
    that `clinvk serve` started: no orphan is left."""
    p = world.popen(binary("clinvk"), "serve", "--port", "0")
    read_until(p, "press Ctrl-C")
    pid = world.status()["pid"]
    # The attached view shows requests as they happen. (`clinvk serve` prints its banner just
    # before it attaches: a request sent at once can come before the view listens, so requests
    # are sent until one is shown.)
    url, view = world.url, line_reader(p)

    def shown():
        get(url + "/health")
        with view.cond:
            return "GET /health 200" in "".join(view.lines)

    poll(shown, 30, "the attached view to show a request", interval=0.5)
    p.send_signal(sig)
    assert p.wait(timeout=30) == 0, p.stderr.read()
    poll(lambda: not pid_alive(pid), 10, "the daemon to exit")
    assert world.status() is None
    assert not world.socket.exists() and not world.pid_file.exists()


def test_ctrl_c_only_detaches_from_an_existing_daemon(world, daemon):
    p = world.popen(binary("clinvk"), "serve")
    out = read_until(p, "press Ctrl-C")
    assert "already running" in out
    p.send_signal(signal.SIGINT)
    assert p.wait(timeout=30) == 0
    assert "detached" in p.stderr.read()
    assert world.status()["pid"] == daemon.pid, "the daemon keeps running"


def test_detach_returns_at_once_and_daemon_runs(world):
    r = world.clinvk("serve", "--port", "0", "--detach", timeout=30)
    assert r.returncode == 0
    st = world.status()
    assert st and pid_alive(st["pid"])
    status, _, _ = get(st["http_url"] + "/health")
    assert status == 200
    assert (world.state_dir / "logs").is_dir(), "a detached daemon logs to its log folder"


def test_stop_stops(world, daemon):
    r = world.ctl("stop")
    assert r.returncode == 0 and "stopped" in r.stdout
    assert daemon.wait(timeout=10) == 0
    assert not world.socket.exists() and not world.pid_file.exists()


def test_sighup_reload_picks_up_a_changed_value(world):
    world.write_config("server:\n  request_timeout_secs: 100\n")
    p = world.start_daemon()
    assert p.status["config_summary"]["request_timeout_secs"] == 100
    world.write_config("server:\n  request_timeout_secs: 123\n")
    os.kill(p.pid, signal.SIGHUP)
    st = poll(lambda: (s := world.status()) and s["reloads"] == 1 and s, 10, "the reload")
    assert st["config_summary"]["request_timeout_secs"] == 123
    assert st["pid"] == p.pid


def test_reload_command_and_invalid_config_refused(world):
    world.write_config("server:\n  request_timeout_secs: 100\n")
    p = world.start_daemon()
    world.write_config("server:\n  request_timeout_secs: 200\n")
    r = world.ctl("reload")
    assert r.returncode == 0 and "server.request_timeout_secs" in r.stdout
    path = world.write_config("server:\n  request_timeout_secs: 300\n  port: [1,\n")
    bad = world.ctl("reload")
    assert bad.returncode == 1
    assert "refused" in bad.stderr and str(path) in bad.stderr and "line" in bad.stderr, bad.stderr
    path = world.write_config("# ok\nserver:\n  request_timeout_secs: lots\n")
    bad = world.ctl("reload")
    assert bad.returncode == 1 and "server.request_timeout_secs" in bad.stderr and "line 3" in bad.stderr, bad.stderr
    st = world.status()
    assert st["config_summary"]["request_timeout_secs"] == 200, "the running config stays"
    status, _, _ = get(st["http_url"] + "/health")
    assert status == 200 and st["pid"] == p.pid


def test_invalid_config_at_start_names_file_key_line(world):
    path = world.write_config("server:\n  port: nope\n")
    r = world.run(binary("clinvkd"), timeout=30)
    assert r.returncode == 1
    assert str(path) in r.stderr and "server.port" in r.stderr and "line 2" in r.stderr, r.stderr


def test_unknown_key_is_a_warning_and_env_overrides_apply(world):
    world.write_config("bogus_key: 1\nserver:\n  request_timeout_secs: 100\n")
    world.env["CLINVK_SERVER_REQUEST_TIMEOUT_SECS"] = "77"
    p = world.start_daemon()
    assert p.status["config_summary"]["request_timeout_secs"] == 77, "env wins over the file"
    assert "bogus_key" in p.log_path.read_text()


def test_toml_config_and_clinvk_home(world, tmp_path):
    home = tmp_path / "elsewhere"
    world.env["CLINVK_HOME"] = str(home)
    home.mkdir()
    (home / "config.toml").write_text("[server]\nrequest_timeout_secs = 42\n")
    p = world.start_daemon()
    assert p.status["state_dir"] == str(home)
    assert p.status["config_summary"]["request_timeout_secs"] == 42
    assert (home / "run" / "clinvkd.sock").exists()


def test_socket_is_private(world, daemon):
    mode = stat.S_IMODE(os.stat(world.socket).st_mode)
    assert mode == 0o600, oct(mode)
    assert stat.S_IMODE(os.stat(world.socket.parent).st_mode) == 0o700


def as_nobody():
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv to run a client as another user")
    return ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def test_peer_of_another_uid_is_refused():
    prefix = as_nobody()
    import tempfile
    root = Path(tempfile.mkdtemp(prefix="clinvk-uid-"))
    os.chmod(root, 0o755)  # nobody may reach the home folder, not the private run folder
    w = World(root)
    try:
        d = w.start_daemon()
        os.chmod(w.home, 0o755)
        os.chmod(w.state_dir, 0o755)
        # The private run folder alone keeps nobody out...
        r = w.run(*prefix, binary("clinvkctl"), "status")
        assert r.returncode != 0 and "Permission denied" in r.stderr, r
        # ...and with the folder opened up, the daemon's uid check still refuses.
        os.chmod(w.socket.parent, 0o711)
        os.chmod(w.socket, 0o666)
        r = w.run(*prefix, binary("clinvkctl"), "status")
        assert r.returncode != 0 and "another user" in r.stderr, r
        assert w.status()["pid"] == d.pid, "the daemon keeps serving its own user"
    finally:
        w.stop_all()
        shutil.rmtree(root, ignore_errors=True)


def frame(obj) -> bytes:
    data = json.dumps(obj).encode()
    return struct.pack(">I", len(data)) + data


def read_frame(sock) -> dict | None:
    head = b""
    while len(head) < 4:
        chunk = sock.recv(4 - len(head))
        if not chunk:
            return None
        head += chunk
    (n,) = struct.unpack(">I", head)
    body = b""
    while len(body) < n:
        chunk = sock.recv(n - len(body))
        if not chunk:
            return None
        body += chunk
    return json.loads(body)


def connect(world) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(str(world.socket))
    return s


def test_garbage_and_oversized_frames_do_not_kill_the_daemon(world, daemon):
    s = connect(world)
    s.sendall(struct.pack(">I", 7) + b"garbage")
    reply = read_frame(s)
    assert reply["frame"] == "error" and reply["body"]["code"] == "bad_frame"
    s.close()

    s = connect(world)
    s.sendall(b"\xff\xff\xff\xff")
    reply = read_frame(s)
    assert reply["frame"] == "error" and "larger than" in reply["body"]["message"]
    s.close()

    s = connect(world)  # a proper handshake, then garbage as the request
    s.sendall(frame({"frame": "hello", "body": {"protocol": CONTROL_PROTOCOL, "client": "test"}}))
    assert read_frame(s)["frame"] == "welcome"
    s.sendall(struct.pack(">I", 3) + b"{{{")
    assert read_frame(s)["frame"] == "error"
    s.close()

    s = connect(world)  # a wrong protocol version is refused with a message
    s.sendall(frame({"frame": "hello", "body": {"protocol": 999, "client": "test"}}))
    reply = read_frame(s)
    assert reply["body"]["code"] == "version_mismatch"
    s.close()

    assert world.status()["pid"] == daemon.pid


def test_sigterm_exits_zero_and_cleans_up(world, daemon):
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(timeout=30) == 0
    assert not world.socket.exists() and not world.pid_file.exists()
    assert "clinvkd stopped" in daemon.log_path.read_text()
