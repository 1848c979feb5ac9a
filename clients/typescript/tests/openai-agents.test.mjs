// The OpenAI Agents SDK (JavaScript) adapter against a real agentwire: an agent on the
// SDK's own ScriptedModel calls two tools (one fails) and answers, run streamed and
// published in one line.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { Agent, run, setTracingDisabled, tool } from "@openai/agents";
import { ScriptedModel, assistantMessage, functionCall } from "@openai/agents-core/testing";
import { z } from "zod";

import { Publisher } from "../dist/index.js";
import { publishAgentsRun } from "../dist/openai-agents.js";
import { Agentwire, KEY, eventsOf, newThread } from "./helpers.mjs";

setTracingDisabled(true);

let server;
before(async () => {
  server = await Agentwire.create();
});
after(async () => {
  await server?.stop();
});

const clock = tool({ name: "clock", description: "the time in a zone", parameters: z.object({ tz: z.string() }), execute: async ({ tz }) => `10:00 ${tz}` });
const weather = tool({
  name: "weather",
  description: "the weather in a city",
  parameters: z.object({ city: z.string() }),
  execute: async ({ city }) => {
    throw new Error(`no such city: ${city}`);
  },
});
const ANSWER = "It is 10:00; Atlantis is not a city.";

test("an Agents SDK run streamed with run(..., { stream: true }) is published in one line", async () => {
  const model = new ScriptedModel([
    [functionCall("clock", { tz: "UTC" }, { callId: "call_clock" }), functionCall("weather", { city: "Atlantis" }, { callId: "call_weather" })],
    [assistantMessage(ANSWER)],
  ]);
  const agent = new Agent({ name: "js-agents-example", instructions: "Answer briefly.", model, tools: [clock, weather] });
  const publisher = new Publisher({ baseUrl: server.base, publishKey: KEY });
  const threadId = newThread();
  const output = await publishAgentsRun(publisher, { threadId, userId: "ada", agentName: agent.name }, await run(agent, "time and weather?", { stream: true }));
  await publisher.close();

  assert.equal(output, ANSWER);
  const events = await eventsOf(server, "ada", threadId);
  const kinds = events.map((e) => e.event);
  assert.equal(kinds[0], "agent_started");
  assert.equal(kinds.at(-1), "agent_completed");
  const started = Object.fromEntries(events.filter((e) => e.event === "tool_executing").map((e) => [e.data.tool_call_id, e.data]));
  assert.deepEqual(started.call_clock, { tool_call_id: "call_clock", tool_name: "clock", args: { tz: "UTC" } });
  const done = Object.fromEntries(events.filter((e) => e.event === "tool_completed").map((e) => [e.data.tool_call_id, e.data]));
  assert.equal(done.call_clock.result, "10:00 UTC");
  assert.match(String(done.call_weather.result), /error/i, "the SDK's own text for a failing tool");
  assert.equal(events.filter((e) => e.event === "agent_message").map((e) => e.data.delta).join(""), ANSWER);
  assert.ok(kinds.indexOf("tool_completed") < kinds.indexOf("agent_message"));
  assert.equal(events.at(-1).data.result, ANSWER);
});

test("a failing Agents SDK run ends with agent_error and the error is thrown on", async () => {
  const model = new ScriptedModel([{ type: "error", error: new Error("the model went away") }]);
  const agent = new Agent({ name: "fragile", model });
  const publisher = new Publisher({ baseUrl: server.base, publishKey: KEY });
  const threadId = newThread();
  await assert.rejects(
    (async () => publishAgentsRun(publisher, { threadId, userId: "ada", agentName: "fragile" }, await run(agent, "hello", { stream: true })))(),
    /the model went away/,
  );
  await publisher.close();
  const events = await eventsOf(server, "ada", threadId);
  assert.deepEqual(events.map((e) => e.event), ["agent_started", "agent_error"]);
  assert.match(events[1].data.message, /the model went away/);
});
