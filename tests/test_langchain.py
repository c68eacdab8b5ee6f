"""langchain-openai's ChatOpenAI against the OpenAI-compatible API: invoke, stream, and a tool loop
(bind_tools, ToolMessage) over chat completions and the Responses API."""

from __future__ import annotations

import pytest

from compat_world import compat  # noqa: F401  (fixture)


# ChatOpenAI sends codex-like model names to the Responses API by itself; chat completions are
# what this test proves, so it asks for them (the Responses API: test_chat_openai_bind_tools_round_trip).
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


@pytest.mark.parametrize("use_responses_api", [False, True], ids=["chat", "responses"])
def test_chat_openai_bind_tools_round_trip(compat, use_responses_api):
    """A LangChain tool loop: bind_tools, the model's tool call, the ToolMessage back, the
    answer that used it."""
    from langchain_core.messages import HumanMessage, ToolMessage
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI

    @tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        return f"hail in {city}"

    d = compat()
    llm = ChatOpenAI(model="claude", base_url=d.openai_base, api_key="sk-unused", max_retries=0,
                     timeout=120, use_responses_api=use_responses_api).bind_tools([get_weather])
    history = [HumanMessage('[[call:get_weather={"city":"Graz"}]]')]
    ai = llm.invoke(history)
    assert [c["name"] for c in ai.tool_calls] == ["get_weather"] and ai.tool_calls[0]["args"] == {"city": "Graz"}
    history += [ai, ToolMessage(get_weather.invoke(ai.tool_calls[0]["args"]),
                                tool_call_id=ai.tool_calls[0]["id"])]
    final = llm.invoke(history)
    text = final.content if isinstance(final.content, str) else "".join(
        p.get("text", "") for p in final.content if isinstance(p, dict))
    assert "tool-results=hail in Graz" in text, final.content
