"""Structured output through every API style, with the real CLIs: the OpenAI SDK's `parse`
(chat and Responses) with pydantic models, streamed JSON, the native `output_schema`; the answer
is checked against the schema, and an answer that does not match is an error the client sees —
never prose presented as JSON."""

from __future__ import annotations

import json

import httpx
import openai
import pytest
from pydantic import BaseModel

from compat_world import BACKENDS, compat, fakecli  # noqa: F401  (fixture)


class Address(BaseModel):
    city: str
    zip_code: str


class Person(BaseModel):
    name: str
    age: int
    address: Address
    nicknames: list[str]


def structured_calls(d) -> list[dict]:
    return [c for c in d.model_calls() if c.get("structured")]


@pytest.mark.parametrize("backend", BACKENDS)
def test_chat_parse_returns_the_pydantic_model(compat, backend):
    d = compat()
    client = d.openai()
    r = client.chat.completions.parse(
        model=backend, messages=[{"role": "user", "content": "describe a person"}],
        response_format=Person)
    person = r.choices[0].message.parsed
    assert isinstance(person, Person), r.choices[0].message.content
    assert isinstance(person.address, Address) and isinstance(person.age, int)
    # The model was asked for the schema through the CLI's own route (claude: its
    # StructuredOutput tool; codex: the Responses text.format; gemini: an instruction).
    assert structured_calls(d), [c.get("last_user") for c in d.model_calls()]
    json.loads(r.choices[0].message.content)


def test_responses_parse_and_streamed_json(compat):
    d = compat()
    client = d.openai()
    r = client.responses.parse(model="codex", input="describe a person", text_format=Person)
    assert isinstance(r.output_parsed, Person), r.output_text
    assert r.text.format.type == "json_schema"
    # Streamed: the concatenated deltas are the JSON.
    chunks = list(client.chat.completions.create(
        model="claude", stream=True, messages=[{"role": "user", "content": "a person"}],
        response_format={"type": "json_schema", "json_schema": {
            "name": "person", "schema": Person.model_json_schema()}}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    Person.model_validate_json(text)
    # json_object: any JSON object.
    r = client.chat.completions.create(
        model="gemini", messages=[{"role": "user", "content": "an object please"}],
        response_format={"type": "json_object"})
    assert isinstance(json.loads(r.choices[0].message.content), dict)


def test_native_output_schema(compat):
    d = compat()
    schema = Person.model_json_schema()
    r = httpx.post(d.url + "/api/v1/prompt", timeout=120,
                   json={"backend": "claude", "prompt": "a person", "output_schema": schema})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["error"] is None and body["exit_code"] == 0, body
    Person.model_validate_json(body["output"])
    # A schema that is not one: 400 naming the field, nothing runs.
    before = len(d.model_calls())
    r = httpx.post(d.url + "/api/v1/prompt", timeout=30,
                   json={"backend": "claude", "prompt": "x", "output_schema": {"type": 12}})
    assert r.status_code == 400 and r.json()["code"] == "invalid_output_schema", r.text
    assert "output_schema" in r.json()["error"]
    r = httpx.post(d.url + "/api/v1/prompt", timeout=30,
                   json={"backend": "claude", "prompt": "x", "output_schema": "object"})
    assert r.status_code == 400, r.text
    assert len(d.model_calls()) == before
    # `clinvk --output-schema FILE`: the same through the control socket.
    schema_file = d.world.root / "person.schema.json"
    schema_file.write_text(json.dumps(schema))
    r = d.world.clinvk("-b", "codex", "-o", "json", "--output-schema", schema_file, "a person",
                       timeout=120)
    assert r.returncode == 0, r.stderr
    Person.model_validate_json(json.loads(r.stdout)["output"])
    # The dry run shows how each CLI is asked.
    r = httpx.post(d.url + "/api/v1/prompt", timeout=30, json={
        "backend": "codex", "prompt": "x", "output_schema": schema, "dry_run": True})
    assert "--output-schema" in r.json()["command"], r.json()
    r = httpx.post(d.url + "/api/v1/prompt", timeout=30, json={
        "backend": "claude", "prompt": "x", "output_schema": schema, "dry_run": True})
    assert "--json-schema" in r.json()["command"], r.json()


def test_an_answer_that_does_not_match_is_an_error_not_prose(compat):
    # The `ok` fake CLI answers plain text whatever it is asked.
    d = compat(config=f"backends:\n  claude:\n    command: {fakecli('ok')}\n    mode: oneshot\n")
    client = d.openai()
    with pytest.raises(openai.APIStatusError) as e:
        client.chat.completions.parse(
            model="claude", messages=[{"role": "user", "content": "a person"}],
            response_format=Person)
    assert e.value.status_code == 502, e.value
    assert "not JSON" in e.value.body["message"] or "does not match" in e.value.body["message"]
    r = httpx.post(d.url + "/api/v1/prompt", timeout=120, json={
        "backend": "claude", "prompt": "x", "output_schema": {"type": "object"}})
    body = r.json()
    assert r.status_code == 200 and body["error"] and "structured output" in body["error"], body
    # A streamed answer that turns out not to match ends with an error event.
    with pytest.raises(openai.APIError):
        for _ in client.chat.completions.create(
                model="claude", stream=True, messages=[{"role": "user", "content": "x"}],
                response_format={"type": "json_object"}):
            pass
