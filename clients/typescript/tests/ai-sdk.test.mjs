// The Vercel AI SDK adapter against a real agentwire: streamText over the SDK's own
// mock language model (a tool call in the first step, reasoning and an answer in the
// second), published in one line; the thread then holds the run as the mapping says.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { jsonSchema, simulateReadableStream, stepCountIs, streamText, tool } from "ai";
import { MockLanguageModelV3 } from "ai/test";

import { Publisher } from "../dist/index.js";
import { publishAiStream } from "../dist/ai-sdk.js";
import { Agentwire, KEY, eventsOf, newThread } from "./helpers.mjs";

let server;
before(async () => {
  server = await Agentwire.create();
});
after(async () => {
  await server?.stop();
});

const usage = {
  inputTokens: { total: 10, noCache: 10, cacheRead: undefined, cacheWrite: undefined },
  outputTokens: { total: 20, text: 20, reasoning: undefined },
};

/** A model that calls `clock` first, then thinks and answers in words. */
function scriptedModel({ failSecondStep = false } = {}) {
  const step = (chunks) => ({ stream: simulateReadableStream({ chunks, chunkDelayInMs: 1 }) });
  const answer = ["It ", "is ", "ten ", "o'clock."];
  return new MockLanguageModelV3({
    doStream: [
      step([
        { type: "stream-start", warnings: [] },
        { type: "tool-call", toolCallId: "call_1", toolName: "clock", input: JSON.stringify({ tz: "UTC" }) },
        { type: "finish", finishReason: { unified: "tool-calls", raw: "tool_calls" }, usage },
      ]),
      step([
        { type: "stream-start", warnings: [] },
        { type: "reasoning-start", id: "r1" },
        { type: "reasoning-delta", id: "r1", delta: "The clock said 10:00, " },
        { type: "reasoning-delta", id: "r1", delta: "so I can answer." },
        { type: "reasoning-end", id: "r1" },
        { type: "text-start", id: "t1" },
        ...answer.map((delta) => ({ type: "text-delta", id: "t1", delta })),
        ...(failSecondStep ? [{ type: "error", error: new Error("the provider hung up") }] : []),
        { type: "text-end", id: "t1" },
        { type: "finish", finishReason: { unified: "stop", raw: "stop" }, usage },
      ]),
    ],
  });
}

const tools = {
  clock: tool({
    description: "the time in a zone",
    inputSchema: jsonSchema({ type: "object", properties: { tz: { type: "string" } }, required: ["tz"] }),
    execute: async ({ tz }) => ({ tz, time: "10:00" }),
  }),
};

test("streamText's parts become the run's events, in one line", async () => {
  const publisher = new Publisher({ baseUrl: server.base, publishKey: KEY });
  const threadId = newThread();
  const options = { threadId, userId: "ada", agentName: "ai-sdk-agent", input: "what time is it?" };
  const run = streamText({ model: scriptedModel(), tools, prompt: "what time is it?", stopWhen: stepCountIs(3) });
  const result = await publishAiStream(publisher, options, run);
  await publisher.close();

  assert.equal(result.text, "It is ten o'clock.");
  assert.equal(result.finishReason, "stop");
  const events = await eventsOf(server, "ada", threadId);
  assert.deepEqual(events.map((e) => e.event), [
    "agent_started",
    "tool_executing",
    "tool_completed",
    "agent_thinking",
    "agent_message",
    "agent_message",
    "agent_message",
    "agent_message",
    "agent_completed",
  ]);
  assert.equal(events[0].data.agent_name, "ai-sdk-agent");
  assert.deepEqual(events[1].data, { tool_call_id: "call_1", tool_name: "clock", args: { tz: "UTC" } });
  assert.equal(events[2].data.tool_call_id, "call_1");
  assert.deepEqual(events[2].data.result, { tz: "UTC", time: "10:00" });
  assert.equal(events[3].data.thought, "The clock said 10:00, so I can answer.");
  const messages = events.filter((e) => e.event === "agent_message");
  assert.equal(new Set(messages.map((e) => e.data.message_id)).size, 1, "one message id per text part");
  assert.equal(messages.map((e) => e.data.delta).join(""), "It is ten o'clock.");
  assert.deepEqual(events.at(-1).data.result, { text: "It is ten o'clock.", finishReason: "stop" });
});

test("a tool that throws ends its call with the error; a stream error ends the run with agent_error", async () => {
  const publisher = new Publisher({ baseUrl: server.base, publishKey: KEY });
  const threadId = newThread();
  const failing = {
    clock: tool({
      inputSchema: jsonSchema({ type: "object", properties: { tz: { type: "string" } } }),
      execute: async () => {
        throw new Error("no clock here");
      },
    }),
  };
  const run = streamText({
    model: scriptedModel({ failSecondStep: true }),
    tools: failing,
    prompt: "what time is it?",
    stopWhen: stepCountIs(3),
    onError: () => {},
  });
  const options = { threadId, userId: "ada", agentName: "ai-sdk-agent" };
  await assert.rejects(publishAiStream(publisher, options, run), /the provider hung up/);
  await publisher.close();

  const events = await eventsOf(server, "ada", threadId);
  const kinds = events.map((e) => e.event);
  assert.deepEqual(kinds.slice(0, 3), ["agent_started", "tool_executing", "tool_completed"]);
  assert.match(events[2].data.error, /no clock here/);
  assert.equal(kinds.at(-1), "agent_error");
  assert.equal(events.at(-1).data.code, "failed");
  assert.match(events.at(-1).data.message, /the provider hung up/);
});
