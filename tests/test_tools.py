"""Client tool calls passed through: the request's `tools` reach the real CLI as an MCP server the
daemon hosts; the fake model calls them (`[[call:NAME]]` in the prompt), the answer ends with the
call in each API style's shape, the client's result continues the same CLI process, and the fake
model sees the result. Driven with the official openai and anthropic SDKs."""

from __future__ import annotations

import json

import httpx
import openai
import anthropic
import pytest

from compat_world import BACKENDS, compat  # noqa: F401  (fixture)
from harness import pid_alive, poll

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                       "required": ["city"]},
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "The time in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                       "required": ["city"]},
    },
}
RESP_WEATHER = {"type": "function", "name": "get_weather", "description": "The weather in a city",
                "parameters": WEATHER["function"]["parameters"]}
ANTH_WEATHER = {"name": "get_weather", "description": "The weather in a city",
                "input_schema": WEATHER["function"]["parameters"]}


def cli_pids(d) -> set[int]:
    return {r["pid"] for r in d.runs() if r.get("pid")} | {
        w["pid"] for w in (d.world.status() or {}).get("workers", []) if w.get("pid")}


# claude offers this placeholder with MCP tools (it stands for tools it loads on demand; none
# here, as --strict-mcp-config and --tools "" leave only the client's).
INTERNAL = {"DeferredToolPlaceholder"}


def only_client_tools(offered: list[str]) -> list[str]:
    """The offered tools by their client names; a built-in tool would show up as itself."""
    return sorted(t.split("__")[-1].removeprefix("clinvk-") for t in offered if t not in INTERNAL)


def model_saw_result(d, text: str) -> dict:
    calls = [c for c in d.model_calls() if any(text in r for r in c["tool_results"])]
    assert calls, [(c["tool_calls"], c["tool_results"]) for c in d.model_calls()]
    return calls[-1]


# --- OpenAI chat completions -------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_chat_tool_call_round_trip(compat, stream, backend):
    d = compat()
    client = d.openai()
    messages = [{"role": "user", "content": 'Weather? [[call:get_weather={"city":"Oslo"}]]'}]
    if stream:
        chunks = list(client.chat.completions.create(
            model=backend, messages=messages, tools=[WEATHER], stream=True))
        calls: dict[int, dict] = {}
        for ch in chunks:
            for tc in (ch.choices[0].delta.tool_calls or []) if ch.choices else []:
                c = calls.setdefault(tc.index, {"id": None, "name": "", "arguments": ""})
                c["id"] = tc.id or c["id"]
                c["name"] += tc.function.name or ""
                c["arguments"] += tc.function.arguments or ""
        finish = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
        assert finish == ["tool_calls"], finish
        call = calls[0]
    else:
        r = client.chat.completions.create(model=backend, messages=messages, tools=[WEATHER])
        assert r.choices[0].finish_reason == "tool_calls", (r.choices[0].message, [
            (c["offered_tools"], c["tool_calls"], c["tool_results"]) for c in d.model_calls()])
        tc = r.choices[0].message.tool_calls
        assert len(tc) == 1 and tc[0].type == "function"
        call = {"id": tc[0].id, "name": tc[0].function.name, "arguments": tc[0].function.arguments}
    assert call["name"] == "get_weather"
    assert json.loads(call["arguments"]) == {"city": "Oslo"}
    # The CLI waits for the result (its process is alive, still in the run list).
    pids = cli_pids(d)
    assert pids and all(pid_alive(p) for p in pids)
    # claude and copilot offered exactly the client's tool (no built-in tools). (codex 0.169
    # offers MCP tools only inside its JavaScript `exec` tool, which the fake model calls.)
    first = [c for c in d.model_calls() if c["tool_calls"]][-1]
    if backend in ("claude", "copilot"):
        assert only_client_tools(first["offered_tools"]) == ["get_weather"], first["offered_tools"]

    messages += [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": call["id"], "type": "function",
             "function": {"name": call["name"], "arguments": call["arguments"]}}]},
        {"role": "tool", "tool_call_id": call["id"], "content": "sunny, 21 C"},
    ]
    if stream:
        chunks = list(client.chat.completions.create(
            model=backend, messages=messages, tools=[WEATHER], stream=True))
        text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
        finish = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
        assert finish == ["stop"]
    else:
        r = client.chat.completions.create(model=backend, messages=messages, tools=[WEATHER])
        assert r.choices[0].finish_reason == "stop"
        text = r.choices[0].message.content
    # The model got the result (codex: inside its `exec` tool's output).
    assert "tool-results=" in text and "sunny, 21 C" in text, text
    model_saw_result(d, "sunny, 21 C")
    d.wait_no_runs()


def test_parallel_calls_come_in_one_answer(compat):
    d = compat()
    client = d.openai()
    messages = [{"role": "user", "content":
                 'Both [[call:get_weather={"city":"Rome"}]] [[call:get_time={"city":"Rome"}]]'}]
    r = client.chat.completions.create(model="claude", messages=messages, tools=[WEATHER, TIME])
    tc = r.choices[0].message.tool_calls
    assert sorted(c.function.name for c in tc) == ["get_time", "get_weather"], tc
    messages.append(r.choices[0].message.model_dump(exclude_none=True))
    for c in tc:
        messages.append({"role": "tool", "tool_call_id": c.id,
                         "content": "result-of-" + c.function.name})
    r2 = client.chat.completions.create(model="claude", messages=messages, tools=[WEATHER, TIME])
    text = r2.choices[0].message.content
    assert "result-of-get_weather" in text and "result-of-get_time" in text, text


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_legacy_functions_are_answered_in_the_legacy_form(compat, stream):
    """`functions` + `function_call` (the legacy form): the answer carries `message.function_call`
    and `finish_reason: function_call`; the result comes back as a `function` message naming the
    function, and continues the same CLI process."""
    d = compat()
    client = d.openai()
    functions = [WEATHER["function"]]
    messages = [{"role": "user", "content": 'Weather? [[call:get_weather={"city":"Oslo"}]]'}]
    if stream:
        chunks = list(client.chat.completions.create(
            model="claude", messages=messages, functions=functions, function_call="auto",
            stream=True))
        name = "".join((ch.choices[0].delta.function_call.name or "") for ch in chunks
                       if ch.choices and ch.choices[0].delta.function_call)
        args = "".join((ch.choices[0].delta.function_call.arguments or "") for ch in chunks
                       if ch.choices and ch.choices[0].delta.function_call)
        assert not any(ch.choices[0].delta.tool_calls for ch in chunks if ch.choices)
        finish = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
        assert finish == ["function_call"], finish
    else:
        r = client.chat.completions.create(model="claude", messages=messages,
                                           functions=functions, function_call="auto")
        assert r.choices[0].finish_reason == "function_call", r.choices[0]
        assert r.choices[0].message.tool_calls is None
        name = r.choices[0].message.function_call.name
        args = r.choices[0].message.function_call.arguments
    assert name == "get_weather" and json.loads(args) == {"city": "Oslo"}
    # The CLI waits for the result (its process is alive).
    pids = cli_pids(d)
    assert pids and all(pid_alive(p) for p in pids)
    messages += [
        {"role": "assistant", "content": None, "function_call": {"name": name, "arguments": args}},
        {"role": "function", "name": "get_weather", "content": "sunny, 21 C"},
    ]
    r = client.chat.completions.create(model="claude", messages=messages, functions=functions)
    assert r.choices[0].finish_reason == "stop"
    assert "sunny, 21 C" in r.choices[0].message.content
    # The waiting run went on: the model got the result as a tool result, not as prompt text.
    model_saw_result(d, "sunny, 21 C")
    d.wait_no_runs()


def test_legacy_functions_take_one_call_per_answer(compat):
    d = compat()
    client = d.openai()
    functions = [WEATHER["function"], TIME["function"]]
    messages = [{"role": "user", "content":
                 'Both [[call:get_weather={"city":"Rome"}]] [[call:get_time={"city":"Rome"}]]'}]
    r = client.chat.completions.create(model="claude", messages=messages, functions=functions)
    assert r.choices[0].finish_reason == "function_call"
    first = r.choices[0].message.function_call
    assert r.choices[0].message.tool_calls is None
    messages += [
        {"role": "assistant", "content": None,
         "function_call": {"name": first.name, "arguments": first.arguments}},
        {"role": "function", "name": first.name, "content": "result-of-" + first.name},
    ]
    r = client.chat.completions.create(model="claude", messages=messages, functions=functions)
    # The model got the client's result, and for the other call: one at a time, please.
    seen = model_saw_result(d, "result-of-" + first.name)
    assert any("one function call at a time" in t for t in seen["tool_results"]), seen
    assert r.choices[0].finish_reason in ("stop", "function_call")


@pytest.mark.parametrize("backend", ["codex", "gemini"])
def test_parallel_calls_on_cli_that_announce_calls_late(compat, backend):
    """codex and gemini print a call only as they make it: the calls of one step come in one
    answer when they reach clinvkd together, else in the next round trips. Either way every
    call is answered once and the model gets every result."""
    d = compat()
    client = d.openai()
    messages = [{"role": "user", "content":
                 'Both [[call:get_weather={"city":"Rome"}]] [[call:get_time={"city":"Rome"}]]'}]
    called = []
    for _ in range(4):
        r = client.chat.completions.create(model=backend, messages=messages, tools=[WEATHER, TIME])
        if r.choices[0].finish_reason != "tool_calls":
            break
        messages.append(r.choices[0].message.model_dump(exclude_none=True))
        for c in r.choices[0].message.tool_calls:
            called.append(c.function.name)
            messages.append({"role": "tool", "tool_call_id": c.id,
                             "content": "result-of-" + c.function.name})
    assert sorted(called) == ["get_time", "get_weather"], called
    text = r.choices[0].message.content
    assert "result-of-get_weather" in text and "result-of-get_time" in text, text


@pytest.mark.parametrize("backend", BACKENDS)
def test_tool_choice_none_offers_no_tool(compat, backend):
    d = compat()
    r = d.openai().chat.completions.create(
        model=backend, tool_choice="none", tools=[WEATHER],
        messages=[{"role": "user", "content": "no tools [[call:get_weather]]"}])
    assert r.choices[0].finish_reason == "stop" and r.choices[0].message.tool_calls is None
    last = d.model_calls()[-1]
    assert not any(t.endswith("get_weather") for t in last["offered_tools"]), last["offered_tools"]


def test_tool_choice_required_without_a_call_is_an_error(compat):
    d = compat()
    with pytest.raises(openai.APIStatusError) as e:
        d.openai().chat.completions.create(
            model="claude", tool_choice="required", tools=[WEATHER],
            messages=[{"role": "user", "content": "answer in prose"}])
    assert "tool" in str(e.value.message)
    # A named choice with a tool that is not offered is the client's mistake.
    with pytest.raises(openai.BadRequestError) as e:
        d.openai().chat.completions.create(
            model="claude", tools=[WEATHER],
            tool_choice={"type": "function", "function": {"name": "nope"}},
            messages=[{"role": "user", "content": "x"}])
    assert e.value.body["param"] == "tool_choice"


def test_unknown_and_missing_results_are_clear_errors(compat):
    d = compat()
    client = d.openai()
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="claude", tools=[WEATHER], messages=[
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_ckdeadbeef", "type": "function",
                 "function": {"name": "get_weather", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "call_ckdeadbeef", "content": "x"}])
    assert e.value.body["code"] == "tool_call_not_pending", e.value.body
    # Two calls pending, one result sent: 400 naming the missing one; the run stays parked.
    messages = [{"role": "user", "content": "[[call:get_weather]] [[call:get_time]]"}]
    r = client.chat.completions.create(model="claude", messages=messages, tools=[WEATHER, TIME])
    tc = r.choices[0].message.tool_calls
    assert len(tc) == 2
    messages.append(r.choices[0].message.model_dump(exclude_none=True))
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="claude", tools=[WEATHER, TIME], messages=messages + [
            {"role": "tool", "tool_call_id": tc[0].id, "content": "one"}])
    assert e.value.body["code"] == "tool_results_missing" and tc[1].id in e.value.message
    r = client.chat.completions.create(model="claude", tools=[WEATHER, TIME], messages=messages + [
        {"role": "tool", "tool_call_id": c.id, "content": "r" + str(i)} for i, c in enumerate(tc)])
    text = r.choices[0].message.content
    assert "tool-results=r0|r1" in text or "tool-results=r1|r0" in text, text


def test_a_foreign_tool_history_is_rendered_as_text(compat):
    """Results for calls this server never made (a conversation from elsewhere): a fresh run
    gets the conversation as text, as before."""
    d = compat()
    r = d.openai().chat.completions.create(model="claude", tools=[WEATHER], messages=[
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_elsewhere1", "type": "function",
             "function": {"name": "get_weather", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_elsewhere1", "content": "cloudy"}])
    assert r.choices[0].finish_reason == "stop"
    assert "cloudy" in json.dumps(d.model_calls()[-1]["raw_user_texts"])


def test_expired_call_stops_the_run_and_a_late_result_gets_409(compat):
    d = compat(config="tools:\n  pending_timeout_secs: 2\n")
    client = d.openai()
    messages = [{"role": "user", "content": "[[call:get_weather]]"}]
    r = client.chat.completions.create(model="claude", messages=messages, tools=[WEATHER])
    tc = r.choices[0].message.tool_calls
    pids = cli_pids(d)
    assert pids
    # The pending call expires: the CLI is stopped (no process left).
    poll(lambda: not any(pid_alive(p) for p in pids), 30, "the parked CLI to be stopped")
    d.wait_no_runs()
    messages.append(r.choices[0].message.model_dump(exclude_none=True))
    messages.append({"role": "tool", "tool_call_id": tc[0].id, "content": "late"})
    with pytest.raises(openai.APIStatusError) as e:
        client.chat.completions.create(model="claude", messages=messages, tools=[WEATHER])
    assert e.value.status_code == 409 and e.value.body["code"] == "tool_call_expired"


def test_client_gone_while_a_call_is_pending(compat):
    """The client takes the call and never answers (it disconnected): the pending call holds
    the CLI until it expires, then the CLI is stopped and nothing is left."""
    d = compat(config="tools:\n  pending_timeout_secs: 3\n")
    with httpx.stream("POST", d.openai_base + "/chat/completions", timeout=60, json={
            "model": "claude", "stream": True, "tools": [WEATHER],
            "messages": [{"role": "user", "content": "[[call:get_weather]]"}]}) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if "tool_calls" in line:
                break  # gone before the end of the answer
    pids = cli_pids(d)
    assert pids
    poll(lambda: not any(pid_alive(p) for p in pids), 30, "the CLI to be stopped")
    d.wait_no_runs()
    assert not (d.world.status() or {}).get("workers")


@pytest.mark.parametrize("backend", ["gemini"])
def test_tools_where_the_backend_cannot_take_them_are_refused(compat, backend):
    """One-shot gemini cannot be given an MCP server: never a plain-text answer to a client
    that waits for calls, but 400 naming tools."""
    d = compat(config=f"backends:\n  {backend}:\n    mode: oneshot\n")
    before = len(d.model_calls())
    with pytest.raises(openai.BadRequestError) as e:
        d.openai().chat.completions.create(model=backend, tools=[WEATHER],
                                           messages=[{"role": "user", "content": "x"}])
    assert e.value.body["param"] == "tools" and "warm" in e.value.message
    with pytest.raises(anthropic.BadRequestError) as e:
        d.anthropic().messages.create(model=backend, max_tokens=10, tools=[ANTH_WEATHER],
                                      messages=[{"role": "user", "content": "x"}])
    assert "tools" in e.value.message
    # tool_choice none offers no tool: that works everywhere.
    r = d.openai().chat.completions.create(model=backend, tools=[WEATHER], tool_choice="none",
                                           messages=[{"role": "user", "content": "plain"}])
    assert r.choices[0].message.content.startswith("fake-reply")
    assert len(d.model_calls()) == before + 1


def test_responses_hosted_web_search_is_named_as_ignored(compat):
    d = compat()
    raw = d.openai().responses.with_raw_response.create(
        model="claude", input="plain", tools=[{"type": "web_search"}, RESP_WEATHER])
    assert raw.parse().output_text.startswith("fake-reply")
    assert "tools.web_search" in raw.headers["x-clinvk-ignored-params"]


def test_bad_tool_definitions_are_400(compat):
    d = compat()
    client = d.openai()
    for tools, param in [
        ([{"type": "web_search"}], "tools[0].type"),
        ([{"type": "function", "function": {"name": "has space"}}], "tools"),
        ([WEATHER, WEATHER], "tools"),
        ([{"type": "function", "function": {"name": "x", "parameters": {"type": "string"}}}],
         "tools[0].function.parameters"),
    ]:
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(model="claude", tools=tools,
                                           messages=[{"role": "user", "content": "x"}])
        assert e.value.body["param"] == param, (tools, e.value.body)


# --- OpenAI Responses --------------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_responses_function_call_round_trip(compat, stream, backend):
    d = compat()
    client = d.openai()
    inp = [{"role": "user", "content": '[[call:get_weather={"city":"Lima"}]]'}]
    if stream:
        events = list(client.responses.create(model=backend, input=inp, tools=[RESP_WEATHER],
                                              stream=True))
        types = [e.type for e in events]
        assert types[:2] == ["response.created", "response.in_progress"], types
        assert "response.function_call_arguments.done" in types and types[-1] == "response.completed"
        assert [e.sequence_number for e in events] == list(range(len(events)))
        resp = events[-1].response
    else:
        resp = client.responses.create(model=backend, input=inp, tools=[RESP_WEATHER])
    calls = [o for o in resp.output if o.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "get_weather"
    assert json.loads(calls[0].arguments) == {"city": "Lima"}
    # Continued by previous_response_id with only the output.
    r2 = client.responses.create(model=backend, previous_response_id=resp.id, tools=[RESP_WEATHER],
                                 input=[{"type": "function_call_output", "call_id": calls[0].call_id,
                                         "output": "foggy"}])
    assert "tool-results=" in r2.output_text and "foggy" in r2.output_text, r2.output_text
    model_saw_result(d, "foggy")


# --- Anthropic messages ------------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_anthropic_tool_use_round_trip(compat, stream, backend):
    d = compat()
    client = d.anthropic()
    messages = [{"role": "user", "content": '[[call:get_weather={"city":"Kyiv"}]]'}]
    if stream:
        with client.messages.stream(model=backend, max_tokens=100, messages=messages,
                                    tools=[ANTH_WEATHER]) as s:
            msg = s.get_final_message()
    else:
        msg = client.messages.create(model=backend, max_tokens=100, messages=messages,
                                     tools=[ANTH_WEATHER])
    assert msg.stop_reason == "tool_use"
    uses = [b for b in msg.content if b.type == "tool_use"]
    assert len(uses) == 1 and uses[0].name == "get_weather" and uses[0].input == {"city": "Kyiv"}
    messages += [
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in msg.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": uses[0].id,
                                      "content": "snow"}]},
    ]
    r2 = client.messages.create(model=backend, max_tokens=100, messages=messages,
                                tools=[ANTH_WEATHER])
    assert r2.stop_reason == "end_turn"
    assert "tool-results=" in r2.content[0].text and "snow" in r2.content[0].text, r2.content
    model_saw_result(d, "snow")


@pytest.mark.parametrize("backend", ["claude", "codex", "copilot"])
def test_one_shot_mode_round_trip(compat, backend):
    """Without warm workers: the one-shot CLI process waits for the result the same way."""
    d = compat(config=f"backends:\n  {backend}:\n    mode: oneshot\n")
    client = d.openai()
    messages = [{"role": "user", "content": '[[call:get_weather={"city":"Oulu"}]]'}]
    r = client.chat.completions.create(model=backend, messages=messages, tools=[WEATHER])
    tc = r.choices[0].message.tool_calls
    assert r.choices[0].finish_reason == "tool_calls" and tc[0].function.name == "get_weather"
    workers = (d.world.status() or {}).get("workers") or []
    assert not [w for w in workers if w["backend"] == backend]  # really one-shot
    messages.append(r.choices[0].message.model_dump(exclude_none=True))
    messages.append({"role": "tool", "tool_call_id": tc[0].id, "content": "polar night"})
    r = client.chat.completions.create(model=backend, messages=messages, tools=[WEATHER])
    assert "polar night" in r.choices[0].message.content
    d.wait_no_runs()


def test_a_shell_command_does_not_run_in_a_gemini_run_with_client_tools(compat, tmp_path):
    """gemini keeps listing its own tools to the model (see docs/compat.md); one that needs a
    permission is refused, as in every gemini run clinvkd starts: the command does not run."""
    d = compat()
    marker = tmp_path / "should-not-exist"
    cmd = json.dumps({"command": f"touch {marker}"})
    r = d.openai().chat.completions.create(model="gemini", tools=[WEATHER], messages=[
        {"role": "user", "content": f"[[call:run_shell_command={cmd}]]"}])
    assert r.choices[0].finish_reason == "stop"
    assert not marker.exists()
    results = [c["tool_results"] for c in d.model_calls() if c["tool_results"]]
    assert results and "canceled" in json.dumps(results), results


def test_beyond_max_parked_runs_the_oldest_is_stopped(compat):
    """Clients that take calls and never answer (pydantic-ai never answers its final_result
    call) must not pile up CLI processes: beyond tools.max_parked_runs the oldest parked run is
    stopped, its late result gets 409, the newer one continues."""
    d = compat(config="tools:\n  max_parked_runs: 1\n")
    client = d.openai()
    first_msgs = [{"role": "user", "content": "first [[call:get_weather]]"}]
    r1 = client.chat.completions.create(model="claude", messages=first_msgs, tools=[WEATHER])
    pids_first = cli_pids(d)
    second_msgs = [{"role": "user", "content": "second [[call:get_weather]]"}]
    r2 = client.chat.completions.create(model="claude", messages=second_msgs, tools=[WEATHER])
    poll(lambda: not any(pid_alive(p) for p in pids_first), 30, "the oldest parked CLI to stop")
    first_msgs += [r1.choices[0].message.model_dump(exclude_none=True),
                   {"role": "tool", "tool_call_id": r1.choices[0].message.tool_calls[0].id,
                    "content": "late"}]
    with pytest.raises(openai.APIStatusError) as e:
        client.chat.completions.create(model="claude", messages=first_msgs, tools=[WEATHER])
    assert e.value.status_code == 409 and e.value.body["code"] == "tool_call_expired"
    second_msgs += [r2.choices[0].message.model_dump(exclude_none=True),
                    {"role": "tool", "tool_call_id": r2.choices[0].message.tool_calls[0].id,
                     "content": "in time"}]
    r = client.chat.completions.create(model="claude", messages=second_msgs, tools=[WEATHER])
    assert "in time" in r.choices[0].message.content


def test_user_text_next_to_tool_results_reaches_the_model(compat):
    """A user turn sent with the results cannot be a turn of its own while the model is mid-turn:
    it goes with the last result, marked as the user's (never dropped)."""
    d = compat()
    client = d.anthropic()
    messages = [{"role": "user", "content": "[[call:get_weather]]"}]
    msg = client.messages.create(model="claude", max_tokens=50, messages=messages,
                                 tools=[ANTH_WEATHER])
    use = [b for b in msg.content if b.type == "tool_use"][0]
    messages += [
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in msg.content]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": use.id, "content": "drizzle"},
            {"type": "text", "text": "and answer in French"}]},
    ]
    client.messages.create(model="claude", max_tokens=50, messages=messages, tools=[ANTH_WEATHER])
    seen = model_saw_result(d, "drizzle")
    assert "and answer in French" in json.dumps(seen["tool_results"]), seen["tool_results"]


def test_a_parked_run_gives_its_slot_back(compat):
    """A run that waits for the client's tool results holds no concurrency slot (its CLI runs
    nothing meanwhile): with one slot, another prompt runs while it waits; the continuation
    then takes the slot like a new run."""
    d = compat(config="limits:\n  max_concurrent: 1\n  queue_timeout_secs: 5\n")
    client = d.openai()
    messages = [{"role": "user", "content": 'Weather? [[call:get_weather={"city":"Oslo"}]]'}]
    r1 = client.chat.completions.create(model="claude", messages=messages, tools=[WEATHER])
    assert r1.choices[0].finish_reason == "tool_calls"
    other = client.chat.completions.create(
        model="claude", messages=[{"role": "user", "content": "meanwhile"}])
    assert "last=meanwhile" in other.choices[0].message.content
    call = r1.choices[0].message.tool_calls[0]
    messages += [r1.choices[0].message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21 C"}]
    r = client.chat.completions.create(model="claude", messages=messages, tools=[WEATHER])
    assert r.choices[0].finish_reason == "stop"
    assert "sunny, 21 C" in r.choices[0].message.content
    model_saw_result(d, "sunny, 21 C")
