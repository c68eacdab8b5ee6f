#!/usr/bin/env python3
"""Point the real CLIs (claude, codex, gemini, copilot, opencode) at the fake model server.

Given a HOME folder and the fake server's port, :func:`prepare_home` writes the
config files each CLI needs and :func:`cli_env` returns the environment to run
them with.  Everything works through HOME + environment alone, so a daemon
started with that environment passes it on to the CLIs unchanged.

As a program::

    python3 tests/fakemodel/cli_env.py --home DIR --port P --print-env

writes the files and prints ``export NAME='value'`` lines (``eval`` them).
``--json`` prints the variables as one JSON object instead.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]

# The codex model provider reads its API key from this variable.
CODEX_KEY_VAR = "FAKEMODEL_OPENAI_API_KEY"
FAKE_KEYS = {
    "ANTHROPIC_API_KEY": "sk-ant-fake-key",
    CODEX_KEY_VAR: "sk-fake-openai-key",
    "GEMINI_API_KEY": "fake-gemini-key",
    "COPILOT_PROVIDER_API_KEY": "fake-copilot-provider-key",
    "OPENCODE_ANTHROPIC_KEY": "sk-ant-fake-opencode-key",
}
# The model copilot and opencode are given (both speak Anthropic messages to the fake model).
FAKE_ANTHROPIC_MODEL = "claude-sonnet-4-5"
# Variables from the caller's environment that would point a CLI somewhere
# else (another account, another config folder, another endpoint).
LEAKY_VARS = (
    "ANTHROPIC_AUTH_TOKEN", "ANTHROPIC_MODEL", "ANTHROPIC_SMALL_FAST_MODEL",
    "ANTHROPIC_DEFAULT_HAIKU_MODEL", "ANTHROPIC_DEFAULT_SONNET_MODEL", "ANTHROPIC_DEFAULT_OPUS_MODEL",
    "CLAUDE_CONFIG_DIR", "CLAUDE_CODE_USE_BEDROCK", "CLAUDE_CODE_USE_VERTEX",
    "CLAUDE_CODE_OAUTH_TOKEN", "CLAUDECODE", "CLAUDE_CODE_ENTRYPOINT", "CLAUDE_CODE_SSE_PORT",
    "OPENAI_API_KEY", "OPENAI_BASE_URL", "CODEX_API_KEY",
    "CODEX_SANDBOX", "CODEX_SANDBOX_NETWORK_DISABLED", "CODEX_THREAD_ID",
    "GOOGLE_API_KEY", "GOOGLE_GENAI_USE_VERTEXAI", "GOOGLE_GENAI_USE_GCA", "GOOGLE_CLOUD_PROJECT",
    "GOOGLE_CLOUD_LOCATION", "GOOGLE_APPLICATION_CREDENTIALS", "GEMINI_MODEL",
    "GEMINI_CLI_HOME", "GEMINI_SYSTEM_MD", "GEMINI_CLI_SYSTEM_SETTINGS_PATH",
    "XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_STATE_HOME", "XDG_CACHE_HOME",
    "COPILOT_HOME", "COPILOT_GITHUB_TOKEN", "GH_TOKEN", "GITHUB_TOKEN", "COPILOT_ALLOW_ALL",
    "COPILOT_PROVIDER_BEARER_TOKEN", "COPILOT_PROVIDER_API_KEY_COMMAND", "COPILOT_PROVIDER_WIRE_API",
    "COPILOT_PROVIDER_HEADERS", "GH_HOST", "COPILOT_GH_HOST",
    "OPENCODE_CONFIG", "OPENCODE_CONFIG_DIR", "OPENCODE_CONFIG_CONTENT", "OPENCODE_PERMISSION",
)


def cache_dir() -> Path:
    return Path(os.environ.get("CLINVK_TEST_CACHE") or REPO_ROOT / ".test-cache")


def npm_bin_dir(cache: Path | None = None) -> Path:
    return (cache or cache_dir()) / "npm" / "node_modules" / ".bin"


def xdg_cache(cache: Path | None = None) -> Path:
    """The CLIs' shared cache folder (copilot's unpacked runtime, opencode's caches)."""
    return (cache or cache_dir()) / "xdg-cache"


def base_url(port: int) -> str:
    return f"http://127.0.0.1:{int(port)}"


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def codex_config(port: int, fast_fail: bool = False) -> str:
    retries = "request_max_retries = 0\nstream_max_retries = 0\n" if fast_fail else ""
    return f"""\
# written by tests/fakemodel/cli_env.py: codex talks to the fake model server
# no `model`: codex's own default (gpt-6.1-sol in 0.169.0) is used; an unknown
# model name works too but adds a "Model metadata ... not found" warning item
model_provider = "fake"
check_for_update_on_startup = false

[model_providers.fake]
name = "fake"
base_url = "{base_url(port)}/v1"
wire_api = "responses"
env_key = "{CODEX_KEY_VAR}"
{retries}
[analytics]
enabled = false

[feedback]
enabled = false
"""


def gemini_settings(fast_fail: bool = False) -> dict:
    general = {"enableAutoUpdate": False, "enableAutoUpdateNotification": False}
    if fast_fail:
        general["maxAttempts"] = 1
    return {
        "security": {"auth": {"selectedType": "gemini-api-key"}},
        "privacy": {"usageStatisticsEnabled": False},
        "telemetry": {"enabled": False},
        "general": general,
    }


def opencode_config(port: int) -> dict:
    # ~/.config/opencode/opencode.json: the anthropic provider at the fake model, no updates,
    # no sharing. A new session's title request goes to the same provider (a utility call).
    return {
        "$schema": "https://opencode.ai/config.json",
        "provider": {"anthropic": {"options": {"baseURL": f"{base_url(port)}/v1",
                                               "apiKey": FAKE_KEYS["OPENCODE_ANTHROPIC_KEY"]}}},
        "model": f"anthropic/{FAKE_ANTHROPIC_MODEL}",
        "autoupdate": False,
        "share": "disabled",
    }


def claude_state() -> dict:
    # ~/.claude.json: onboarding done, so nothing interactive is ever asked.
    return {
        "hasCompletedOnboarding": True,
        "lastOnboardingVersion": "2.1.328",
        "bypassPermissionsModeAccepted": True,
        "autoUpdates": False,
    }


def prepare_home(home: str | os.PathLike, port: int, fast_fail: bool = False) -> Path:
    """Write every CLI's config under ``home`` (created if missing).

    ``fast_fail`` turns the CLIs' own retries off (codex provider retries 0,
    gemini ``general.maxAttempts`` 1; claude's is the env var set by cli_env), so
    a 5xx from the fake model fails a run in about a second instead of minutes.
    """
    home = Path(home)
    home.mkdir(parents=True, exist_ok=True)
    (home / "tmp").mkdir(exist_ok=True)
    _write(home / ".codex" / "config.toml", codex_config(port, fast_fail))
    _write(home / ".gemini" / "settings.json",
           json.dumps(gemini_settings(fast_fail), indent=2) + "\n")
    claude_json = home / ".claude.json"
    state = claude_state()
    if claude_json.exists():  # keep what claude itself recorded
        try:
            state = {**json.loads(claude_json.read_text()), **state}
        except ValueError:
            pass
    _write(claude_json, json.dumps(state, indent=2) + "\n")
    (home / ".claude").mkdir(exist_ok=True)
    _write(home / ".config" / "opencode" / "opencode.json",
           json.dumps(opencode_config(port), indent=2) + "\n")
    return home


def cli_env(home: str | os.PathLike, port: int, cache: Path | None = None,
            fast_fail: bool = False) -> dict[str, str]:
    """The variables to set (on top of the caller's environment)."""
    home = Path(home)
    url = base_url(port)
    bin_dir = npm_bin_dir(cache)
    env = {
        "HOME": str(home),
        # temp files (gemini's error reports, codex's helpers) stay inside HOME; this
        # also silences codex's warning about a CODEX_HOME under the temp folder
        "TMPDIR": str(home / "tmp"),
        # One cache for the suite, not one per HOME: copilot unpacks its 235 MB runtime into
        # $XDG_CACHE_HOME/copilot on its first start (measured), which per test HOME filled
        # the disk. tests/install-clis.sh unpacks it there once, before the tests run.
        "XDG_CACHE_HOME": str(xdg_cache(cache)),
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
        # claude
        "ANTHROPIC_BASE_URL": url,
        "ANTHROPIC_API_KEY": FAKE_KEYS["ANTHROPIC_API_KEY"],
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_AUTOUPDATER": "1",
        # codex
        "CODEX_HOME": str(home / ".codex"),
        CODEX_KEY_VAR: FAKE_KEYS[CODEX_KEY_VAR],
        # gemini
        "GEMINI_API_KEY": FAKE_KEYS["GEMINI_API_KEY"],
        "GOOGLE_GEMINI_BASE_URL": url,
        "GEMINI_CLI_TRUST_WORKSPACE": "true",
        # copilot: its own-provider (BYOK) mode, offline, no GitHub login
        "COPILOT_OFFLINE": "true",
        "COPILOT_PROVIDER_BASE_URL": url,
        "COPILOT_PROVIDER_TYPE": "anthropic",
        "COPILOT_PROVIDER_API_KEY": FAKE_KEYS["COPILOT_PROVIDER_API_KEY"],
        "COPILOT_MODEL": FAKE_ANTHROPIC_MODEL,
        "COPILOT_AUTO_UPDATE": "false",
        # opencode: configured by ~/.config/opencode/opencode.json (prepare_home)
    }
    if fast_fail:
        env["CLAUDE_CODE_MAX_RETRIES"] = "0"
    return env


def full_env(home, port, cache: Path | None = None, base: dict | None = None,
             fast_fail: bool = False) -> dict[str, str]:
    """``base`` (default: os.environ) minus leaky variables, plus :func:`cli_env`."""
    env = dict(os.environ if base is None else base)
    for name in LEAKY_VARS + ("CLAUDE_CODE_MAX_RETRIES",):
        env.pop(name, None)
    env.update(cli_env(home, port, cache, fast_fail))
    return env


def setup(home, port, cache: Path | None = None, base: dict | None = None,
          fast_fail: bool = False) -> dict[str, str]:
    """prepare_home + full_env in one call: returns the complete environment."""
    prepare_home(home, port, fast_fail)
    return full_env(home, port, cache, base, fast_fail)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Write CLI configs for the fake model server.")
    ap.add_argument("--home", required=True)
    ap.add_argument("--port", required=True, type=int)
    ap.add_argument("--cache", help="test cache folder (default: $CLINVK_TEST_CACHE or .test-cache)")
    ap.add_argument("--print-env", action="store_true", help="print export lines")
    ap.add_argument("--json", action="store_true", help="print the variables as JSON")
    ap.add_argument("--fast-fail", action="store_true",
                    help="turn the CLIs' retries off so a 5xx fails at once")
    args = ap.parse_args(argv)
    cache = Path(args.cache) if args.cache else None
    prepare_home(args.home, args.port, args.fast_fail)
    env = cli_env(os.path.abspath(args.home), args.port, cache, args.fast_fail)
    if args.json:
        print(json.dumps({"set": env, "unset": list(LEAKY_VARS)}, indent=2))
    elif args.print_env:
        for name in LEAKY_VARS:
            print(f"unset {name}")
        for k, v in env.items():
            print(f"export {k}={shlex.quote(v)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
