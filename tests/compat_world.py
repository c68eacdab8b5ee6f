"""Fixtures for the compatible-API tests: clinvkd in a World whose HOME is wired (cli_env) to the
fake model server, so the real claude/codex/gemini run behind the daemon.

Use: ``from compat_world import compat  # noqa: F401`` then ``compat()`` / ``compat(config=...)``.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

import cli_env  # tests/fakemodel/cli_env.py (put on sys.path by conftest)
from conftest import FAKECLI_DIR, TESTED_VERSIONS, http_json, wait_for
from harness import World, poll

# Every CLI the suite pins (tests/conftest.py TESTED_VERSIONS): the per-backend tests run over all.
BACKENDS = list(TESTED_VERSIONS)

# Config for a test that checks the HTTP status of a streamed run failing before any text: a
# stream decides 200 at its first keep-alive (server.sse_keepalive_secs, 15 by default, of
# silence), so the default would make the answer depend on how fast the CLI starts.
NO_EARLY_KEEPALIVE = "server:\n  sse_keepalive_secs: 600\n"


class CompatDaemon:
    def __init__(self, world: World, fake_model, proc):
        self.world = world
        self.fake_model = fake_model
        self.proc = proc
        self.url = world.url

    # --- clients --------------------------------------------------------------------------
    @property
    def openai_base(self) -> str:
        return self.url + "/openai/v1"

    @property
    def anthropic_base(self) -> str:
        return self.url + "/anthropic"

    def openai(self, **kw):
        import openai

        kw.setdefault("max_retries", 0)
        kw.setdefault("timeout", 120)
        return openai.OpenAI(base_url=self.openai_base, api_key="sk-unused", **kw)

    def anthropic(self, **kw):
        import anthropic

        kw.setdefault("max_retries", 0)
        kw.setdefault("timeout", 120)
        return anthropic.Anthropic(base_url=self.anthropic_base, api_key="sk-unused", **kw)

    # --- daemon state ---------------------------------------------------------------------
    def runs(self) -> list[dict]:
        st = self.world.status()
        return st["runs"] if st else []

    def sessions(self) -> list[dict]:
        status, body = http_json("GET", self.url + "/api/v1/sessions")
        assert status == 200, body
        return body["sessions"] if isinstance(body, dict) and "sessions" in body else body

    def session(self, sid: str) -> dict:
        status, body = http_json("GET", self.url + "/api/v1/sessions/" + sid)
        assert status == 200, body
        return body.get("session", body) if isinstance(body, dict) else body

    def model_calls(self, **kw) -> list[dict]:
        return self.fake_model.requests(**kw)

    def wait_no_runs(self, timeout: float = 30):
        poll(lambda: not self.runs(), timeout, "all runs to end")


def fakecli(name: str) -> str:
    return str(FAKECLI_DIR / name)


@pytest.fixture
def compat(tmp_path, fake_model, cli_bin_dir):
    """``compat(config="yaml text", fast_fail=True, env={"NAME": "value" or None})`` → a running
    CompatDaemon (``env``: variables set, or removed when None, in the daemon's environment)."""
    started: list[World] = []

    def start(config: str = "", fast_fail: bool = True, env: dict | None = None) -> CompatDaemon:
        root = tmp_path / f"w{len(started)}"
        root.mkdir()
        home = root / "home"
        overrides = env or {}
        env = cli_env.setup(home, fake_model.port, fast_fail=fast_fail)
        env = {k: v for k, v in env.items() if not k.startswith("CLINVK_")}
        env.update({k: v for k, v in overrides.items() if v is not None})
        for k in [k for k, v in overrides.items() if v is None]:
            env.pop(k, None)
        world = World(root, extra_env=env)
        assert world.home == home
        started.append(world)
        work = root / "work"
        work.mkdir()
        cfg = config
        if "limits:" not in cfg:
            cfg += "\nlimits:\n  kill_grace_secs: 1\n"
        world.write_config(cfg)
        proc = world.start_daemon()
        return CompatDaemon(world, fake_model, proc)

    yield start
    for w in started:
        w.stop_all()


class Background:
    """Runs ``fn`` in a thread; ``.result()`` re-raises its exception."""

    def __init__(self, fn):
        self._value = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(fn,), daemon=True)
        self._thread.start()

    def _run(self, fn):
        try:
            self._value = fn()
        except BaseException as e:  # noqa: BLE001
            self._error = e

    def result(self, timeout: float = 60):
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "background call did not finish"
        if self._error is not None:
            raise self._error
        return self._value


__all__ = ["compat", "CompatDaemon", "BACKENDS", "NO_EARLY_KEEPALIVE", "Background", "fakecli", "wait_for", "os", "Path"]
