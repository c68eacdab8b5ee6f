"""Images reach the model through every API style and every CLI: OpenAI chat `image_url` parts
and Responses `input_image` parts (data: URLs), Anthropic `image` blocks (base64) and the
native `images` field; claude takes them in its stream-json input, codex with `-i FILE`, gemini
with `@path` (the fake model server counts the image parts it receives). Remote URLs, wrong types,
bad data and too many images are clear 400s; the run's image files are removed with it."""

from __future__ import annotations

import base64

import anthropic
import httpx
import openai
import pytest

from compat_world import BACKENDS, compat  # noqa: F401  (fixture)

# A 1×1 PNG.
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==")
B64 = base64.b64encode(PNG).decode()
DATA_URL = "data:image/png;base64," + B64


def last_call_images(d) -> int:
    calls = [c for c in d.model_calls() if not c.get("utility")]
    assert calls, d.model_calls()
    return calls[-1]["images"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_image_reaches_the_model_through_each_cli(compat, backend):
    d = compat()
    r = d.openai().chat.completions.create(model=backend, messages=[{"role": "user", "content": [
        {"type": "text", "text": "describe the picture"},
        {"type": "image_url", "image_url": {"url": DATA_URL}}]}])
    assert r.choices[0].message.content.startswith("fake-reply turns=1")
    assert last_call_images(d) == 1
    # The run's image files are gone with it.
    tmp = d.world.state_dir / "tmp"
    assert not tmp.exists() or not any(p.name.startswith("images-") for p in tmp.iterdir())


def test_images_in_responses_messages_and_native(compat):
    d = compat()
    d.openai().responses.create(model="codex", input=[{"role": "user", "content": [
        {"type": "input_text", "text": "what is this"},
        {"type": "input_image", "image_url": DATA_URL}]}])
    assert last_call_images(d) == 1
    d.anthropic().messages.create(model="claude", max_tokens=20, messages=[{"role": "user", "content": [
        {"type": "text", "text": "and this"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": B64}},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": B64}}]}])
    assert last_call_images(d) == 2
    r = httpx.post(d.url + "/api/v1/prompt", timeout=120, json={
        "backend": "gemini", "prompt": "native image",
        "images": [{"media_type": "image/png", "data": B64}]})
    assert r.status_code == 200 and r.json()["exit_code"] == 0, r.text
    assert last_call_images(d) == 1


def test_bad_images_are_refused_before_anything_runs(compat):
    d = compat()
    client = d.openai()
    before = len(d.model_calls())

    def chat(part):
        return client.chat.completions.create(model="claude", messages=[
            {"role": "user", "content": [{"type": "text", "text": "x"}, part]}])

    for part, words in [
        ({"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}, "not fetched"),
        ({"type": "image_url", "image_url": {"url": "data:text/plain;base64,aGk="}}, "not supported"),
        ({"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@"}}, "base64"),
        ({"type": "image_url", "image_url": {"url": "data:image/jpeg;base64," + B64}}, "not a image/jpeg"),
    ]:
        with pytest.raises(openai.BadRequestError) as e:
            chat(part)
        assert words in e.value.body["message"], e.value.body
    with pytest.raises(anthropic.BadRequestError) as e:
        d.anthropic().messages.create(model="claude", max_tokens=10, messages=[{"role": "user", "content": [
            {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.png"}}]}])
    assert "not fetched" in e.value.body["error"]["message"]
    r = httpx.post(d.url + "/api/v1/prompt", timeout=30, json={
        "backend": "claude", "prompt": "x", "images": [{"media_type": "image/png", "data": B64}] * 9})
    assert r.status_code == 400 and r.json()["code"] == "too_many_images", r.text
    assert len(d.model_calls()) == before
