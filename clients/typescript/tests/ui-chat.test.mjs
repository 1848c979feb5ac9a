// useChat's side of the AI SDK against a real agentwire: the SDK's own
// DefaultChatTransport posts a chat and reads the run back as one UI message,
// and its resume (reconnectToStream) finds the running run from its start.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { DefaultChatTransport, readUIMessageStream } from "ai";

import { Agentwire, eventsOf, newThread } from "./helpers.mjs";

let server;
before(async () => {
  // Slow enough steps that a run is still going when the test resumes it.
  server = await Agentwire.create("150ms");
});
after(async () => {
  await server?.stop();
});

async function transportFor(user) {
  const token = await server.token(user);
  return new DefaultChatTransport({ api: `${server.base}/v1/ui/chat`, headers: { authorization: `Bearer ${token}` } });
}

/** The last state of the assistant message a UI message stream builds. */
async function lastMessage(stream) {
  let message;
  for await (message of readUIMessageStream({ stream })) {
    // Each step is the message so far; the last is the whole of it.
  }
  return message;
}

function partsOf(message) {
  return {
    text: message.parts.filter((p) => p.type === "text").map((p) => p.text).join(""),
    reasoning: message.parts.filter((p) => p.type === "reasoning").length,
    tools: message.parts.filter((p) => p.type === "dynamic-tool").map((p) => [p.toolName, p.state]),
  };
}

test("a chat posted by useChat's transport streams its run as one assistant message", async () => {
  const transport = await transportFor("ada");
  const thread = newThread();
  const messages = [{ id: "u1", role: "user", parts: [{ type: "text", text: "what is 6 * 7?" }] }];
  const stream = await transport.sendMessages({ chatId: thread, messages, trigger: "submit-message", messageId: undefined, abortSignal: undefined });
  const message = await lastMessage(stream);

  assert.equal(message.role, "assistant");
  const events = await eventsOf(server, "ada", thread);
  const run = events.find((e) => e.event === "agent_started").run_id;
  assert.equal(message.id, run, "the message is the run");
  assert.equal(events[0].event, "user_message", "an ordinary run of the thread");
  assert.equal(events.at(-1).event, "agent_completed");
  const { text, reasoning, tools } = partsOf(message);
  const deltas = events.filter((e) => e.event === "agent_message").map((e) => e.data.delta).join("");
  assert.equal(text, deltas, "the text is the run's deltas, each once");
  assert.match(text, /42/);
  assert.equal(reasoning, events.filter((e) => e.event === "agent_thinking").length);
  assert.ok(tools.length > 0 && tools.every(([, state]) => state === "output-available"), JSON.stringify(tools));
});

test("a reloaded page resumes the running run from its start; with nothing running the answer is 204", async () => {
  const transport = await transportFor("ada");
  const thread = newThread();
  const token = await server.token("ada");
  const headers = { authorization: `Bearer ${token}`, "content-type": "application/json" };
  const posted = await fetch(`${server.base}/v1/threads/${thread}/messages`, { method: "POST", headers, body: JSON.stringify({ text: "what is 6 * 7?" }) });
  assert.equal(posted.status, 202);
  // Mid-run: some of it has happened when the page comes back.
  for (let i = 0; i < 100 && !(await eventsOf(server, "ada", thread)).some((e) => e.event === "tool_completed"); i++) {
    await new Promise((r) => setTimeout(r, 50));
  }
  const stream = await transport.reconnectToStream({ chatId: thread });
  assert.ok(stream, "a running run is resumed");
  const message = await lastMessage(stream);
  const events = await eventsOf(server, "ada", thread);
  assert.equal(events.at(-1).event, "agent_completed", "the resumed stream lasted to the run's end");
  const deltas = events.filter((e) => e.event === "agent_message").map((e) => e.data.delta).join("");
  const { text, reasoning } = partsOf(message);
  assert.equal(text, deltas, "the whole answer, from the run's start, each delta once");
  assert.equal(reasoning, events.filter((e) => e.event === "agent_thinking").length, "what came before the reload too");
  assert.equal(await transport.reconnectToStream({ chatId: thread }), null, "nothing runs now: 204");
});

test("the routes check who asks: another user's thread is refused", async () => {
  const thread = newThread();
  const owner = await transportFor("ada");
  const messages = [{ id: "u1", role: "user", parts: [{ type: "text", text: "hello" }] }];
  await lastMessage(await owner.sendMessages({ chatId: thread, messages, trigger: "submit-message" }));
  const intruder = await transportFor("mallory");
  await assert.rejects(intruder.sendMessages({ chatId: thread, messages, trigger: "submit-message" }), /forbidden/);
  await assert.rejects(intruder.reconnectToStream({ chatId: thread }), /forbidden/);
});
