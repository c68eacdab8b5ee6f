"""401 and 429 through the official SDKs: each raises its own exception class."""

from __future__ import annotations

import anthropic
import openai
import pytest

from compat_world import compat, fakecli  # noqa: F401


def test_sdks_raise_authentication_errors(compat):
    d = compat(f"backends:\n  claude:\n    command: {fakecli('ok')}\n    mode: oneshot\n")
    d.world.ctl("stop")
    d.world.env["CLINVK_API_KEYS"] = "good-key"
    d.world.start_daemon()
    base = d.world.url
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=base + "/openai/v1", api_key="bad", max_retries=0).models.list()
    with pytest.raises(anthropic.AuthenticationError):
        anthropic.Anthropic(base_url=base + "/anthropic", api_key="bad", max_retries=0).messages.create(
            model="claude", max_tokens=10, messages=[{"role": "user", "content": "hi"}])
    ok = openai.OpenAI(base_url=base + "/openai/v1", api_key="good-key", max_retries=0)
    r = ok.chat.completions.create(model="claude", messages=[{"role": "user", "content": "hello"}])
    assert "fakecli reply to" in r.choices[0].message.content
    # The Anthropic SDK sends the key as X-Api-Key.
    ok_a = anthropic.Anthropic(base_url=base + "/anthropic", api_key="good-key", max_retries=0)
    m = ok_a.messages.create(model="claude", max_tokens=10, messages=[{"role": "user", "content": "hello"}])
    assert "fakecli reply to" in m.content[0].text


def test_sdks_raise_rate_limit_errors(compat):
    d = compat("server:\n  rate_limit_enabled: true\n  rate_limit_rps: 0.1\n  rate_limit_burst: 1\n")
    oa = d.openai()
    oa.models.list()  # the one token of the bucket
    with pytest.raises(openai.RateLimitError) as e:
        oa.models.list()
    assert int(e.value.response.headers["retry-after"]) >= 1
    with pytest.raises(anthropic.RateLimitError):
        d.anthropic().messages.create(model="claude", max_tokens=10, messages=[{"role": "user", "content": "hi"}])
