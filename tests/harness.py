"""Daemon-side test harness: a private world (temporary HOME) in which clinvkd, clinvk and
clinvkctl run as a user would run them, built from the workspace's target folder.

Everything waits on conditions (the control socket answering, a pid disappearing), never on
bare sleeps.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import wait_for

TESTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = TESTS_DIR.parent
BIN_DIR = Path(os.environ.get("CLINVK_BIN_DIR", REPO_ROOT / "target" / "debug"))


def _control_protocol() -> int:
    """The control protocol version the built daemon speaks (from its source, never hard-coded)."""
    text = (REPO_ROOT / "shared" / "src" / "protocol.rs").read_text()
    m = re.search(r"pub const PROTOCOL_VERSION: u32 = (\d+);", text)
    assert m, "PROTOCOL_VERSION not found in shared/src/protocol.rs"
    return int(m.group(1))


CONTROL_PROTOCOL = _control_protocol()


def _workspace_version() -> str:
    """The version every clinvk binary reports (the workspace's, never hard-coded)."""
    text = (REPO_ROOT / "Cargo.toml").read_text()
    m = re.search(r'\[workspace\.package\][^\[]*?\bversion\s*=\s*"([^"]+)"', text, re.S)
    assert m, "no [workspace.package] version in Cargo.toml"
    return m.group(1)


VERSION = _workspace_version()


def binary(name: str) -> str:
    path = BIN_DIR / name
    if not path.exists():
        pytest.fail(f"{path} is missing: build first (cargo build --bins), or set CLINVK_BIN_DIR")
    return str(path)


def poll(predicate, timeout: float, what: str, interval: float = 0.02):
    """Polls ``predicate`` until it returns something truthy and returns that value."""
    return wait_for(predicate, timeout, interval, what)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is as good as gone
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


class LineReader:
    """Collects a process's stdout lines in a thread, so tests can wait for a line without
    blocking on a pipe (and without losing lines to Python's read-ahead buffer)."""

    def __init__(self, stream):
        self.lines: list[str] = []
        self.cond = threading.Condition()
        self.closed = False
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream):
        for line in stream:
            with self.cond:
                self.lines.append(line)
                self.cond.notify_all()
        with self.cond:
            self.closed = True
            self.cond.notify_all()

    def wait_for(self, needle: str, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                text = "".join(self.lines)
                if needle in text:
                    return text
                left = deadline - time.monotonic()
                if left <= 0 or self.closed:
                    raise AssertionError(f"{needle!r} not seen in output: {text!r}")
                self.cond.wait(left)


def line_reader(proc) -> LineReader:
    """The (one) LineReader of a Popen's stdout."""
    if not hasattr(proc, "_line_reader"):
        proc._line_reader = LineReader(proc.stdout)
    return proc._line_reader


class World:
    """A temporary HOME with its own clinvk state folder, and helpers to run the binaries in it."""

    def __init__(self, root: Path, extra_env: dict | None = None, home: Path | None = None,
                 base_env: dict | None = None):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.home = home or root / "home"
        self.home.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in (base_env or os.environ).items()
               if not k.startswith("CLINVK_")
               and k not in ("XDG_RUNTIME_DIR", "RUST_LOG")}
        env["HOME"] = str(self.home)
        env["NO_COLOR"] = "1"
        # No pre-started warm workers unless a test asks (each would start every CLI with every
        # daemon of the suite); the workers per session stay on (the default warm mode).
        for b in ("CLAUDE", "CODEX", "GEMINI", "COPILOT", "OPENCODE"):
            env[f"CLINVK_BACKENDS_{b}_WARM_POOL"] = "0"
        env.update(extra_env or {})
        self.env = env
        self.procs: list[subprocess.Popen] = []

    # --- places -------------------------------------------------------------------------------
    @property
    def state_dir(self) -> Path:
        return self.home / ".clinvk"

    @property
    def socket(self) -> Path:
        return self.state_dir / "run" / "clinvkd.sock"

    @property
    def pid_file(self) -> Path:
        return self.state_dir / "run" / "clinvkd.pid"

    def write_config(self, text: str, name: str = "config.yaml") -> Path:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        path = self.state_dir / name
        path.write_text(text)
        return path

    # --- running things -----------------------------------------------------------------------
    def run(self, *argv, timeout: float = 60, input: str | None = None, env: dict | None = None,
            cwd: Path | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([str(a) for a in argv], env=env or self.env, input=input, text=True,
                              capture_output=True, timeout=timeout, cwd=cwd or self.root)

    def ctl(self, *args, **kw) -> subprocess.CompletedProcess:
        return self.run(binary("clinvkctl"), *args, **kw)

    def clinvk(self, *args, **kw) -> subprocess.CompletedProcess:
        return self.run(binary("clinvk"), *args, **kw)

    def popen(self, *argv, **kw) -> subprocess.Popen:
        kw.setdefault("stdout", subprocess.PIPE)
        kw.setdefault("stderr", subprocess.PIPE)
        p = subprocess.Popen([str(a) for a in argv], env=kw.pop("env", self.env), text=True,
                             cwd=kw.pop("cwd", self.root), **kw)
        self.procs.append(p)
        return p

    def status(self) -> dict | None:
        """The daemon's status, or None when none answers."""
        r = self.ctl("status", "--json", timeout=20)
        if r.returncode != 0:
            return None
        return json.loads(r.stdout)

    def start_daemon(self, *args, port: int | str = 0, wait: bool = True) -> subprocess.Popen:
        """Starts clinvkd in the foreground (as a service manager would) and waits until it answers."""
        log = open(self.root / f"clinvkd-{len(self.procs)}.stderr", "w+")
        argv = [binary("clinvkd")]
        if port is not None:
            argv += ["--port", str(port)]
        p = self.popen(*argv, *args, stdout=subprocess.DEVNULL, stderr=log)
        p.log_path = Path(log.name)  # type: ignore[attr-defined]
        if wait:
            def ready():
                if p.poll() is not None:
                    raise AssertionError(f"clinvkd exited {p.returncode}: {Path(log.name).read_text()}")
                s = self.status()
                return s if s and s["pid"] == p.pid else None
            p.status = poll(ready, 30, "clinvkd to answer on its control socket")  # type: ignore[attr-defined]
        return p

    @property
    def url(self) -> str:
        s = self.status()
        assert s, "no daemon running"
        return s["http_url"]

    def stop_all(self):
        s = self.status()
        if s:
            self.ctl("stop", "--timeout", "20", timeout=30)
            if pid_alive(s["pid"]):
                os.kill(s["pid"], signal.SIGKILL)
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass


@pytest.fixture
def world(tmp_path):
    w = World(tmp_path)
    yield w
    w.stop_all()


@pytest.fixture
def daemon(world):
    """A running clinvkd on a free port in a private HOME."""
    p = world.start_daemon()
    yield p


FAKECLI_DIR = TESTS_DIR / "fakecli"


@pytest.fixture
def live_world(tmp_path, cli_home):
    """A World whose HOME and environment make the real CLIs talk to the fake model server."""
    w = World(tmp_path / "world", home=cli_home.home, base_env=cli_home.env)
    w.workdir = cli_home.workdir  # type: ignore[attr-defined]
    yield w
    w.stop_all()


def start_live(world: World, config: str = "") -> str:
    """Starts clinvkd in a live world with `config` (YAML) and returns its URL."""
    world.env["CLINVK_SERVER_METRICS_ENABLED"] = "true"
    world.write_config(config or "# test\n")
    p = world.start_daemon()
    return p.status["http_url"]


def post(url: str, body, timeout: float = 120, headers: dict | None = None):
    """POST JSON; returns (status, parsed body or text, headers)."""
    import urllib.request
    import urllib.error
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="POST",
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            status, raw, hdrs = r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as e:
        status, raw, hdrs = e.code, e.read(), dict(e.headers)
    try:
        return status, json.loads(raw), hdrs
    except ValueError:
        return status, raw.decode(errors="replace"), hdrs


def get_json(url: str, timeout: float = 30):
    import urllib.request
    import urllib.error
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def stream_ndjson(url: str, body: dict, timeout: float = 120):
    """POSTs and yields NDJSON events as they arrive (a generator over a live connection)."""
    import http.client
    import urllib.parse

    u = urllib.parse.urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    conn.request("POST", u.path, body=json.dumps(body), headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200, resp.read()
    assert resp.getheader("content-type") == "application/x-ndjson"
    try:
        while True:
            line = resp.readline()
            if not line:
                return
            yield json.loads(line)
    finally:
        conn.close()
