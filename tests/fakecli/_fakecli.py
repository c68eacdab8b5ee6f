"""Shared body of the fault-injection fake CLIs in this folder.

Each executable here (``crash-midstream``, ``hang``, …) is a three-line wrapper
calling :func:`main` with its behaviour name.  Output mimics
``claude -p --output-format stream-json --verbose --include-partial-messages``:
a ``system/init`` line, ``stream_event`` lines with text deltas, an
``assistant`` line and a final ``result`` line.  See README.md.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid

VERSION_TEXT = "fakecli 0.0.0"
# claude flags that take a value (so their value is not mistaken for the prompt)
VALUE_FLAGS = {
    "--output-format", "--input-format", "--model", "-m", "--session-id", "--resume", "-r",
    "--system-prompt", "--append-system-prompt", "--permission-mode", "--max-turns",
    "--add-dir", "--allowedTools", "--allowed-tools", "--disallowedTools",
    "--disallowed-tools", "--mcp-config", "--settings", "--fallback-model", "-C", "--cd",
    "--approval-mode", "--sandbox", "-a", "-s", "-c", "--config", "--prompt", "-p",
}
BOOL_P = True  # claude's -p/--print is a flag; the prompt is positional


class Run:
    def __init__(self, argv: list[str]) -> None:
        self.argv = argv
        self.session_id = str(uuid.uuid4())
        self.model = "fakecli-model"
        self.prompt = ""
        positional = []
        i = 0
        while i < len(argv):
            a = argv[i]
            if a == "--":
                positional.extend(argv[i + 1:])
                break
            if a in ("-p", "--print"):
                # claude: flag; gemini: takes the prompt. Take the next word if it is not a flag.
                if i + 1 < len(argv) and not argv[i + 1].startswith("-"):
                    positional.append(argv[i + 1])
                    i += 2
                    continue
                i += 1
                continue
            if a in VALUE_FLAGS and i + 1 < len(argv):
                val = argv[i + 1]
                if a in ("--session-id", "--resume", "-r"):
                    self.session_id = val
                elif a in ("--model", "-m"):
                    self.model = val
                i += 2
                continue
            if a.startswith("-"):
                if "=" in a:
                    k, v = a.split("=", 1)
                    if k in ("--session-id", "--resume"):
                        self.session_id = v
                    elif k == "--model":
                        self.model = v
                i += 1
                continue
            positional.append(a)
            i += 1
        self.prompt = positional[-1] if positional else ""
        self.started = time.time()
        self.out = sys.stdout.buffer
        self.deltas_sent: list[str] = []

    # -- output ----------------------------------------------------------

    def raw(self, data: bytes) -> None:
        self.out.write(data)
        self.out.flush()

    def line(self, obj: dict) -> None:
        self.raw(json.dumps(obj, separators=(",", ":")).encode() + b"\n")

    def init(self) -> None:
        self.line({"type": "system", "subtype": "init", "cwd": os.getcwd(),
                   "session_id": self.session_id, "tools": [], "mcp_servers": [],
                   "model": self.model, "permissionMode": "default", "apiKeySource": "none",
                   "claude_code_version": "0.0.0-fakecli", "output_style": "default",
                   "uuid": str(uuid.uuid4())})

    def event(self, ev: dict) -> None:
        self.line({"type": "stream_event", "event": ev, "session_id": self.session_id,
                   "parent_tool_use_id": None, "uuid": str(uuid.uuid4())})

    def message_start(self) -> None:
        self.msg_id = "msg_fakecli_" + uuid.uuid4().hex[:16]
        self.event({"type": "message_start", "message": {
            "id": self.msg_id, "type": "message", "role": "assistant", "model": self.model,
            "content": [], "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": 10, "output_tokens": 1}}})
        self.event({"type": "content_block_start", "index": 0,
                    "content_block": {"type": "text", "text": ""}})

    def delta(self, text: str) -> None:
        self.deltas_sent.append(text)
        self.event({"type": "content_block_delta", "index": 0,
                    "delta": {"type": "text_delta", "text": text}})

    def finish(self, exit_code: int = 0) -> None:
        text = "".join(self.deltas_sent)
        usage = {"input_tokens": 10, "output_tokens": len(self.deltas_sent),
                 "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}
        self.line({"type": "assistant", "message": {
            "id": getattr(self, "msg_id", "msg_fakecli"), "type": "message", "role": "assistant",
            "model": self.model, "content": [{"type": "text", "text": text}],
            "stop_reason": None, "stop_sequence": None, "usage": usage},
            "parent_tool_use_id": None, "session_id": self.session_id, "uuid": str(uuid.uuid4())})
        self.event({"type": "content_block_stop", "index": 0})
        self.event({"type": "message_delta", "delta": {"stop_reason": "end_turn",
                                                       "stop_sequence": None},
                    "usage": {"output_tokens": len(self.deltas_sent)}})
        self.event({"type": "message_stop"})
        ms = int((time.time() - self.started) * 1000)
        self.line({"type": "result", "subtype": "success", "is_error": False, "duration_ms": ms,
                   "duration_api_ms": ms, "num_turns": 1, "result": text,
                   "stop_reason": "end_turn", "session_id": self.session_id,
                   "total_cost_usd": 0, "usage": usage, "uuid": str(uuid.uuid4())})
        sys.exit(exit_code)

    def words(self) -> list[str]:
        text = f"fakecli reply to: {self.prompt}".rstrip()
        parts = text.split(" ")
        return [p + " " for p in parts[:-1]] + [parts[-1]]


# -- behaviours ---------------------------------------------------------------


def ok(run: Run) -> None:
    run.init()
    run.message_start()
    for w in run.words():
        run.delta(w)
    run.finish()


def slow_ok(run: Run) -> None:
    gap = float(os.environ.get("FAKECLI_DELAY_MS", "300")) / 1000
    run.init()
    run.message_start()
    for i, w in enumerate(run.words()):
        if i:
            time.sleep(gap)
        run.delta(w)
    run.finish()


def crash_midstream(run: Run) -> None:
    run.init()
    run.message_start()
    run.delta("partial ")
    run.delta("answer ")
    time.sleep(0.05)
    os.kill(os.getpid(), signal.SIGKILL)  # exit status: killed by signal 9 (shell: 137)


def ignore_sigterm(run: Run) -> None:
    def on_term(signum, frame):
        try:
            sys.stderr.write("fakecli: got SIGTERM, ignoring it\n")
            sys.stderr.flush()
        except OSError:
            pass

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    signal.signal(signal.SIGHUP, on_term)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    run.init()
    run.message_start()
    n = 0
    while True:
        n += 1
        try:
            run.delta(f"tick{n} ")
        except BrokenPipeError:
            # reader went away: keep ignoring and keep running, as a stubborn CLI would
            sys.stdout = open(os.devnull, "w")
            run.out = sys.stdout.buffer
        time.sleep(0.5)


def grandchild_holds_stdout(run: Run) -> None:
    run.init()
    run.message_start()
    for w in run.words():
        run.delta(w)
    # the grandchild inherits stdout and stderr and outlives us
    subprocess.Popen(["sleep", "1000"], close_fds=False)
    run.finish()


def garbage(run: Run) -> None:
    run.init()
    run.raw(b"this is not json\n")
    run.raw(b"\x00\x01\x02\xff\xfe binary junk \xc3\x28 invalid utf-8\n")
    run.raw(b'{"type":"stream_event","event":{"type":"content_block_delta"\n')  # truncated JSON
    run.raw(b"[1,2,3]\n")
    run.raw(b'"just a string"\n')
    run.raw(b'{"type":"mystery_event_from_the_future","payload":{"x":1}}\n')
    run.raw(b"\n   \n")
    run.raw(b"\r\n")
    run.message_start()
    for w in run.words():
        run.delta(w)
    run.raw(b"\x1b[31mansi colored noise\x1b[0m\n")
    run.finish()


def huge_line(run: Run) -> None:
    size = int(os.environ.get("FAKECLI_HUGE_BYTES", str(50 * 1024 * 1024)))
    run.init()
    run.message_start()
    block = b"x" * (1024 * 1024)
    left = size
    while left > 0:
        n = min(left, len(block))
        run.out.write(block[:n])
        left -= n
    run.raw(b"\n")
    for w in run.words():
        run.delta(w)
    run.finish()


def hang(run: Run) -> None:
    run.init()
    while True:
        time.sleep(3600)


def record_start(run: Run) -> None:
    """Appends one JSON line (pid, cwd, argv) to $FAKECLI_START_LOG, then behaves like ``ok``."""
    path = os.environ.get("FAKECLI_START_LOG")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({"pid": os.getpid(), "cwd": os.getcwd(), "argv": run.argv}) + "\n")
    ok(run)


def env_dump(run: Run) -> None:
    """Answers with its working folder (``FAKECLI_CWD=…``) and its whole environment, one
    ``KEY=VALUE`` line each, as the reply text."""
    lines = [f"FAKECLI_CWD={os.getcwd()}"] + [f"{k}={v}" for k, v in sorted(os.environ.items())]
    run.init()
    run.message_start()
    run.delta("\n".join(lines))
    run.finish()


def hang_with_grandchild(run: Run) -> None:
    """Starts ``sleep 1000`` in the CLI's own process group (no pipes shared), prints init, sleeps."""
    subprocess.Popen(["sleep", "1000"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL)
    run.init()
    while True:
        time.sleep(3600)


def count_overlap(run: Run) -> None:
    """Counts runs at once in $FAKECLI_OVERLAP_FILE (JSON ``{"running","max","starts"}``, updated
    under an flock), stays ``FAKECLI_DELAY_MS`` (default 300) ms, then behaves like ``ok``."""
    import fcntl

    path = os.environ["FAKECLI_OVERLAP_FILE"]

    def update(delta: int) -> None:
        with open(path + ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                with open(path) as f:
                    state = json.load(f)
            except (OSError, ValueError):
                state = {"running": 0, "max": 0, "starts": 0}
            state["running"] += delta
            if delta > 0:
                state["starts"] += 1
                state["max"] = max(state["max"], state["running"])
            tmp = f"{path}.{os.getpid()}.tmp"
            with open(tmp, "w") as f:
                json.dump(state, f)
            os.replace(tmp, path)

    update(1)
    try:
        time.sleep(float(os.environ.get("FAKECLI_DELAY_MS", "300")) / 1000)
    finally:
        update(-1)
    ok(run)


BEHAVIOURS = {
    "ok": ok,
    "slow-ok": slow_ok,
    "crash-midstream": crash_midstream,
    "ignore-sigterm": ignore_sigterm,
    "grandchild-holds-stdout": grandchild_holds_stdout,
    "garbage": garbage,
    "huge-line": huge_line,
    "hang": hang,
    "record-start": record_start,
    "env-dump": env_dump,
    "hang-with-grandchild": hang_with_grandchild,
    "count-overlap": count_overlap,
}


def main(behaviour: str) -> None:
    argv = sys.argv[1:]
    if "--version" in argv or "-v" in argv:
        print(VERSION_TEXT)
        sys.exit(0)
    if "--help" in argv or "-h" in argv:
        print(f"fakecli ({behaviour}): fault-injection stand-in for claude stream-json output")
        sys.exit(0)
    # Die of SIGPIPE like a real CLI when the reader goes away (ignore-sigterm
    # overrides this to keep running).
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    # A silent start (like a CLI loading for a long time) before any behaviour.
    start_delay = float(os.environ.get("FAKECLI_START_DELAY_MS", "0")) / 1000
    if start_delay > 0:
        time.sleep(start_delay)
    BEHAVIOURS[behaviour](Run(argv))
