"""langchain-openai's ChatOpenAI against the OpenAI-compatible API."""

from __future__ import annotations

import pytest

from compat_world import compat  # noqa: F401  (fixture)


# ChatOpenAI sends codex-like model names to the Responses API (/openai/v1/responses, planned,
# not built yet), so codex is reached here with use_responses_api=False.
@pytest.mark.parametrize("backend", ["claude", "codex", "gemini"])
def test_chat_openai_invoke_and_stream(compat, backend):
    from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
    from langchain_openai import ChatOpenAI

    d = compat()
    llm = ChatOpenAI(model=backend, base_url=d.openai_base, api_key="sk-unused",
                     max_retries=0, timeout=120, temperature=0,
                     use_responses_api=False)
    r = llm.invoke([SystemMessage("be brief"), HumanMessage("hello langchain")])
    assert r.content.startswith("fake-reply turns=1 last=")  # gemini: system prompt leads the turn
    # the follow-up carries the history and continues the same backend session
    chunks = list(llm.stream([SystemMessage("be brief"), HumanMessage("hello langchain"),
                              AIMessage(r.content), HumanMessage("and again")]))
    text = "".join(c.content for c in chunks)
    assert text.strip() == "fake-reply turns=2 last=and again"
    assert len(chunks) >= 2
    assert len(d.sessions()) == 1
