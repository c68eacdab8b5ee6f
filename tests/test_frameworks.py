"""Agent frameworks and clients at their defaults, pinned (tests/requirements.txt), against clinvk
with the real CLIs and the fake model server: the OpenAI Agents SDK (Responses API; plain,
streamed, structured output_type), pydantic-ai (Responses and chat models; text and native
structured output), the `llm` CLI (plain, streamed, --schema) and the Vercel AI SDK (Node:
generateText, streamText, Output.object, generateObject)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import BaseModel

import cli_env  # tests/fakemodel/cli_env.py (the test cache's location)

from compat_world import compat  # noqa: F401  (fixture)


class City(BaseModel):
    name: str
    country: str


def test_openai_agents_sdk_runs_an_agent_plain_streamed_and_structured(compat):
    from agents import Agent, Runner, set_default_openai_client, set_tracing_disabled
    from openai import AsyncOpenAI

    d = compat()
    set_tracing_disabled(True)

    async def main():
        set_default_openai_client(AsyncOpenAI(base_url=d.openai_base, api_key="sk-unused",
                                              max_retries=0))
        agent = Agent(name="helper", instructions="be brief", model="claude")
        plain = await Runner.run(agent, "hello agents")
        streamed = Runner.run_streamed(agent, "streamed agents")
        deltas = [ev.data.delta async for ev in streamed.stream_events()
                  if ev.type == "raw_response_event"
                  and getattr(ev.data, "type", "") == "response.output_text.delta"]
        typed = await Runner.run(Agent(name="typed", model="codex", output_type=City), "a city")
        return plain, streamed, deltas, typed

    plain, streamed, deltas, typed = asyncio.run(main())
    assert plain.final_output.startswith("fake-reply turns=1 last=hello agents")
    assert streamed.final_output.startswith("fake-reply turns=1 last=streamed agents")
    assert "".join(deltas) == streamed.final_output and len(deltas) > 1
    assert isinstance(typed.final_output, City), typed.final_output
    # The agents SDK talked clinvk's Responses API (its response ids are clinvk's `resp_…`).
    for run in (plain, streamed, typed):
        assert run.raw_responses and all(
            r.response_id and r.response_id.startswith("resp_") for r in run.raw_responses), run


@pytest.mark.parametrize("model_class", ["OpenAIResponsesModel", "OpenAIChatModel"])
def test_pydantic_ai_text_and_native_structured_output(compat, model_class):
    import pydantic_ai.models.openai as models
    from pydantic_ai import Agent, NativeOutput
    from pydantic_ai.providers.openai import OpenAIProvider

    d = compat()
    provider = OpenAIProvider(base_url=d.openai_base, api_key="sk-unused")
    model = getattr(models, model_class)("claude", provider=provider)
    assert Agent(model).run_sync("hello pydantic").output.startswith(
        "fake-reply turns=1 last=hello pydantic")
    city = Agent(model, output_type=NativeOutput(City)).run_sync("a city").output
    assert isinstance(city, City), city
    # pydantic-ai's default for a structured output_type is a tool the model calls
    # (`final_result`): a client tool call like any other.
    city = Agent(model, output_type=City).run_sync("a city [[call:final_result]]").output
    assert isinstance(city, City), city


@pytest.mark.parametrize("model_class", ["OpenAIResponsesModel", "OpenAIChatModel"])
def test_pydantic_ai_agent_with_a_tool(compat, model_class):
    import pydantic_ai.models.openai as models
    from pydantic_ai import Agent
    from pydantic_ai.providers.openai import OpenAIProvider

    d = compat()
    provider = OpenAIProvider(base_url=d.openai_base, api_key="sk-unused")
    agent = Agent(getattr(models, model_class)("claude", provider=provider))
    ran = []

    @agent.tool_plain
    def get_weather(city: str) -> str:
        """The weather in a city."""
        ran.append(city)
        return f"warm in {city}"

    out = agent.run_sync('weather [[call:get_weather={"city":"Paris"}]]').output
    assert ran == ["Paris"], ran
    assert "tool-results=warm in Paris" in out, out


def test_openai_agents_sdk_agent_with_a_function_tool(compat):
    from agents import Agent, Runner, function_tool, set_default_openai_client, set_tracing_disabled
    from openai import AsyncOpenAI

    d = compat()
    set_tracing_disabled(True)
    ran = []

    @function_tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        ran.append(city)
        return f"rainy in {city}"

    async def main():
        set_default_openai_client(AsyncOpenAI(base_url=d.openai_base, api_key="sk-unused",
                                              max_retries=0))
        agent = Agent(name="weather", model="claude", tools=[get_weather])
        plain = await Runner.run(agent, '[[call:get_weather={"city":"Bern"}]]')
        streamed = Runner.run_streamed(agent, '[[call:get_weather={"city":"Chur"}]]')
        async for _ in streamed.stream_events():
            pass
        return plain, streamed

    plain, streamed = asyncio.run(main())
    assert ran == ["Bern", "Chur"], ran
    assert "tool-results=rainy in Bern" in plain.final_output, plain.final_output
    assert "tool-results=rainy in Chur" in streamed.final_output, streamed.final_output


def test_llm_cli_with_an_openai_compatible_model_entry(compat, tmp_path):
    d = compat()
    home = tmp_path / "llm"
    home.mkdir()
    (home / "extra-openai-models.yaml").write_text(
        "- model_id: clinvk-claude\n"
        "  model_name: claude\n"
        f"  api_base: \"{d.openai_base}\"\n"
        "  supports_schema: true\n")
    llm = str(Path(sys.executable).parent / "llm")
    env = dict(os.environ, LLM_USER_PATH=str(home), OPENAI_API_KEY="sk-unused")

    def run(*args):
        r = subprocess.run([llm, "-m", "clinvk-claude", *args], env=env, text=True,
                           capture_output=True, timeout=120)
        assert r.returncode == 0, r.stderr
        return r.stdout.strip()

    assert run("hello llm") == "fake-reply turns=1 last=hello llm"
    assert run("--no-stream", "no stream") == "fake-reply turns=1 last=no stream"
    assert json.loads(run("--schema", "name, country", "a city")) == {
        "name": "fake name", "country": "fake country"}


def test_vercel_ai_sdk_generate_stream_and_objects(compat):
    """`openai(model)` of @ai-sdk/openai (its default: the Responses API), pinned in
    tests/node-clients/package-lock.json, installed into the test cache by install-clis.sh."""
    d = compat()
    clients = cli_env.cache_dir() / "node-clients"
    assert (clients / "node_modules" / "ai").is_dir(), "run tests/install-clis.sh"
    # The script runs from the cache folder, so that node finds its node_modules.
    script = clients / "vercel-check.mjs"
    script.write_text((Path(__file__).parent / "node-clients" / "vercel-check.mjs").read_text())
    r = subprocess.run(["node", str(script)], env=dict(os.environ, BASE=d.openai_base),
                       text=True, capture_output=True, timeout=180)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["text"] == "fake-reply turns=1 last=hello vercel"
    assert out["stream"] == "fake-reply turns=1 last=streamed vercel" and out["streamParts"] > 1
    City.model_validate(out["output"])
    City.model_validate(out["object"])
    # generateText with a tool and several steps: the tool ran, its result reached the model.
    assert out["toolRuns"] == ["Oslo"], out
    assert "tool-results=" in out["toolText"] and "cold in Oslo" in out["toolText"], out
    assert out["toolSteps"] == 2, out
