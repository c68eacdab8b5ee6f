// The Vercel AI SDK against clinvk: `openai(model)` (the Responses API, the SDK's default),
// generateText, streamText, structured output with Output.object and generateObject.
// Prints one JSON object with what each call returned; BASE is clinvk's /openai/v1 URL.
import { createOpenAI } from "@ai-sdk/openai";
import { generateText, streamText, generateObject, Output } from "ai";
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
console.log(JSON.stringify(out));
