#!/usr/bin/env python3
"""Fake model server for clinvk's tests (standard library only).

Speaks the three wire protocols that the real CLIs use once their model API is
redirected to loopback:

* Anthropic Messages  ``POST /v1/messages[?beta=true]``  (claude), plus
  ``POST /v1/messages/count_tokens`` and ``GET /v1/models``
* OpenAI Responses    ``POST /v1/responses``             (codex), plus ``GET /v1/models``
* Gemini              ``POST /v1beta/models/{M}:streamGenerateContent?alt=sse``,
  ``:generateContent``, ``:countTokens``                  (gemini)

The reply text is derived from the request (see README.md beside this file):

    fake-reply turns=<N> last=<last user words, first 60 chars>[ sys=<…>][ w1 … wN]

and is streamed word by word.  Test control endpoints live under ``/_fake/``.

Usage: ``python3 server.py --port 0 --port-file PATH`` writes the chosen port to
PATH (atomically) once listening and serves until killed.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import select
import signal
import socket
import sys
import threading
import time
import uuid
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

# Context the CLIs inject into user messages; removed before counting turns and
# extracting the user's last words.
INJECTED_BLOCK_RE = re.compile(
    r"<(system-reminder|environment_context|session_context|user_instructions|"
    r"turn_aborted|user_shell_command|INSTRUCTIONS|permissions instructions|current_datetime)\b[^>]*>"
    r".*?</\1>",
    re.S,
)
# Whole user items that are injected context rather than something the user typed.
INJECTED_PREFIXES = ("# AGENTS.md instructions", "<environment_context", "<user_instructions")
# codex compacts the history (e.g. when resuming with another model) by sending this
# prompt, then carries the summary on as a user item with the second prefix.
CODEX_COMPACT_PROMPT = "You are performing a CONTEXT CHECKPOINT COMPACTION"
CODEX_SUMMARY_PREFIX = "Another language model started to solve this problem"
# opencode names a new session by a second model call with this system prompt (its user text is
# "Generate a title for this conversation: …"), not a turn of the user's.
OPENCODE_TITLE_SYSTEM = "You are a title generator"

MAGIC_RE = re.compile(r"\[\[(slow|slowstart|error|error5xx|hang|long|gate|think)(?::(\d+))?\]\]")
# `[[call:NAME]]` or `[[call:NAME={"a":1}]]` in the last user text: the model calls the offered
# tool whose name is NAME (or ends with `__NAME` / `.NAME`, as CLIs prefix MCP tools), once per
# directive (several: parallel calls); once the results are back, it answers with them.
CALL_RE = re.compile(r"\[\[call:([A-Za-z0-9_-]+)(?:=(\{[^\]]*\}))?\]\]")
SYSTEM_MARKER = "SYSMARK"
DEFAULT_DELAY_MS = 400
MODES = ("normal", "slow", "slowstart", "error", "error5xx", "hang")
# Subscription-limit signals (POST /_fake/limits): none, a window nearly spent, a window spent.
LIMIT_MODES = ("none", "warning", "rejected")
DEFAULT_RESET_IN = 3600
SEVEN_DAYS_S = 7 * 24 * 3600


def limit_signals(protocol: str, limits: dict, model: str | None = None):
    """The quota signals a conversation call carries under ``limits`` (the /_fake/limits
    setting): (headers, error). ``error`` is None, or (HTTP status, JSON body) to answer
    instead of the model's reply. The windows reset at fixed times (set when the mode was)."""
    mode = limits["mode"]
    if mode == "none":
        return {}, None
    reset = limits["reset_at"]
    reset_in = max(0, reset - int(time.time()))
    week_reset = limits["set_at"] + SEVEN_DAYS_S - 3600  # well after the 5-hour window
    rejected = mode == "rejected"
    if protocol == "anthropic":
        pre = "anthropic-ratelimit-unified-"
        h = {pre + "status": "rejected" if rejected else "allowed_warning",
             pre + "reset": str(reset),
             pre + "representative-claim": "five_hour",
             pre + "5h-utilization": "1.0" if rejected else "0.91",
             pre + "5h-status": "rejected" if rejected else "allowed_warning",
             pre + "5h-reset": str(reset),
             pre + "7d-utilization": "0.42",
             pre + "7d-status": "allowed",
             pre + "7d-reset": str(week_reset)}
        if not rejected:
            h[pre + "5h-surpassed-threshold"] = "0.9"
            return h, None
        h["retry-after"] = str(reset_in)
        return h, (429, {"type": "error", "error": {
            "type": "rate_limit_error",
            "message": "fakemodel: injected limit: This request would exceed your account's "
                       "rate limit. Please try again later."}})
    if protocol == "responses":
        h = {"x-codex-primary-used-percent": "100" if rejected else "91",
             "x-codex-primary-window-minutes": "300",
             "x-codex-primary-reset-at": str(reset),
             "x-codex-secondary-used-percent": "42",
             "x-codex-secondary-window-minutes": "10080",
             "x-codex-secondary-reset-at": str(week_reset)}
        if not rejected:
            return h, None
        return h, (429, {"error": {
            "type": "usage_limit_reached",
            "message": "fakemodel: injected limit: The usage limit has been reached",
            "plan_type": "plus", "resets_at": reset, "resets_in_seconds": reset_in}})
    # Gemini has no warning signal; a spent quota is a 429 RESOURCE_EXHAUSTED with the
    # google.rpc details gemini-cli classifies (a per-day quota id or a retry delay over 300 s
    # makes it a terminal quota error, shorter ones are retried).
    if not rejected:
        return {}, None
    per = "PerDay" if limits["reset_in"] > 300 else "PerMinute"
    metric = "generativelanguage.googleapis.com/generate_content_free_tier_requests"
    return {}, (429, {"error": {
        "code": 429, "status": "RESOURCE_EXHAUSTED",
        "message": ("fakemodel: injected limit: You exceeded your current quota, please check "
                    "your plan and billing details.\n* Quota exceeded for metric: "
                    f"{metric}, limit: 250, model: {model}\nPlease retry in {reset_in}s."),
        "details": [
            {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [
                {"quotaMetric": metric,
                 "quotaId": f"GenerateRequests{per}PerProjectPerModel-FreeTier",
                 "quotaDimensions": {"location": "global", "model": model or "unknown"},
                 "quotaValue": "250"}]},
            {"@type": "type.googleapis.com/google.rpc.Help", "links": [
                {"description": "Learn more about Gemini API quotas",
                 "url": "https://ai.google.dev/gemini-api/docs/rate-limits"}]},
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": f"{reset_in}s"},
        ]}})


def _clean(text: str) -> str:
    return INJECTED_BLOCK_RE.sub("", text).strip()


def _squash(text: str) -> str:
    return " ".join(text.split())


# --------------------------------------------------------------------------
# Request analysis, one function per protocol.  Each returns a dict with
# raw_user_texts (the text of every user message as received), user_texts (the
# cleaned text of each real user turn) and system (the system prompt text).


def _anthropic_text(content) -> tuple[str, bool]:
    """Text of a message's content and whether it had any non-tool text."""
    if isinstance(content, str):
        return content, True
    parts = []
    for block in content or []:
        if isinstance(block, dict) and block.get("type") == "text":
            parts.append(block.get("text", ""))
    return "\n".join(parts), bool(parts)


def analyze_anthropic(body: dict) -> dict:
    raw, turns = [], []
    for msg in body.get("messages") or []:
        if msg.get("role") != "user":
            continue
        text, has_text = _anthropic_text(msg.get("content"))
        if not has_text:
            continue  # tool results only
        raw.append(text)
        cleaned = _clean(text)
        if cleaned:
            turns.append(cleaned)
    system = body.get("system")
    if isinstance(system, list):
        system = "\n".join(b.get("text", "") for b in system if isinstance(b, dict))
    utility = "title" if (system or "").lstrip().startswith(OPENCODE_TITLE_SYSTEM) else None
    return {"raw_user_texts": raw, "user_texts": turns, "system": system or "", "utility": utility}


def _responses_text(content) -> str:
    if isinstance(content, str):
        return content
    parts = []
    for part in content or []:
        if isinstance(part, dict) and part.get("type") in ("input_text", "text", "output_text"):
            parts.append(part.get("text", ""))
    return "\n".join(parts)


def analyze_responses(body: dict) -> dict:
    raw, turns, system = [], [], [body.get("instructions") or ""]
    items = body.get("input")
    if isinstance(items, str):
        items = [{"type": "message", "role": "user", "content": items}]
    for item in items or []:
        if not isinstance(item, dict) or item.get("type", "message") != "message":
            continue
        role = item.get("role")
        text = _responses_text(item.get("content"))
        if role in ("system", "developer"):
            system.append(text)
        elif role == "user":
            raw.append(text)
            if text.lstrip().startswith(INJECTED_PREFIXES + (CODEX_COMPACT_PROMPT, CODEX_SUMMARY_PREFIX)):
                continue
            cleaned = _clean(text)
            if cleaned:
                turns.append(cleaned)
    utility = "compaction" if raw and raw[-1].lstrip().startswith(CODEX_COMPACT_PROMPT) else None
    return {"raw_user_texts": raw, "user_texts": turns, "system": "\n".join(s for s in system if s),
            "utility": utility}


def _gemini_parts_text(parts) -> tuple[str, bool]:
    texts = [p.get("text", "") for p in parts or [] if isinstance(p, dict) and "text" in p]
    return "\n".join(texts), bool(texts)


def analyze_gemini(body: dict) -> dict:
    raw, turns = [], []
    for content in body.get("contents") or []:
        if content.get("role", "user") != "user":
            continue
        text, has_text = _gemini_parts_text(content.get("parts"))
        if not has_text:
            continue  # function responses only
        raw.append(text)
        cleaned = _clean(text)
        if cleaned:
            turns.append(cleaned)
    si = body.get("systemInstruction") or body.get("system_instruction") or ""
    if isinstance(si, dict):
        si = _gemini_parts_text(si.get("parts"))[0]
    elif isinstance(si, list):
        si = "\n".join(_gemini_parts_text(c.get("parts"))[0] if isinstance(c, dict) else str(c) for c in si)
    return {"raw_user_texts": raw, "user_texts": turns, "system": si or ""}


def offered_tools(protocol: str, req: dict) -> list[tuple[str, dict]]:
    """The function tools a request offers: (name, parameter schema)."""
    out = []
    for t in req.get("tools") or []:
        if not isinstance(t, dict):
            continue
        if protocol == "anthropic" and "name" in t:
            out.append((t["name"], t.get("input_schema") or {}))
        elif protocol == "responses" and t.get("type") == "function":
            out.append((t.get("name", ""), t.get("parameters") or {}))
        elif protocol == "gemini":
            for f in t.get("functionDeclarations") or t.get("function_declarations") or []:
                out.append((f.get("name", ""),
                            f.get("parametersJsonSchema") or f.get("parameters") or {}))
    return out


def _tool_named(tools, short):
    for name, schema in tools:
        if name == short or name.endswith("__" + short) or name.endswith("." + short) or (
                "clinvk" in name and (name.endswith("_" + short) or name.endswith("-" + short))):
            return name, schema
    return None


def tool_results(protocol: str, req: dict) -> list[str] | None:
    """The tool results that end the conversation (None: it ends with a user's text)."""
    if protocol == "anthropic":
        msgs = req.get("messages") or []
        last = msgs[-1] if msgs else {}
        content = last.get("content")
        if last.get("role") != "user" or not isinstance(content, list):
            return None
        res = []
        for b in content:
            if isinstance(b, dict) and b.get("type") == "tool_result":
                c = b.get("content")
                if isinstance(c, list):
                    c = "".join(x.get("text", "") for x in c if isinstance(x, dict))
                res.append(str(c))
        return res or None
    if protocol == "responses":
        items = req.get("input")
        if not isinstance(items, list):
            return None
        res = []
        for item in reversed(items):
            if not isinstance(item, dict) or item.get("type") not in (
                    "function_call_output", "custom_tool_call_output"):
                break
            out = item.get("output")
            if isinstance(out, list):
                out = "".join(x.get("text", "") for x in out if isinstance(x, dict))
            res.insert(0, str(out))
        return res or None
    contents = req.get("contents") or []
    last = contents[-1] if contents else {}
    res = [json.dumps(p["functionResponse"].get("response"), sort_keys=True)
           for p in last.get("parts") or [] if isinstance(p, dict) and "functionResponse" in p]
    return res or None


def codex_code_mode(req: dict) -> bool:
    """codex 0.169 offers MCP tools only inside its JavaScript `exec` tool (`tools.mcp__…`)."""
    for item in req.get("input") or []:
        if isinstance(item, dict) and item.get("type") == "additional_tools":
            for ns in item.get("tools") or []:
                if any(t.get("name") == "exec" and t.get("type") == "custom"
                       for t in ns.get("tools") or []):
                    return True
    return False


def wanted_calls(protocol: str, req: dict, last_raw: str) -> list[dict]:
    """The tool calls the last user text asks for, among the offered tools (codex: through its
    `exec` tool, as `mcp__clinvk__NAME`)."""
    tools = offered_tools(protocol, req)
    code_mode = protocol == "responses" and codex_code_mode(req)
    calls = []
    for short, args in CALL_RE.findall(last_raw):
        found = _tool_named(tools, short)
        if found is None and code_mode:
            found = ("mcp__clinvk__" + short, {"type": "object"})
            calls.append({"name": found[0], "input": json.loads(args) if args else {},
                          "via_exec": True})
            continue
        if found is None:
            continue
        name, schema = found
        calls.append({"name": name,
                      "input": json.loads(args) if args else _fill_schema(schema or {"type": "object"})})
    return calls


def reply_text(info: dict, long_words: int = 0) -> str:
    turns = info["user_texts"]
    last = _squash(turns[-1])[:60] if turns else ""
    text = f"fake-reply turns={len(turns)} last={last}".rstrip()
    for line in info["system"].splitlines():
        if SYSTEM_MARKER in line:
            text += " sys=" + line.strip()[:30]
            break
    if long_words > 0:
        text += " " + " ".join(f"w{i}" for i in range(1, long_words + 1))
    return text


def split_deltas(text: str) -> list[str]:
    """Word-by-word deltas whose concatenation is exactly ``text``."""
    pieces = re.findall(r"\S+\s*", text)
    if not pieces:
        return [text]
    lead = text[: len(text) - len(text.lstrip())]
    pieces[0] = lead + pieces[0]
    return pieces


def _fill_schema(schema: dict, name: str = "", root: dict | None = None) -> object:
    """A small value that satisfies a JSON schema (gemini's utility calls, and structured-output
    requests: $ref into $defs/definitions, anyOf/oneOf, const and enum are followed)."""
    if not isinstance(schema, dict):
        return "fake"
    root = root if root is not None else schema
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/"):
        target = root
        for part in ref[2:].split("/"):
            target = target.get(part, {}) if isinstance(target, dict) else {}
        return _fill_schema(target, name, root)
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for key in ("anyOf", "oneOf"):
        options = [o for o in schema.get(key) or [] if isinstance(o, dict) and o.get("type") != "null"]
        if options:
            return _fill_schema(options[0], name, root)
    typ = schema.get("type", "string")
    if isinstance(typ, list):
        typ = next((t for t in typ if t != "null"), "string")
    typ = str(typ).lower()
    if typ == "object":
        props = schema.get("properties") or {}
        keys = schema.get("required") or list(props)
        return {k: _fill_schema(props.get(k, {}), k, root) for k in keys}
    if typ == "array":
        n = int(schema.get("minItems") or 0)
        return [_fill_schema(schema.get("items") or {}, name, root) for _ in range(n)]
    if typ in ("integer", "number"):
        if "confidence" in name:
            return 0
        return schema.get("minimum", 1)
    if typ == "boolean":
        return False
    return "fake " + (name or "value")


# The instruction clinvk puts in front of a prompt when a CLI has no structured-output option
# (gemini): the fake model then answers JSON filling the schema, as a model following it would.
SCHEMA_INSTRUCTION_RE = re.compile(r"matches this JSON Schema[^\n]*\n(\{.*\})\s*$", re.S)
STRUCTURED_TOOL = "StructuredOutput"  # claude --json-schema: the model must call this tool


def requested_schema(protocol: str, req: dict, last_raw: str):
    """The JSON schema a request asks the answer to match, if any."""
    if protocol == "responses":
        fmt = (req.get("text") or {}).get("format") or {}
        if fmt.get("type") == "json_schema":
            return fmt.get("schema") or {"type": "object"}
    m = SCHEMA_INSTRUCTION_RE.search(last_raw or "")
    if m:
        try:
            return json.loads(m.group(1))
        except ValueError:
            return None
    return None


def count_images(protocol: str, req: dict) -> int:
    """Image parts in the request's user turns (Anthropic `image` blocks, Responses
    `input_image` parts, Gemini `inlineData` parts)."""
    n = 0
    if protocol == "anthropic":
        for m in req.get("messages") or []:
            if m.get("role") == "user" and isinstance(m.get("content"), list):
                n += sum(1 for b in m["content"] if isinstance(b, dict) and b.get("type") == "image")
    elif protocol == "responses":
        items = req.get("input")
        for item in items if isinstance(items, list) else []:
            if isinstance(item, dict) and isinstance(item.get("content"), list):
                n += sum(1 for p in item["content"]
                         if isinstance(p, dict) and p.get("type") == "input_image")
    else:
        for c in req.get("contents") or []:
            n += sum(1 for p in c.get("parts") or []
                     if isinstance(p, dict) and ("inlineData" in p or "inline_data" in p))
    return n


def structured_tool(req: dict):
    """claude's StructuredOutput tool, when the model has not called it yet this turn."""
    tool = next((t for t in req.get("tools") or [] if t.get("name") == STRUCTURED_TOOL), None)
    if tool is None:
        return None
    messages = req.get("messages") or []
    last = messages[-1] if messages else {}
    content = last.get("content") if isinstance(last, dict) else None
    if isinstance(content, list) and any(isinstance(b, dict) and b.get("type") == "tool_result"
                                         for b in content):
        return None  # it was called: now the closing text
    return tool


# --------------------------------------------------------------------------


def limits_setting(mode: str, reset_in: int) -> dict:
    now = int(time.time())
    return {"mode": mode, "reset_in": reset_in, "reset_at": now + reset_in, "set_at": now}


class State:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: list[dict] = []
        self.others: list[dict] = []
        self.scenario = {"mode": "normal", "delay_ms": DEFAULT_DELAY_MS}
        self.limits = limits_setting("none", DEFAULT_RESET_IN)
        self.stopping = threading.Event()
        # [[gate]] answers stop after their first piece until POST /_fake/release.
        self.gate = threading.Event()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "fakemodel/1"
    state: State  # set on the class by main()

    # -- plumbing ----------------------------------------------------------

    def log_message(self, fmt, *args):  # noqa: D401 - quiet unless asked
        if self.server.verbose:  # type: ignore[attr-defined]
            sys.stderr.write("fakemodel: " + (fmt % args) + "\n")

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            data = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                data += self.rfile.read(size)
                self.rfile.readline()
        else:
            data = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        enc = (self.headers.get("Content-Encoding") or "").lower()
        if enc == "gzip":
            data = gzip.decompress(data)
        elif enc == "deflate":
            data = zlib.decompress(data)
        return data

    def _send_json(self, status: int, obj, extra_headers=None) -> None:
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("request-id", "req_fake_" + uuid.uuid4().hex[:12])
        for k, v in dict(getattr(self, "_limit_headers", {}), **(extra_headers or {})).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()

    def _start_stream(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("request-id", "req_fake_" + uuid.uuid4().hex[:12])
        for k, v in getattr(self, "_limit_headers", {}).items():
            self.send_header(k, v)
        self.end_headers()

    def _chunk(self, data: str) -> None:
        raw = data.encode()
        self.wfile.write(b"%x\r\n%s\r\n" % (len(raw), raw))
        self.wfile.flush()

    def _end_stream(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _hold(self) -> None:
        """Keep the connection open, answering nothing, until the client leaves."""
        self.close_connection = True
        sock = self.connection
        while not self.state.stopping.is_set():
            ready, _, _ = select.select([sock], [], [], 0.5)
            if ready:
                try:
                    if not sock.recv(1, socket.MSG_PEEK):
                        return
                except OSError:
                    return
                time.sleep(0.5)

    def _record_other(self, method: str, body: bytes) -> None:
        with self.state.lock:
            self.state.others.append(
                {"method": method, "path": self.path, "time": time.time(),
                 "headers": dict(self.headers.items()), "body_bytes": len(body)}
            )

    # -- dispatch ------------------------------------------------------------

    def do_GET(self):
        self._dispatch("GET")

    def do_POST(self):
        self._dispatch("POST")

    def do_HEAD(self):
        self._dispatch("HEAD")

    def do_PUT(self):
        self._dispatch("PUT")

    def do_DELETE(self):
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        self._limit_headers = {}  # set per conversation call under /_fake/limits
        try:
            body = self._read_body() if method in ("POST", "PUT") else b""
            url = urlsplit(self.path)
            path = url.path
            query = parse_qs(url.query)
            if path.startswith("/_fake/"):
                return self._control(method, path, body)
            if method == "POST" and path in ("/v1/messages", "/messages"):
                return self._model_call("anthropic", path, query, body)
            if method == "POST" and path in ("/v1/responses", "/responses"):
                return self._model_call("responses", path, query, body)
            m = re.fullmatch(r"/(v1beta|v1|v1alpha)/models/([^/:]+):(\w+)", path)
            if method == "POST" and m:
                if m.group(3) in ("streamGenerateContent", "generateContent"):
                    return self._model_call("gemini", path, query, body, gemini_model=m.group(2),
                                            gemini_stream=m.group(3) == "streamGenerateContent")
                self._record_other(method, body)
                if m.group(3) == "countTokens":
                    return self._send_json(200, {"totalTokens": max(1, len(body) // 4)})
                if m.group(3) == "embedContent":
                    return self._send_json(200, {"embedding": {"values": [0.0] * 8}})
                if m.group(3) == "batchEmbedContents":
                    n = len((json.loads(body or b"{}")).get("requests") or [])
                    return self._send_json(200, {"embeddings": [{"values": [0.0] * 8}] * n})
            self._record_other(method, body)
            if method == "POST" and path in ("/v1/messages/count_tokens", "/messages/count_tokens"):
                return self._send_json(200, {"input_tokens": max(1, len(body) // 4)})
            if method == "GET" and path in ("/v1/models", "/models"):
                return self._send_json(200, {
                    "object": "list",
                    "data": [{"id": "fake-model", "object": "model", "type": "model",
                              "created": 0, "created_at": "2025-01-01T00:00:00Z",
                              "display_name": "Fake Model", "owned_by": "fakemodel"}],
                    "models": [],
                    "has_more": False, "first_id": "fake-model", "last_id": "fake-model",
                })
            if method == "HEAD" or path == "/":
                return self._send_json(200, {"ok": True})
            self._send_json(404, {"error": {"type": "not_found_error", "code": 404,
                                            "message": f"fakemodel: no route for {method} {path}"},
                                  "type": "error"})
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _control(self, method: str, path: str, body: bytes) -> None:
        st = self.state
        if path == "/_fake/requests" and method == "GET":
            with st.lock:
                return self._send_json(200, list(st.requests))
        if path == "/_fake/other" and method == "GET":
            with st.lock:
                return self._send_json(200, list(st.others))
        if path == "/_fake/reset" and method == "POST":
            with st.lock:
                st.requests.clear()
                st.others.clear()
                st.scenario = {"mode": "normal", "delay_ms": DEFAULT_DELAY_MS}
                st.limits = limits_setting("none", DEFAULT_RESET_IN)
                st.gate.clear()
            return self._send_json(200, {"ok": True})
        if path == "/_fake/release" and method == "POST":
            st.gate.set()
            return self._send_json(200, {"ok": True})
        if path == "/_fake/scenario":
            if method == "POST":
                try:
                    obj = json.loads(body or b"{}")
                except ValueError:
                    return self._send_json(400, {"error": "body must be JSON"})
                mode = obj.get("mode", "normal")
                if mode not in MODES:
                    return self._send_json(400, {"error": f"mode must be one of {MODES}"})
                with st.lock:
                    st.scenario = {"mode": mode,
                                   "delay_ms": int(obj.get("delay_ms", DEFAULT_DELAY_MS))}
            with st.lock:
                return self._send_json(200, dict(st.scenario))
        if path == "/_fake/limits":
            if method == "POST":
                try:
                    obj = json.loads(body or b"{}")
                    reset_in = int(obj.get("reset_in", DEFAULT_RESET_IN))
                except (ValueError, TypeError):
                    return self._send_json(400, {"error": "body must be JSON, reset_in an integer"})
                mode = obj.get("mode", "none")
                if mode not in LIMIT_MODES or reset_in < 0:
                    return self._send_json(400, {"error": f"mode must be one of {LIMIT_MODES}, "
                                                          "reset_in >= 0"})
                with st.lock:
                    st.limits = limits_setting(mode, reset_in)
            with st.lock:
                return self._send_json(200, dict(st.limits))
        if path == "/_fake/health":
            return self._send_json(200, {"ok": True, "pid": os.getpid()})
        self._send_json(404, {"error": f"unknown control path {path}"})

    # -- model calls -------------------------------------------------------

    def _model_call(self, protocol, path, query, body, gemini_model=None, gemini_stream=False):
        try:
            req = json.loads(body or b"{}")
        except ValueError:
            return self._error(protocol, 400, "request body is not JSON")
        if protocol == "anthropic":
            info = analyze_anthropic(req)
            model, stream = req.get("model"), bool(req.get("stream"))
        elif protocol == "responses":
            info = analyze_responses(req)
            model, stream = req.get("model"), req.get("stream", False) is not False
        else:
            info = analyze_gemini(req)
            model, stream = gemini_model, gemini_stream

        utility = info.get("utility")
        routing = False
        schema = None
        if protocol == "gemini":
            gc = req.get("generationConfig") or {}
            schema = gc.get("responseJsonSchema") or gc.get("responseSchema")
            if schema or gc.get("responseMimeType") == "application/json":
                props = (schema or {}).get("properties") or {}
                routing = "model_choice" in props or "complexity_score" in props
                utility = "routing" if routing else ",".join(sorted(props)) or "json"

        with self.state.lock:
            scenario = dict(self.state.scenario)
            limits = dict(self.state.limits)
        last_raw = info["user_texts"][-1] if info["user_texts"] else ""
        magic = {name: (int(arg) if arg else None) for name, arg in MAGIC_RE.findall(last_raw)}
        mode = scenario["mode"]
        delay = scenario["delay_ms"] / 1000.0
        for name in ("hang", "error", "error5xx", "slowstart", "slow"):
            if name in magic:
                mode = name
                if magic[name] is not None:
                    delay = magic[name] / 1000.0
                break
        long_words = magic.get("long") or 0
        if utility:
            mode, long_words = "normal", 0  # helper calls always answer at once
            limits["mode"] = "none"

        entry = {
            "protocol": protocol, "path": self.path, "model": model, "stream": stream,
            "turns": len(info["user_texts"]),
            "last_user": _squash(last_raw),
            "system_has_marker": SYSTEM_MARKER in info["system"],
            "raw_user_texts": info["raw_user_texts"],
            "user_texts": info["user_texts"],
            "routing": routing, "utility": utility,
            "images": count_images(protocol, req),
            "mode": mode, "limits": limits["mode"], "time": time.time(),
            "headers": dict(self.headers.items()),
            "body": req,
        }
        with self.state.lock:
            self.state.requests.append(entry)

        self._limit_headers, limit_error = limit_signals(protocol, limits, model)
        if limit_error:  # a spent window answers every conversation call, whatever the scenario
            self.close_connection = True
            return self._send_json(limit_error[0], limit_error[1], {"Connection": "close"})
        if mode == "slowstart":
            time.sleep(delay)
        if mode == "hang":
            return self._hold()
        if mode == "error":
            return self._error(protocol, 400, "fakemodel: injected error [[error]]")
        if mode == "error5xx":
            return self._error(protocol, 500, "fakemodel: injected server error [[error5xx]]")

        tool_call = None
        results = None if utility else tool_results(protocol, req)
        calls = [] if utility or results else wanted_calls(protocol, req, last_raw)
        entry["offered_tools"] = [n for n, _ in offered_tools(protocol, req)]
        entry["tool_results"] = results or []
        entry["tool_calls"] = [c["name"] for c in calls]
        if calls:
            in_tokens = max(1, len(body) // 4)
            if protocol == "anthropic":
                return self._anthropic_calls(model, stream, calls, in_tokens)
            if protocol == "responses":
                return self._responses_calls(model, stream, calls, in_tokens)
            return self._gemini_calls(model, stream, calls, in_tokens)
        if utility == "title":
            text = "Fake title"
        elif utility:
            text = json.dumps(_fill_schema(schema or {"type": "object"}))
        elif protocol == "anthropic" and structured_tool(req):
            tool = structured_tool(req)
            tool_call = {"name": tool["name"],
                         "input": _fill_schema(tool.get("input_schema") or {"type": "object"})}
            text = json.dumps(tool_call["input"])
            entry["structured"] = True
        elif requested_schema(protocol, req, last_raw) is not None:
            text = json.dumps(_fill_schema(requested_schema(protocol, req, last_raw)))
            entry["structured"] = True
        else:
            text = reply_text(info, long_words)
            if results:
                text += " tool-results=" + "|".join(_squash(r)[:400] for r in results)
        deltas = split_deltas(text)
        # `[[think]]`: the answer opens with the model's reasoning (a thinking block, a reasoning
        # summary item, a thought part), in the protocol's own shape.
        self._thought = None
        if "think" in magic and not utility:
            self._thought = "fake-thought about " + _squash(last_raw)[:200]
            entry["thought"] = self._thought
        gap = delay if mode == "slow" else 0.0
        self._gated = "gate" in magic and not utility
        in_tokens = max(1, len(body) // 4)
        if protocol == "anthropic" and tool_call:
            return self._anthropic_calls(model, stream, [tool_call], in_tokens)
        if protocol == "anthropic":
            return self._anthropic(req, model, stream, text, deltas, gap, in_tokens)
        if protocol == "responses":
            return self._responses(req, model, stream, text, deltas, gap, in_tokens)
        return self._gemini(model, stream, text, deltas, gap, in_tokens)

    def _between(self, i: int, gap: float) -> None:
        """Before the i-th streamed piece: the gate after the first one, else the pace."""
        if i == 1 and getattr(self, "_gated", False):
            self.state.gate.wait(60)
        elif gap and i:
            time.sleep(gap)

    def _error(self, protocol: str, status: int, message: str) -> None:
        if protocol == "anthropic":
            typ = "invalid_request_error" if status < 500 else "api_error"
            obj = {"type": "error", "error": {"type": typ, "message": message}}
        elif protocol == "responses":
            typ = "invalid_request_error" if status < 500 else "server_error"
            obj = {"error": {"message": message, "type": typ, "param": None,
                             "code": "invalid_request" if status < 500 else "server_error"}}
        else:
            obj = {"error": {"code": status, "message": message,
                             "status": "INVALID_ARGUMENT" if status < 500 else "INTERNAL"}}
        self.close_connection = True
        self._send_json(status, obj, {"Connection": "close"})

    # Anthropic Messages ---------------------------------------------------

    def _anthropic(self, req, model, stream, text, deltas, gap, in_tokens):
        thought = getattr(self, "_thought", None)
        first = 1 if thought else 0
        signature = "fakesig" + uuid.uuid4().hex[:16]

        def text_block(ev):
            if thought:
                ev("content_block_start", {"type": "content_block_start", "index": 0,
                                           "content_block": {"type": "thinking", "thinking": "",
                                                             "signature": ""}})
                for d in split_deltas(thought):
                    ev("content_block_delta", {"type": "content_block_delta", "index": 0,
                                               "delta": {"type": "thinking_delta", "thinking": d}})
                ev("content_block_delta", {"type": "content_block_delta", "index": 0,
                                           "delta": {"type": "signature_delta",
                                                     "signature": signature}})
                ev("content_block_stop", {"type": "content_block_stop", "index": 0})
            ev("content_block_start", {"type": "content_block_start", "index": first,
                                       "content_block": {"type": "text", "text": ""}})
            ev("ping", {"type": "ping"})
            for i, d in enumerate(deltas):
                self._between(i, gap)
                ev("content_block_delta", {"type": "content_block_delta", "index": first,
                                           "delta": {"type": "text_delta", "text": d}})
            ev("content_block_stop", {"type": "content_block_stop", "index": first})

        content = [{"type": "text", "text": text}]
        if thought:
            content.insert(0, {"type": "thinking", "thinking": thought, "signature": signature})
        self._anthropic_message(model, stream, in_tokens, len(deltas), "end_turn",
                                content, text_block)

    def _anthropic_calls(self, model, stream, calls, in_tokens):
        """One message of tool_use blocks (several: parallel calls)."""
        blocks = [{"type": "tool_use", "id": "toolu_fake_" + uuid.uuid4().hex[:16],
                   "name": c["name"], "input": c["input"]} for c in calls]

        def tool_blocks(ev):
            for i, b in enumerate(blocks):
                ev("content_block_start", {"type": "content_block_start", "index": i,
                                           "content_block": dict(b, input={})})
                ev("content_block_delta", {"type": "content_block_delta", "index": i,
                                           "delta": {"type": "input_json_delta",
                                                     "partial_json": json.dumps(b["input"])}})
                ev("content_block_stop", {"type": "content_block_stop", "index": i})

        self._anthropic_message(model, stream, in_tokens, 5 * len(calls), "tool_use", blocks,
                                tool_blocks)

    def _responses_stream(self, response):
        """Starts a Responses SSE stream (`response.created`, `response.in_progress`) and
        returns its event writer (typed events with sequence numbers)."""
        seq = [0]

        def ev(name, obj):
            obj = dict({"type": name, "sequence_number": seq[0]}, **obj)
            seq[0] += 1
            self._chunk(f"event: {name}\ndata: {json.dumps(obj)}\n\n")

        self._start_stream()
        ev("response.created", {"response": response("in_progress", [], False)})
        ev("response.in_progress", {"response": response("in_progress", [], False)})
        return ev

    def _responses_calls(self, model, stream, calls, in_tokens):
        """A response whose output is function_call items (codex's code mode: one `exec` call
        whose JavaScript calls the MCP tools at once)."""
        resp_id = "resp_fake_" + uuid.uuid4().hex[:20]
        if calls and calls[0].get("via_exec"):
            js = ("const r = await Promise.all([" + ", ".join(
                f"tools.{c['name']}({json.dumps(c['input'])})" for c in calls) + "]);\n"
                "text(JSON.stringify(r));")
            items = [{"type": "custom_tool_call", "id": "ctc_fake_" + uuid.uuid4().hex[:16],
                      "call_id": "call_fake_" + uuid.uuid4().hex[:16], "name": "exec",
                      "input": js, "status": "completed"}]
        else:
            items = [{"type": "function_call", "id": "fc_fake_" + uuid.uuid4().hex[:16],
                      "call_id": "call_fake_" + uuid.uuid4().hex[:16], "name": c["name"],
                      "arguments": json.dumps(c["input"]), "status": "completed"}
                     for c in calls]
        usage = {"input_tokens": in_tokens, "input_tokens_details": {"cached_tokens": 0},
                 "output_tokens": 5 * len(calls), "output_tokens_details": {"reasoning_tokens": 0},
                 "total_tokens": in_tokens + 5 * len(calls)}

        def response(status, output, with_usage):
            return {"id": resp_id, "object": "response", "created_at": int(time.time()),
                    "status": status, "model": model, "output": output, "error": None,
                    "incomplete_details": None, "instructions": None,
                    "parallel_tool_calls": True, "tool_choice": "auto", "tools": [],
                    "usage": usage if with_usage else None}

        if not stream:
            return self._send_json(200, response("completed", items, True))
        ev = self._responses_stream(response)
        for i, item in enumerate(items):
            field, kind = (("input", "custom_tool_call_input") if item["type"] == "custom_tool_call"
                           else ("arguments", "function_call_arguments"))
            ev("response.output_item.added", {"output_index": i,
                                              "item": dict(item, status="in_progress", **{field: ""})})
            ev(f"response.{kind}.delta", {"item_id": item["id"], "output_index": i,
                                          "delta": item[field]})
            ev(f"response.{kind}.done", {"item_id": item["id"], "output_index": i,
                                         field: item[field]})
            ev("response.output_item.done", {"output_index": i, "item": item})
        ev("response.completed", {"response": response("completed", items, True)})
        self._end_stream()

    def _gemini_calls(self, model, stream, calls, in_tokens):
        """A candidate whose parts are functionCall parts."""
        parts = [{"functionCall": {"name": c["name"], "args": c["input"]}} for c in calls]
        body = {"candidates": [{"content": {"parts": parts, "role": "model"}, "index": 0,
                                "finishReason": "STOP"}],
                "usageMetadata": {"promptTokenCount": in_tokens,
                                  "candidatesTokenCount": 5 * len(calls),
                                  "totalTokenCount": in_tokens + 5 * len(calls)},
                "modelVersion": model, "responseId": "fake-" + uuid.uuid4().hex[:16]}
        if not stream:
            return self._send_json(200, body)
        self._start_stream()
        self._chunk("data: " + json.dumps(body) + "\r\n\r\n")
        self._end_stream()

    def _anthropic_message(self, model, stream, in_tokens, out_tokens, stop_reason, content,
                           stream_blocks):
        """One Anthropic message holding ``content`` (blocks): JSON, or the SSE sequence around
        ``stream_blocks(ev)`` (which sends each block's start, deltas and stop)."""
        msg_id = "msg_fake_" + uuid.uuid4().hex[:20]
        usage = {"input_tokens": in_tokens, "output_tokens": out_tokens,
                 "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}
        if not stream:
            return self._send_json(200, {
                "id": msg_id, "type": "message", "role": "assistant", "model": model,
                "content": content, "stop_reason": stop_reason, "stop_sequence": None,
                "usage": usage})

        def ev(name, obj):
            self._chunk(f"event: {name}\ndata: {json.dumps(obj)}\n\n")

        self._start_stream()
        ev("message_start", {"type": "message_start", "message": {
            "id": msg_id, "type": "message", "role": "assistant", "model": model, "content": [],
            "stop_reason": None, "stop_sequence": None, "usage": dict(usage, output_tokens=1)}})
        stream_blocks(ev)
        ev("message_delta", {"type": "message_delta",
                             "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                             "usage": {"output_tokens": out_tokens}})
        ev("message_stop", {"type": "message_stop"})
        self._end_stream()

    # OpenAI Responses -----------------------------------------------------

    def _responses(self, req, model, stream, text, deltas, gap, in_tokens):
        resp_id = "resp_fake_" + uuid.uuid4().hex[:20]
        item_id = "msg_fake_" + uuid.uuid4().hex[:20]
        created = int(time.time())
        usage = {"input_tokens": in_tokens, "input_tokens_details": {"cached_tokens": 0},
                 "output_tokens": len(deltas), "output_tokens_details": {"reasoning_tokens": 0},
                 "total_tokens": in_tokens + len(deltas)}
        part = {"type": "output_text", "text": text, "annotations": []}
        item = {"id": item_id, "type": "message", "status": "completed", "role": "assistant",
                "content": [part]}

        def response(status, output, with_usage):
            r = {"id": resp_id, "object": "response", "created_at": created, "status": status,
                 "model": model, "output": output, "error": None, "incomplete_details": None,
                 "instructions": None, "parallel_tool_calls": True, "tool_choice": "auto",
                 "tools": [], "usage": usage if with_usage else None}
            return r

        thought = getattr(self, "_thought", None)
        reasoning = None
        if thought:
            reasoning = {"id": "rs_fake_" + uuid.uuid4().hex[:20], "type": "reasoning",
                         "summary": [{"type": "summary_text", "text": thought}]}
        output = [reasoning, item] if reasoning else [item]
        at = len(output) - 1  # the message's output index
        if not stream:
            r = response("completed", output, True)
            r["output_text"] = text
            return self._send_json(200, r)

        ev = self._responses_stream(response)
        if reasoning:
            rid = reasoning["id"]
            ev("response.output_item.added", {"output_index": 0, "item": dict(reasoning, summary=[])})
            ev("response.reasoning_summary_part.added", {
                "item_id": rid, "output_index": 0, "summary_index": 0,
                "part": {"type": "summary_text", "text": ""}})
            for d in split_deltas(thought):
                ev("response.reasoning_summary_text.delta", {
                    "item_id": rid, "output_index": 0, "summary_index": 0, "delta": d})
            ev("response.reasoning_summary_text.done", {
                "item_id": rid, "output_index": 0, "summary_index": 0, "text": thought})
            ev("response.reasoning_summary_part.done", {
                "item_id": rid, "output_index": 0, "summary_index": 0,
                "part": {"type": "summary_text", "text": thought}})
            ev("response.output_item.done", {"output_index": 0, "item": reasoning})
        ev("response.output_item.added", {"output_index": at, "item": {
            "id": item_id, "type": "message", "status": "in_progress", "role": "assistant",
            "content": []}})
        ev("response.content_part.added", {"item_id": item_id, "output_index": at,
                                           "content_index": 0,
                                           "part": {"type": "output_text", "text": "",
                                                    "annotations": []}})
        for i, d in enumerate(deltas):
            self._between(i, gap)
            ev("response.output_text.delta", {"item_id": item_id, "output_index": at,
                                              "content_index": 0, "delta": d})
        ev("response.output_text.done", {"item_id": item_id, "output_index": at,
                                         "content_index": 0, "text": text})
        ev("response.content_part.done", {"item_id": item_id, "output_index": at,
                                          "content_index": 0, "part": part})
        ev("response.output_item.done", {"output_index": at, "item": item})
        ev("response.completed", {"response": response("completed", output, True)})
        self._end_stream()

    # Gemini ---------------------------------------------------------------

    def _gemini(self, model, stream, text, deltas, gap, in_tokens):
        resp_id = "fake-" + uuid.uuid4().hex[:16]

        def chunk(piece, done, out_tokens):
            cand = {"content": {"parts": [{"text": piece}], "role": "model"}, "index": 0}
            if done:
                cand["finishReason"] = "STOP"
            return {"candidates": [cand],
                    "usageMetadata": {"promptTokenCount": in_tokens,
                                      "candidatesTokenCount": out_tokens,
                                      "totalTokenCount": in_tokens + out_tokens},
                    "modelVersion": model, "responseId": resp_id}

        thought = getattr(self, "_thought", None)
        if not stream:
            whole = chunk(text, True, len(deltas))
            if thought:
                whole["candidates"][0]["content"]["parts"].insert(0, {"text": thought, "thought": True})
            return self._send_json(200, whole)
        self._start_stream()
        if thought:
            first = chunk("", False, 0)
            first["candidates"][0]["content"]["parts"] = [{"text": thought, "thought": True}]
            self._chunk("data: " + json.dumps(first) + "\r\n\r\n")
        for i, d in enumerate(deltas):
            self._between(i, gap)
            self._chunk("data: " + json.dumps(chunk(d, i == len(deltas) - 1, i + 1)) + "\r\n\r\n")
        self._end_stream()


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def write_port_file(path: str, port: int) -> None:
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(f"{port}\n")
    os.replace(tmp, path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--port-file", help="write the listening port here (atomically)")
    ap.add_argument("--verbose", action="store_true", help="log every request to stderr")
    args = ap.parse_args(argv)

    state = State()
    handler = type("BoundHandler", (Handler,), {"state": state})
    srv = Server((args.host, args.port), handler)
    srv.verbose = args.verbose  # type: ignore[attr-defined]
    port = srv.server_address[1]

    def stop(signum, frame):
        state.stopping.set()
        threading.Thread(target=srv.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if args.port_file:
        write_port_file(args.port_file, port)
    sys.stderr.write(f"fakemodel: listening on http://{args.host}:{port}\n")
    sys.stderr.flush()
    try:
        srv.serve_forever(poll_interval=0.2)
    finally:
        state.stopping.set()
        srv.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
