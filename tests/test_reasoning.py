"""The model's reasoning, as the CLI prints it, in each API style's own field when the request
asks for it: chat `reasoning_content` (with `reasoning_effort`), Responses `reasoning` items
(with `reasoning.summary`), Anthropic `thinking` blocks (with `thinking`) — streamed and not,
through the official SDKs, over every pinned CLI in its warm mode (the default). The fake model
thinks when the prompt holds `[[think]]`, in each protocol's shape (an Anthropic thinking block,
a Responses reasoning item, a Gemini thought part)."""

from __future__ import annotations

import pytest

from compat_world import BACKENDS, compat  # noqa: F401  (fixture)

# Every CLI prints its model's reasoning in warm mode (measured); one-shot, gemini prints no
# thoughts and opencode's `run` prints reasoning only with `--thinking`.
THINKERS = BACKENDS
PROMPT = "[[think]] weigh it"
THOUGHT = "fake-thought about"


@pytest.mark.parametrize("backend", THINKERS)
def test_chat_reasoning_content(compat, backend):
    d = compat()
    client = d.openai(max_retries=0)
    r = client.chat.completions.create(
        model=backend, reasoning_effort="low", messages=[{"role": "user", "content": PROMPT}])
    m = r.choices[0].message
    assert "fake-reply" in m.content and THOUGHT not in m.content, m.content
    assert THOUGHT in m.model_extra["reasoning_content"], m.model_extra
    # Streamed: reasoning deltas first, then the text.
    chunks = list(client.chat.completions.create(
        model=backend, reasoning_effort="low", stream=True,
        messages=[{"role": "user", "content": PROMPT + " again"}]))
    thought = "".join((c.choices[0].delta.model_extra or {}).get("reasoning_content") or ""
                      for c in chunks if c.choices)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert THOUGHT in thought and "fake-reply" in text and THOUGHT not in text, (thought, text)
    # Not asked for: not shown.
    r = client.chat.completions.create(model=backend, messages=[{"role": "user", "content": PROMPT}])
    assert "reasoning_content" not in (r.choices[0].message.model_extra or {})


@pytest.mark.parametrize("backend", THINKERS)
def test_anthropic_thinking_blocks(compat, fake_model, backend):
    d = compat()
    client = d.anthropic(max_retries=0)
    thinking = {"type": "enabled", "budget_tokens": 2048}
    r = client.messages.create(model=backend, max_tokens=4096, thinking=thinking,
                               messages=[{"role": "user", "content": PROMPT}])
    kinds = [b.type for b in r.content]
    assert kinds == ["thinking", "text"], kinds
    assert THOUGHT in r.content[0].thinking and "fake-reply" in r.content[1].text
    if backend == "claude":
        # A budget of 2,048 tokens is the low effort: claude sends it to its model.
        body = d.model_calls()[-1]["body"]
        assert (body.get("output_config") or {}).get("effort") == "low", body.get("output_config")
    # Streamed: a thinking block (index 0), then the text block (index 1).
    with client.messages.stream(model=backend, max_tokens=4096, thinking=thinking,
                                messages=[{"role": "user", "content": PROMPT + " again"}]) as s:
        events = list(s)
        final = s.get_final_message()
    assert [b.type for b in final.content] == ["thinking", "text"], final.content
    assert THOUGHT in final.content[0].thinking and "fake-reply" in final.content[1].text
    deltas = [e.delta.type for e in events if e.type == "content_block_delta"]
    assert "thinking_delta" in deltas and "text_delta" in deltas
    assert deltas.index("thinking_delta") < deltas.index("text_delta")
    # Not asked for (or disabled): text only.
    for extra in ({}, {"thinking": {"type": "disabled"}}):
        r = client.messages.create(model=backend, max_tokens=100, **extra,
                                   messages=[{"role": "user", "content": PROMPT}])
        assert [b.type for b in r.content] == ["text"], r.content


@pytest.mark.parametrize("backend", THINKERS)
def test_responses_reasoning_items(compat, backend):
    d = compat()
    client = d.openai(max_retries=0)
    r = client.responses.create(model=backend, input=PROMPT, reasoning={"summary": "auto"})
    assert [o.type for o in r.output] == ["reasoning", "message"], r.output
    assert THOUGHT in r.output[0].summary[0].text and "fake-reply" in r.output_text
    # Streamed: the reasoning item at output index 0, its summary deltas, then the message.
    events = list(client.responses.create(model=backend, input=PROMPT + " again",
                                          reasoning={"summary": "auto"}, stream=True))
    kinds = [e.type for e in events]
    assert "response.reasoning_summary_text.delta" in kinds, kinds
    assert kinds.index("response.reasoning_summary_text.delta") < kinds.index("response.output_text.delta")
    text_delta = next(e for e in events if e.type == "response.output_text.delta")
    assert text_delta.output_index == 1
    done = events[-1]
    assert done.type == "response.completed"
    assert [o.type for o in done.response.output] == ["reasoning", "message"]
    assert THOUGHT in done.response.output[0].summary[0].text
    # The stored response holds it too; not asked for, no reasoning item.
    assert client.responses.retrieve(done.response.id).output[0].type == "reasoning"
    r = client.responses.create(model=backend, input=PROMPT)
    assert [o.type for o in r.output] == ["message"]
