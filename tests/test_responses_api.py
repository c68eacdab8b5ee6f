"""The OpenAI Responses API (/openai/v1/responses) through the official openai SDK, with the real
CLIs behind the daemon and the fake model server: plain and streamed answers (the typed event
sequence), previous_response_id continuing the session, retrieve/delete, refusals and the
ignored-parameters header."""

from __future__ import annotations

import httpx
import openai
import pytest

from compat_world import BACKENDS, compat  # noqa: F401  (fixture)


@pytest.mark.parametrize("backend", BACKENDS)
def test_create_answers_with_output_text_and_usage(compat, backend):
    d = compat()
    client = d.openai()
    raw = client.responses.with_raw_response.create(
        model=backend, input="hello responses", instructions="SYSMARK be terse",
        temperature=0.3, max_output_tokens=50, metadata={"k": "v"})
    r = raw.parse()
    assert r.id.startswith("resp_") and r.object == "response" and r.status == "completed"
    text = r.output_text.strip()
    assert text.startswith("fake-reply turns=1 last=") and "hello responses" in text, text
    # The instructions reached the model: as the system prompt (claude, codex), or in front of
    # the prompt (gemini has no system-prompt flag).
    assert "SYSMARK be terse" in text, text
    assert r.output[0].type == "message" and r.output[0].role == "assistant"
    assert r.output[0].content[0].type == "output_text"
    assert r.usage is not None and r.usage.output_tokens >= 0
    assert r.metadata == {"k": "v"} and r.instructions == "SYSMARK be terse"
    named = {p.strip() for p in raw.headers["x-clinvk-ignored-params"].split(",")}
    assert {"temperature", "max_output_tokens"} <= named, named
    assert raw.headers["x-clinvk-session"]


def test_stream_sends_the_typed_event_sequence(compat):
    d = compat()
    client = d.openai()
    events = list(client.responses.create(model="claude", input=[
        {"role": "developer", "content": "be brief"},
        {"role": "user", "content": [{"type": "input_text", "text": "streamed please"}]},
    ], stream=True))
    types = [e.type for e in events]
    assert types[:4] == ["response.created", "response.in_progress",
                         "response.output_item.added", "response.content_part.added"], types
    assert types[-4:] == ["response.output_text.done", "response.content_part.done",
                          "response.output_item.done", "response.completed"], types
    assert set(types[4:-4]) == {"response.output_text.delta"}, types
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text.strip().startswith("fake-reply turns=1 last=streamed please"), text
    done = events[-1].response
    assert done.status == "completed" and done.output_text == text
    assert events[-4].text == text
    # The streamed response was stored: it can be retrieved at once.
    got = client.responses.retrieve(done.id)
    assert got.output_text == text


def test_previous_response_id_continues_the_session_and_store_retrieve_delete(compat):
    d = compat()
    client = d.openai()
    first = client.responses.create(model="claude", input="first question")
    assert "turns=1" in first.output_text
    second = client.responses.create(model="claude", input="second question",
                                     previous_response_id=first.id)
    # The CLI resumed its session: the model sees both turns.
    assert second.output_text.strip().startswith("fake-reply turns=2 last=second question"), \
        second.output_text
    assert second.previous_response_id == first.id
    # Continued streamed, too.
    third = [e for e in client.responses.create(model="claude", input="third",
                                                previous_response_id=second.id, stream=True)]
    assert "turns=3" in third[-1].response.output_text
    got = client.responses.retrieve(first.id)
    assert got.id == first.id and got.output_text == first.output_text
    deleted = client.responses.delete(first.id)
    assert deleted is None or getattr(deleted, "deleted", True)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(first.id)
    with pytest.raises(openai.NotFoundError) as e:
        client.responses.create(model="claude", input="x", previous_response_id="resp_nope")
    assert e.value.body["param"] == "previous_response_id"
    # store=false: answered, not kept.
    unstored = client.responses.create(model="claude", input="ephemeral", store=False)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(unstored.id)
    # Ids this server never makes are simply unknown.
    r = httpx.get(d.openai_base + "/responses/..%2F..%2Fkeys")
    assert r.status_code == 404 and r.json()["error"]["code"] == "response_not_found"


def test_refused_fields_are_named_and_nothing_runs(compat):
    d = compat()
    client = d.openai()
    before = len(d.model_calls())
    # Function tools work (tests/test_tools.py); hosted tools (web/file search) do not.
    tools = [{"type": "web_search"}]
    schema = {"format": {"type": "xml"}}
    for param, extra in [("tools[0].type", dict(tools=tools)),
                         ("text.format", dict(text=schema)),
                         ("background", dict(background=True))]:
        for stream in (False, True):
            with pytest.raises(openai.BadRequestError) as e:
                client.responses.create(model="claude", input="hi", stream=stream, **extra)
            assert e.value.body["param"] == param, e.value.body
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model="claude", input=[
            {"role": "user", "content": [{"type": "input_image", "image_url": "data:image/png;base64,AAAA"}]}])
    # (the 4 bytes are no PNG: the error names the part)
    assert "input[0].content[0].image_url" in e.value.body["message"], e.value.body
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="mistral-large", input="hi")
    assert len(d.model_calls()) == before
