"""Shared fixtures for clinvk's black-box tests.

The test world (see tests/fakemodel/README.md):

* ``fake_model``  a fresh fake model server (tests/fakemodel/server.py) per test,
  with ``.port``, ``.url``, ``.requests()``, ``.reset()``, ``.set_scenario()``.
* ``cli_home``    a temporary HOME wired to that server for the real CLIs
  (``.home``, ``.env``, ``.workdir``); pass ``.env`` to whatever you start.
* ``cli_bin_dir`` the folder holding ``claude``, ``codex``, ``gemini``, ``copilot`` and ``opencode`` from the
  test cache (``tests/install-clis.sh`` fills it); tests skip when it is missing.

Helpers that are not fixtures (``run_cli``, ``wait_for``, ``http_json``) are plain
functions here, importable as ``from conftest import run_cli``.

The suite runs on several pytest-xdist workers at once (tests/run.sh: ``-n`` with
``--dist loadgroup``). Each test has its own HOME, fake model server and daemon on a port of
the kernel's choosing, so tests run side by side; a test that needs something of the machine's
that another test also uses is marked with an ``xdist_group`` (``uses_default_port`` below),
and the tests of one group run one after another on one worker.

Daemon fixtures are meant to live further down in this file.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = TESTS_DIR.parent
FAKEMODEL_DIR = TESTS_DIR / "fakemodel"
FAKECLI_DIR = TESTS_DIR / "fakecli"
FAKE_SERVER = FAKEMODEL_DIR / "server.py"

sys.path.insert(0, str(FAKEMODEL_DIR))
import cli_env  # noqa: E402  (tests/fakemodel/cli_env.py)


def _read_versions() -> dict[str, str]:
    out = {}
    for line in (TESTS_DIR / "cli-versions.env").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            k, v = line.split("=", 1)
            out[k.strip()] = v.strip()
    return out


CLI_VERSIONS = _read_versions()
CLAUDE_VERSION = CLI_VERSIONS["CLAUDE_CODE_VERSION"]
CODEX_VERSION = CLI_VERSIONS["CODEX_VERSION"]
GEMINI_VERSION = CLI_VERSIONS["GEMINI_CLI_VERSION"]
COPILOT_VERSION = CLI_VERSIONS["COPILOT_VERSION"]
OPENCODE_VERSION = CLI_VERSIONS["OPENCODE_VERSION"]
# Every CLI clinvk drives, with the version the suite pins.
TESTED_VERSIONS = {"claude": CLAUDE_VERSION, "codex": CODEX_VERSION, "gemini": GEMINI_VERSION,
                   "copilot": COPILOT_VERSION, "opencode": OPENCODE_VERSION}


# --------------------------------------------------------------------------
# running in parallel

uses_default_port = pytest.mark.xdist_group("default-port")
"""For a test that makes clinvkd listen on the default 127.0.0.1:8080 (a daemon started with no
--port and no server.port, e.g. by ``clinvk "prompt"``), or runs ``clinvk doctor`` with no daemon
and no server.port (it binds that port to see whether it is free): the port is the machine's, so
these tests run one after another. Every other test uses ports the kernel hands out."""


# --------------------------------------------------------------------------
# small helpers


def wait_for(predicate, timeout: float, interval: float = 0.02, what: str = "condition"):
    """Poll ``predicate`` until it returns something truthy; return that value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def http_json(method: str, url: str, body=None, timeout: float = 10.0):
    """Tiny stdlib HTTP client: returns (status, parsed JSON or text)."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode(errors="replace")


@dataclass
class CliResult:
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    def lines(self) -> list[dict]:
        """stdout parsed as NDJSON (non-JSON lines skipped)."""
        out = []
        for line in self.stdout.splitlines():
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if isinstance(obj, dict):
                out.append(obj)
        return out

    def json(self):
        return json.loads(self.stdout)

    def __str__(self) -> str:
        return (f"argv={self.argv} rc={self.returncode} ({self.seconds:.1f}s)\n"
                f"--- stdout ---\n{self.stdout[-4000:]}\n--- stderr ---\n{self.stderr[-4000:]}")


def run_cli(argv, env, cwd, timeout: float = 90.0, stdin=subprocess.DEVNULL) -> CliResult:
    """Run a CLI (argv list, no shell) in its own process group; kill the group on timeout."""
    start = time.monotonic()
    proc = subprocess.Popen([str(a) for a in argv], env=env, cwd=str(cwd), stdin=stdin,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"{argv[0]} did not finish in {timeout}s\nstdout={out[-3000:]!r}\n"
                             f"stderr={err[-3000:]!r}")
    finally:
        try:  # reap anything the CLI left behind in its group
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return CliResult([str(a) for a in argv], proc.returncode,
                     out.decode(errors="replace"), err.decode(errors="replace"),
                     time.monotonic() - start)


# --------------------------------------------------------------------------
# fake model server


class FakeModel:
    """A running tests/fakemodel/server.py (see its README for the protocol)."""

    def __init__(self, workdir: Path, verbose: bool = False, startup_timeout: float = 15.0):
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        self.port_file = workdir / "fakemodel.port"
        self.log_path = workdir / "fakemodel.log"
        self._log = open(self.log_path, "wb")
        argv = [sys.executable, str(FAKE_SERVER), "--port", "0", "--port-file", str(self.port_file)]
        if verbose:
            argv.append("--verbose")
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)

        def ready():
            if self.proc.poll() is not None:
                raise RuntimeError(f"fake model server exited with {self.proc.returncode}: "
                                   f"{self.log_path.read_text()}")
            return self.port_file.exists() and self.port_file.read_text().strip()

        self.port = int(wait_for(ready, startup_timeout, what="fake model port file"))
        self.url = f"http://127.0.0.1:{self.port}"

    # control API
    def requests(self, protocol: str | None = None, include_utility: bool = False) -> list[dict]:
        """Model calls received so far (oldest first).

        Utility calls (gemini's routing/next-speaker JSON calls, codex compaction)
        are left out unless ``include_utility``."""
        status, reqs = http_json("GET", self.url + "/_fake/requests")
        assert status == 200, reqs
        return [r for r in reqs
                if (protocol is None or r["protocol"] == protocol)
                and (include_utility or not r.get("utility"))]

    def other_requests(self) -> list[dict]:
        """Non-model requests (count_tokens, /v1/models, unknown paths)."""
        return http_json("GET", self.url + "/_fake/other")[1]

    def reset(self) -> None:
        status, _ = http_json("POST", self.url + "/_fake/reset")
        assert status == 200

    def release(self) -> None:
        """Lets every answer held by a ``[[gate]]`` go on (until the next reset)."""
        status, _ = http_json("POST", self.url + "/_fake/release")
        assert status == 200

    def set_scenario(self, mode: str = "normal", delay_ms: int | None = None) -> dict:
        body = {"mode": mode}
        if delay_ms is not None:
            body["delay_ms"] = delay_ms
        status, got = http_json("POST", self.url + "/_fake/scenario", body)
        assert status == 200, got
        return got

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


@pytest.fixture
def fake_model(tmp_path):
    fm = FakeModel(tmp_path / "fakemodel")
    yield fm
    fm.stop()


# --------------------------------------------------------------------------
# real CLIs


@pytest.fixture(scope="session")
def cli_bin_dir() -> Path:
    bin_dir = cli_env.npm_bin_dir()
    missing = [b for b in TESTED_VERSIONS if not (bin_dir / b).exists()]
    if missing:
        pytest.skip(f"real CLIs not installed in {bin_dir} (missing {', '.join(missing)}): "
                    f"run tests/install-clis.sh first")
    return bin_dir


@dataclass
class CliHome:
    home: Path
    workdir: Path  # an empty project folder to run the CLIs in
    port: int
    env: dict[str, str] = field(repr=False)


@pytest.fixture
def cli_home_factory(tmp_path, fake_model, cli_bin_dir):
    """Make more HOMEs wired to ``fake_model``: ``cli_home_factory("h2", fast_fail=True)``.

    ``fast_fail`` turns the CLIs' own retries off (see cli_env.prepare_home), so a
    5xx from the fake model fails a run in seconds instead of minutes."""

    def make(name: str = "home", fast_fail: bool = False) -> CliHome:
        home = tmp_path / name
        workdir = tmp_path / f"{name}-work"
        workdir.mkdir()
        env = cli_env.setup(home, fake_model.port, fast_fail=fast_fail)
        return CliHome(home=home, workdir=workdir, port=fake_model.port, env=env)

    return make


@pytest.fixture
def cli_home(cli_home_factory) -> CliHome:
    return cli_home_factory()
