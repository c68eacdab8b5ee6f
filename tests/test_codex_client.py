"""The Codex CLI as a client of clinvk: codex configured with a `model_providers` entry whose
`base_url` is clinvk's `/openai/v1` (`wire_api = "responses"`) and model `claude` completes
`codex exec` through clinvk — a plain answer, and a turn where the model (claude behind clinvk)
calls codex's own `exec_command` tool, which codex runs locally and answers."""

from __future__ import annotations

import json
import os
import subprocess

import cli_env  # tests/fakemodel/cli_env.py (the test cache's location)

from compat_world import compat  # noqa: F401  (fixture)


def codex_client(d, tmp_path):
    home = tmp_path / "codex-client"
    (home / ".codex").mkdir(parents=True)
    (home / ".codex" / "config.toml").write_text(f"""
model = "claude"
model_provider = "clinvk"
check_for_update_on_startup = false

[model_providers.clinvk]
name = "clinvk"
base_url = "{d.openai_base}"
wire_api = "responses"
env_key = "CLINVK_API_KEY"
request_max_retries = 0
stream_max_retries = 0

[analytics]
enabled = false
""")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("OPENAI", "CODEX", "ANTHROPIC", "GEMINI", "FAKEMODEL"))}
    env.update(HOME=str(home), CODEX_HOME=str(home / ".codex"), CLINVK_API_KEY="sk-unused")
    work = tmp_path / "codex-work"
    work.mkdir()

    def run(prompt: str) -> list[dict]:
        r = subprocess.run([str(cli_env.npm_bin_dir() / "codex"), "exec", "--json",
                            "--skip-git-repo-check", "--sandbox", "workspace-write", prompt],
                           env=env, cwd=work, capture_output=True, text=True, timeout=180)
        events = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
        assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-2000:])
        return events

    return run, work


def messages(events: list[dict]) -> list[str]:
    return [e["item"]["text"] for e in events
            if e.get("type") == "item.completed" and e["item"].get("type") == "agent_message"]


def test_codex_exec_through_clinvk(compat, tmp_path):
    d = compat()
    run, _ = codex_client(d, tmp_path)
    events = run("hello from codex")
    # (codex sends its context as turns of its own: claude gets the conversation written out)
    assert [m for m in messages(events) if m.startswith("fake-reply turns=1")], messages(events)
    # It went through clinvk to claude: the fake model saw claude's request (anthropic protocol)
    # carrying codex's tools as clinvk's MCP tools.
    call = [c for c in d.model_calls() if "hello from codex" in c["last_user"]][-1]
    assert call["protocol"] == "anthropic"
    assert "mcp__clinvk__exec_command" in call["offered_tools"], call["offered_tools"]


def test_codex_runs_its_own_tool_for_the_model_behind_clinvk(compat, tmp_path):
    d = compat()
    run, work = codex_client(d, tmp_path)
    cmd = json.dumps({"cmd": "echo made-by-codex > proof.txt && cat proof.txt"})
    events = run(f"[[call:exec_command={cmd}]]")
    assert (work / "proof.txt").read_text().strip() == "made-by-codex"
    final = messages(events)[-1]
    assert "tool-results=" in final and "made-by-codex" in final, events
