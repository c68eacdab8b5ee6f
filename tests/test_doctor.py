"""`clinvk doctor`: each setup a new user can have gives the verdict and exit code they need —
the pinned CLIs (and a smoke prompt through the daemon), no CLIs, a CLI of another version, a
broken config, the port taken — and the shell completions load."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from pathlib import Path

from conftest import CLAUDE_VERSION, TESTED_VERSIONS, uses_default_port
from harness import World, binary, live_world, world  # noqa: F401  (fixtures)

TESTED = TESTED_VERSIONS


def doctor(w: World, *args, env: dict | None = None):
    r = w.clinvk("doctor", "--json", *args, env=env, timeout=180)
    assert r.stdout.strip(), r.stderr
    report = json.loads(r.stdout)
    return r.returncode, report


def checks(report: dict, area: str) -> list[dict]:
    return [c for c in report["checks"] if c["area"] == area]


def one(report: dict, area: str) -> dict:
    found = checks(report, area)
    assert len(found) == 1, (area, report["checks"])
    return found[0]


def test_the_pinned_clis_pass_and_a_smoke_prompt_answers(live_world):
    w = live_world
    w.write_config("# test\n")
    daemon = w.start_daemon()
    code, report = doctor(w, "--smoke")
    assert code == 0, [c for c in report["checks"] if c["verdict"] != "ok"]
    assert report["ok"] and report["failures"] == 0, report
    for name, version in TESTED.items():
        c = one(report, name)
        assert c["verdict"] == "ok" and version in c["summary"] and "tested" in c["summary"], c
        assert one(report, f"{name} login")["verdict"] == "ok", report
        smoke = one(report, f"smoke {name}")
        assert smoke["verdict"] == "ok", smoke
    # How each is logged in is named, never the key itself.
    text = json.dumps(report)
    assert "ANTHROPIC_API_KEY" in one(report, "claude login")["summary"]
    assert "GEMINI_API_KEY" in one(report, "gemini login")["summary"]
    for secret_var in ("ANTHROPIC_API_KEY", "GEMINI_API_KEY", "FAKEMODEL_OPENAI_API_KEY"):
        value = w.env.get(secret_var)
        assert value and value not in text, secret_var
    d = one(report, "daemon")
    assert d["verdict"] == "ok" and str(daemon.pid) in d["summary"], d
    assert one(report, "socket")["verdict"] == "ok"


@uses_default_port  # no daemon, no server.port: doctor checks 127.0.0.1:8080
def test_without_any_cli_the_default_backend_fails_with_the_install_command(world):
    env = dict(world.env, PATH="/usr/bin:/bin")
    code, report = doctor(world, env=env)
    assert code == 1 and not report["ok"], report
    claude = one(report, "claude")
    assert claude["verdict"] == "fail" and "not found" in claude["summary"], claude
    assert "npm install -g @anthropic-ai/claude-code" in claude["fix"]
    # The others are not the default backend: a warning each.
    for name in set(TESTED) - {"claude"}:
        assert one(report, name)["verdict"] == "warn", report
    # The human form says the same.
    r = world.clinvk("doctor", env=env, timeout=120)
    assert r.returncode == 1
    assert "FAIL  claude" in r.stdout and "fix: npm install -g" in r.stdout, r.stdout


@uses_default_port  # no daemon, no server.port: doctor checks 127.0.0.1:8080
def test_a_cli_of_another_version_is_a_warning_naming_both_versions(live_world, tmp_path):
    w = live_world
    shim_dir = tmp_path / "shim"
    shim_dir.mkdir()
    shim = shim_dir / "claude"
    shim.write_text(
        "#!/bin/sh\n"
        'case "$1" in\n'
        '  --version) echo "9.9.9 (Claude Code)";;\n'
        '  auth) echo \'{"loggedIn": true, "authMethod": "api_key", "apiKeySource": "ANTHROPIC_API_KEY"}\';;\n'
        "  *) exit 1;;\n"
        "esac\n")
    shim.chmod(0o755)
    env = dict(w.env, PATH=f"{shim_dir}{os.pathsep}{w.env['PATH']}")
    code, report = doctor(w, env=env)
    c = one(report, "claude")
    assert c["verdict"] == "warn", c
    assert "9.9.9" in c["summary"] and "newer" in c["summary"] and CLAUDE_VERSION in c["summary"], c
    assert f"@anthropic-ai/claude-code@{CLAUDE_VERSION}" in c["fix"]
    # A warning is not a failure.
    assert code == 0 and report["ok"] and report["warnings"] >= 1, report


@uses_default_port  # no daemon, no server.port: doctor checks 127.0.0.1:8080
def test_a_broken_config_fails_naming_the_key_and_line(world):
    world.write_config("server:\n  port: \"abc\"\n")
    code, report = doctor(world)
    assert code == 1, report
    c = one(report, "config")
    assert c["verdict"] == "fail", c
    assert "server.port" in c["summary"] and "line 2" in c["summary"], c


def test_the_port_taken_by_another_program_fails(world):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        world.write_config(f"server:\n  port: {port}\n")
        code, report = doctor(world)
    assert code == 1, report
    c = one(report, "port")
    assert c["verdict"] == "fail" and str(port) in c["summary"] and "in use" in c["summary"], c


def test_auth_off_on_a_public_address_fails(world):
    world.write_config("server:\n  host: 0.0.0.0\n  port: 0\n")
    code, report = doctor(world)
    assert code == 1, report
    assert one(report, "auth")["verdict"] == "fail"
    # With a key it is fine.
    env = dict(world.env, CLINVK_API_KEYS="k-0123456789abcdef0123")
    _, report = doctor(world, env=env)
    assert one(report, "auth")["verdict"] == "ok", report


def test_completions_load_in_bash_and_cover_the_commands(world):
    for prog in ("clinvk", "clinvkctl"):
        script = world.run(binary(prog), "completions", "bash").stdout
        r = subprocess.run(["bash", "-c", f"source /dev/stdin; complete -p {prog}"], input=script,
                           text=True, capture_output=True, timeout=30)
        assert r.returncode == 0, r.stderr
        assert f" {prog}" in r.stdout, r.stdout
        for shell, marker in (("zsh", f"#compdef {prog}"), ("fish", f"complete -c {prog}")):
            out = world.run(binary(prog), "completions", shell).stdout
            assert marker in out, (prog, shell, out[:200])
    script = world.run(binary("clinvk"), "completions", "bash").stdout
    for sub in ("doctor", "serve", "sessions", "completions"):
        assert sub in script, sub
    assert world.run(binary("clinvk"), "completions", "tcsh").returncode == 2


def test_man_pages_are_generated(world, tmp_path):
    out = tmp_path / "man"
    r = world.run(binary("clinvk"), "generate-man", out)
    assert r.returncode == 0, r.stderr
    assert world.run(binary("clinvkctl"), "generate-man", out).returncode == 0
    assert world.run(binary("clinvkd"), "--generate-man", out).returncode == 0
    names = {p.name for p in out.iterdir()}
    for page in ("clinvk.1", "clinvk-doctor.1", "clinvk-serve.1", "clinvkctl.1",
                 "clinvkctl-keys-add.1", "clinvkd.8"):
        assert page in names, sorted(names)
    text = (out / "clinvk-doctor.1").read_text()
    assert text.startswith(".ie") or ".TH" in text, text[:200]
    assert "smoke" in text
