#!/usr/bin/env python3
"""Record the real CLIs' output for the Rust parsers' unit tests.

Runs each pinned CLI against a fresh fake model server in a throwaway HOME and
writes ``clinvkd/tests/fixtures/<cli>-<version>-<scenario>.{stdout,stderr,exit}``
plus ``clinvkd/tests/fixtures/README.md`` listing the exact command of each.

    python3 tests/fakemodel/record_fixtures.py [--out DIR] [--only claude,codex,gemini,copilot,opencode]

Re-run it whenever tests/cli-versions.env changes (install-clis.sh first).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))
import cli_env  # noqa: E402

BASE = Path("/tmp/clinvk-fixtures")  # fixed, so re-recording gives small diffs
HOME = BASE / "home"
WORK = BASE / "work"

STREAM_CLAUDE = ["-p", "--output-format", "stream-json", "--verbose", "--include-partial-messages"]
JSON_CLAUDE = ["-p", "--output-format", "json"]
CODEX_EXEC = ["exec", "--json", "--skip-git-repo-check"]
BAD_ID = "00000000-0000-4000-8000-00000000dead"


def versions() -> dict[str, str]:
    out = {}
    for line in (REPO / "tests" / "cli-versions.env").read_text().splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            k, v = line.split("=", 1)
            out[k.strip()] = v.strip()
    return {"claude": out["CLAUDE_CODE_VERSION"], "codex": out["CODEX_VERSION"],
            "gemini": out["GEMINI_CLI_VERSION"], "copilot": out["COPILOT_VERSION"],
            "opencode": out["OPENCODE_VERSION"]}


class Recorder:
    def __init__(self, out_dir: Path):
        self.out_dir = out_dir
        self.rows: list[tuple[str, str, str, str]] = []  # file stem, command, env, note
        if BASE.exists():
            shutil.rmtree(BASE)
        WORK.mkdir(parents=True)
        port_file = BASE / "port"
        self.server = subprocess.Popen(
            [sys.executable, str(HERE / "server.py"), "--port", "0", "--port-file", str(port_file)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 15
        while not port_file.exists():
            if time.monotonic() > deadline or self.server.poll() is not None:
                raise SystemExit("fake model server did not start")
            time.sleep(0.02)
        self.port = int(port_file.read_text())
        self.env = cli_env.setup(HOME, self.port)
        self.bin = cli_env.npm_bin_dir()

    def control(self, path: str, body: dict | None = None):
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}",
                                     data=json.dumps(body or {}).encode(), method="POST")
        urllib.request.urlopen(req, timeout=10).read()

    def run(self, cli: str, args: list[str], extra_env: dict | None = None, timeout=120,
            stdin: str | None = None):
        env = dict(self.env, **(extra_env or {}))
        for k in [k for k, v in env.items() if v is None]:
            del env[k]  # None in extra_env: the variable is unset
        proc = subprocess.run([str(self.bin / cli), *args], env=env, cwd=WORK,
                              input=None if stdin is None else stdin.encode(),
                              stdin=subprocess.DEVNULL if stdin is None else None,
                              capture_output=True, timeout=timeout)
        return proc

    def record(self, cli: str, version: str, scenario: str, args: list[str],
               extra_env: dict | None = None, note: str = "", mode: str = "normal",
               stdin: str | None = None, limits: str = "none"):
        self.control("/_fake/scenario", {"mode": mode})
        self.control("/_fake/limits", {"mode": limits})
        try:
            proc = self.run(cli, args, extra_env, stdin=stdin)
        finally:
            self.control("/_fake/scenario", {"mode": "normal"})
            self.control("/_fake/limits", {"mode": "none"})
        stem = f"{cli}-{version}-{scenario}"
        (self.out_dir / f"{stem}.stdout").write_bytes(proc.stdout)
        (self.out_dir / f"{stem}.stderr").write_bytes(proc.stderr)
        (self.out_dir / f"{stem}.exit").write_text(f"{proc.returncode}\n")
        shown = " ".join(shlex.quote(a) for a in [cli, *args])
        if stdin is not None:
            note = f"stdin: `{stdin}`. {note}"
        env_note = " ".join(f"{k}={shlex.quote(v)}" if v is not None else f"-u {k}"
                            for k, v in (extra_env or {}).items())
        if mode != "normal":
            note = (note + " " if note else "") + f"Fake model scenario `{mode}`."
        if limits != "none":
            note = (note + " " if note else "") + f"Fake model limits `{limits}` (reset in 3600 s)."
        self.rows.append((stem, shown, env_note, note))
        print(f"{stem}: exit {proc.returncode}, {len(proc.stdout)} B stdout, "
              f"{len(proc.stderr)} B stderr", flush=True)
        return proc

    def first_turn(self, cli: str, args: list[str], extra_env=None, stdin: str | None = None) -> str:
        proc = self.run(cli, args, extra_env, stdin=stdin)
        if proc.returncode != 0:
            raise SystemExit(f"{cli} first turn failed: {proc.stderr.decode()[-2000:]}")
        out = proc.stdout.decode()
        if cli == "codex":
            return json.loads(out.splitlines()[0])["thread_id"]
        if cli == "opencode":
            return json.loads(out.splitlines()[0])["sessionID"]
        return json.loads(out)["session_id"]

    def stop(self):
        self.server.terminate()
        self.server.wait(5)


def record_claude(r: Recorder, v: str):
    prompt = "Say hello in a few words"
    r.record("claude", v, "ok", STREAM_CLAUDE + [prompt])
    r.record("claude", v, "json", JSON_CLAUDE + [prompt])
    sid = r.first_turn("claude", JSON_CLAUDE + ["Remember the word apple"])
    r.record("claude", v, "resume", STREAM_CLAUDE + ["--resume", sid, "Which word was it?"],
             note=f"Second turn; first turn was `claude -p --output-format json 'Remember the word apple'` (session {sid}).")
    r.record("claude", v, "error", STREAM_CLAUDE + [prompt], mode="error",
             note="Fake model answers HTTP 400 (claude retries 400s with fewer beta features: 6 requests).")
    r.record("claude", v, "error-json", JSON_CLAUDE + [prompt], mode="error")
    r.record("claude", v, "badresume", STREAM_CLAUDE + ["--resume", BAD_ID, prompt],
             note="Unknown session id.")
    r.record("claude", v, "system", STREAM_CLAUDE + ["--model", "claude-sonnet-4-5", "--system-prompt",
                                                      "SYSMARK You are terse.", prompt])


def record_codex(r: Recorder, v: str):
    prompt = "Say hello in a few words"
    r.record("codex", v, "ok", CODEX_EXEC + [prompt],
             note="`codex exec --json` is codex's only JSON mode, so there is no separate `json` fixture.")
    r.record("codex", v, "text", ["exec", "--skip-git-repo-check", prompt],
             note="Plain mode: the final message on stdout, the transcript on stderr.")
    tid = r.first_turn("codex", CODEX_EXEC + ["Remember the word apple"])
    r.record("codex", v, "resume", CODEX_EXEC + ["resume", tid, "Which word was it?"],
             note=f"Second turn; first turn was `codex exec --json --skip-git-repo-check 'Remember the word apple'` (thread {tid}).")
    r.record("codex", v, "error", CODEX_EXEC + [prompt], mode="error")
    r.record("codex", v, "badresume", CODEX_EXEC + ["resume", BAD_ID, prompt],
             note="Unknown UUID: exit 1, plain stderr only.")
    r.record("codex", v, "badresume-name", CODEX_EXEC + ["resume", "no-such-session", prompt],
             note="A non-UUID is taken as a thread *name*; an unknown name silently starts a NEW thread (exit 0).")
    r.record("codex", v, "model", CODEX_EXEC + ["-m", "gpt-5.5", prompt])


def record_gemini(r: Recorder, v: str):
    prompt = "Say hello in a few words"
    stream = ["--output-format", "stream-json"]
    as_json = ["--output-format", "json"]
    r.record("gemini", v, "ok", ["-p", prompt] + stream,
             note="Default model `auto`: a routing call precedes the answer.")
    r.record("gemini", v, "json", ["-p", prompt] + as_json)
    sid = r.first_turn("gemini", ["-p", "Remember the word apple"] + as_json)
    r.record("gemini", v, "resume", ["-p", "Which word was it?", "--resume", sid] + stream,
             note=f"Second turn; first turn was `gemini -p 'Remember the word apple' --output-format json` (session {sid}).")
    r.record("gemini", v, "error", ["-p", prompt, "-m", "gemini-2.5-flash"] + stream, mode="error",
             note="stream-json: a `result` line with `status: error` on stdout.")
    r.record("gemini", v, "error-json", ["-p", prompt, "-m", "gemini-2.5-flash"] + as_json, mode="error",
             note="json mode: the error object goes to stderr, stdout is empty.")
    r.record("gemini", v, "badresume", ["-p", prompt, "--resume", BAD_ID] + stream,
             note="Unknown session id.")
    sys_md = BASE / "system.md"
    sys_md.write_text("SYSMARK You are terse.\n")
    r.record("gemini", v, "system", ["-p", prompt, "-m", "gemini-2.5-flash"] + stream,
             extra_env={"GEMINI_SYSTEM_MD": str(sys_md)},
             note="gemini has no system-prompt flag; GEMINI_SYSTEM_MD names a file that REPLACES its built-in system prompt.")


def record_copilot(r: Recorder, v: str):
    prompt = "Say hello in a few words"
    as_json = ["--output-format", "json", "--no-auto-update", "--no-color"]
    r.record("copilot", v, "ok", [f"--prompt={prompt}"] + as_json,
             note="The session id is printed only in the last line (`result`).")
    sid = str(uuid.uuid4())
    first = r.run("copilot", ["--prompt=Remember the word apple", f"--session-id={sid}"] + as_json)
    if first.returncode != 0:
        raise SystemExit(f"copilot first turn failed: {first.stderr.decode()[-2000:]}")
    r.record("copilot", v, "resume", ["--prompt=Which word was it?", f"--resume={sid}"] + as_json,
             note=f"Second turn; the first was `copilot '--prompt=Remember the word apple' --session-id={sid}`.")
    r.record("copilot", v, "error", [f"--prompt={prompt}"] + as_json, mode="error",
             note="A `session.error` line, then `result` with exit code 1.")
    r.record("copilot", v, "badresume", [f"--prompt={prompt}", f"--resume={BAD_ID}"] + as_json,
             note="Unknown session id: exit 1, plain stderr only.")
    r.record("copilot", v, "tool",
             ['--prompt=run it [[call:bash={"command":"echo hi-from-tool","description":"say hi"}]]',
              "--allow-all-tools"] + as_json,
             note="The fake model asks for copilot's own `bash` tool, then answers.")


def record_opencode(r: Recorder, v: str):
    # The prompt on stdin, as clinvk runs it (`run` quotes argv words that hold a space).
    prompt = "Say hello in a few words"
    run = ["run", "--format", "json", "--print-logs", "--log-level", "ERROR", "--title="]
    r.record("opencode", v, "ok", run, stdin=prompt,
             note="`--title=`: no title-generation model call.")
    sid = r.first_turn("opencode", run, stdin="Remember the word apple")
    r.record("opencode", v, "resume", run + ["-s", sid], stdin="Which word was it?",
             note=f"Second turn; first turn was the same command with 'Remember the word apple' (session {sid}).")
    r.record("opencode", v, "error", run, stdin=prompt, mode="error",
             note="An `error` line on stdout, exit 1.")
    r.record("opencode", v, "badresume", run + ["-s", "ses_0000000000000000000000dead"], stdin=prompt,
             note="Unknown session id: `Error: Session not found` (coloured) on stderr, exit 1.")
    r.record("opencode", v, "badmodel", run + ["-m", "anthropic/claude-nope-1"], stdin=prompt,
             note="An `error` line saying only \"Unexpected server error\" (with a `ref`); the cause is in the ERROR log line of that ref on stderr.")


# claude reports quota windows only under a subscription login (no API key).
CLAUDE_SUBSCRIPTION = {"CLAUDE_CODE_OAUTH_TOKEN": "fake-oauth", "ANTHROPIC_API_KEY": None}


def record_limits(r: Recorder, v: dict):
    """Subscription-limit fixtures (POST /_fake/limits): a window nearly spent, a window spent."""
    prompt = "Say hello in a few words"
    for limits in ("warning", "rejected"):
        r.record("claude", v["claude"], f"limit-{limits}", STREAM_CLAUDE + [prompt],
                 extra_env=CLAUDE_SUBSCRIPTION, limits=limits,
                 note="`rate_limit_event` line(s); rejected: synthetic assistant message + "
                      "`result` with `api_error_status: 429`, exit 1, one request.")
        r.record("codex", v["codex"], f"limit-{limits}", CODEX_EXEC + [prompt], limits=limits,
                 note="`exec --json` prints nothing of the windows; rejected: `error` + "
                      "`turn.failed`, exit 1, one request.")
        r.record("copilot", v["copilot"], f"limit-{limits}",
                 [f"--prompt={prompt}", "--output-format", "json", "--no-auto-update", "--no-color"],
                 limits=limits, note="Nothing of the headers; rejected (retry-after 3600): no retry, "
                                     "`model.call_failure` + `session.error` (`errorType: rate_limit`), exit 1.")
    r.record("gemini", v["gemini"], "limit-rejected",
             ["-p", prompt, "--output-format", "stream-json"], limits="rejected",
             note="429 RESOURCE_EXHAUSTED with a per-day QuotaFailure: TerminalQuotaError, no retry, "
                  "`result` with `status: error` on stdout, exit 173 (429 mod 256).")


README_HEAD = """\
# Recorded CLI output (fixtures for the backend parsers)

Real stdout, stderr and exit code of the pinned CLIs (tests/cli-versions.env), recorded
by `python3 tests/fakemodel/record_fixtures.py` against the fake model server
(tests/fakemodel/server.py, whose replies read `fake-reply turns=N last=…`).
Files: `<cli>-<version>-<scenario>.stdout`, `.stderr`, `.exit` (decimal exit code).
Nothing is trimmed; session ids, timestamps and temp paths differ on every recording.

Every command ran with stdin = /dev/null, cwd = `{work}` (an empty folder, not a git
repository), and HOME + environment from `tests/fakemodel/cli_env.py`:

```
{env}
```

| fixture | command | extra env | note |
|---|---|---|---|
"""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(REPO / "clinvkd" / "tests" / "fixtures"))
    ap.add_argument("--only", default="claude,codex,gemini,copilot,opencode")
    ap.add_argument("--limits", action="store_true",
                    help="record only the subscription-limit fixtures; their README rows are "
                         "replaced or appended")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    v = versions()
    r = Recorder(out)
    try:
        if args.limits:
            record_limits(r, v)
            args.only = ""
        for cli in filter(None, args.only.split(",")):
            {"claude": record_claude, "codex": record_codex, "gemini": record_gemini,
             "copilot": record_copilot, "opencode": record_opencode}[cli](r, v[cli])
    finally:
        r.stop()
    shown_env = "\n".join(f"{k}={val}" for k, val in cli_env.cli_env(HOME, r.port).items()
                          if k != "PATH") + "\nPATH=<test cache>/npm/node_modules/.bin:$PATH"
    text = README_HEAD.format(work=WORK, env=shown_env.replace(str(r.port), "<port>"))
    for stem, cmd, env, note in r.rows:
        text += f"| `{stem}` | `{cmd}` | {('`' + env + '`') if env else ''} | {note} |\n"
    text += ("\nConfig files written into HOME: `.codex/config.toml` (provider `fake`, "
             "`wire_api = \"responses\"`), `.gemini/settings.json` (gemini-api-key auth), "
             "`.claude.json` (onboarding done), `.config/opencode/opencode.json` (the anthropic "
             "provider at the fake model). See tests/fakemodel/README.md.\n")
    readme = out / "README.md"
    if args.limits and readme.exists():
        stems = {f"| `{stem}` |" for stem, *_ in r.rows}
        old = [line for line in readme.read_text().splitlines(keepends=True)
               if not line.startswith(tuple(stems))]
        last_row = max((i for i, line in enumerate(old) if line.startswith("| `")), default=len(old) - 1)
        new_rows = [line for line in text.splitlines(keepends=True) if line.startswith(tuple(stems))]
        readme.write_text("".join(old[:last_row + 1] + new_rows + old[last_row + 1:]))
    elif args.only == "claude,codex,gemini,copilot,opencode":
        readme.write_text(text)
    elif readme.exists():
        # Some CLIs only: their rows replace theirs in the existing list.
        clis = tuple(f"| `{c}-" for c in args.only.split(","))
        old = readme.read_text().splitlines(keepends=True)
        kept = [line for line in old if not line.startswith(clis)]
        last_row = max((i for i, line in enumerate(kept) if line.startswith("| `")), default=len(kept) - 1)
        new_rows = [line for line in text.splitlines(keepends=True) if line.startswith(clis)]
        readme.write_text("".join(kept[:last_row + 1] + new_rows + kept[last_row + 1:]))
    else:
        print(text)


if __name__ == "__main__":
    main()
