// The Vercel AI SDK against clinvk: `openai(model)` (the Responses API, the SDK's default),
// generateText, streamText, structured output with Output.object and generateObject.
// Prints one JSON object with what each call returned; BASE is clinvk's /openai/v1 URL.
import { createOpenAI } from "@ai-sdk/openai";
import { generateText, streamText, generateObject, Output, tool, stepCountIs } from "ai";
import { z } from "zod";

globalThis.AI_SDK_LOG_WARNINGS = false;
const openai = createOpenAI({ baseURL: process.env.BASE, apiKey: "sk-unused" });
const City = z.object({ name: z.string(), country: z.string() });
const out = {};
out.text = (await generateText({ model: openai("claude"), prompt: "hello vercel" })).text;
const s = streamText({ model: openai("claude"), prompt: "streamed vercel" });
const parts = [];
for await (const p of s.textStream) parts.push(p);
out.stream = parts.join("");
out.streamParts = parts.length;
const typed = await generateText({
  model: openai("codex"), prompt: "a city", output: Output.object({ schema: City }),
});
out.output = typed.output;
out.object = (await generateObject({ model: openai("gemini"), prompt: "a city", schema: City })).object;
// A tool the model calls, over several steps (call, then the answer with the result).
out.toolRuns = [];
const withTool = await generateText({
  model: openai("claude"),
  prompt: 'weather [[call:get_weather={"city":"Oslo"}]]',
  tools: {
    get_weather: tool({
      description: "The weather in a city",
      inputSchema: z.object({ city: z.string() }),
      execute: async ({ city }) => { out.toolRuns.push(city); return `cold in ${city}`; },
    }),
  },
  stopWhen: stepCountIs(3),
});
out.toolText = withTool.text;
out.toolSteps = withTool.steps.length;
console.log(JSON.stringify(out));
