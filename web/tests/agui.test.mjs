// POST /v1/agui driven by the official AG-UI client, with its own event verification on.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { HttpAgent } from "@ag-ui/client";
import { Agentwire } from "./server.mjs";

let server;

before(async () => {
  server = await Agentwire.create("5ms");
});

after(async () => {
  await server?.stop();
});

async function agent(user, threadId, text) {
  return new HttpAgent({
    url: `${server.base}/v1/agui`,
    headers: { authorization: `Bearer ${await server.token(user)}` },
    threadId,
    initialMessages: [{ id: "m1", role: "user", content: text }],
  });
}

test("a run streams as verified AG-UI events and lands in the thread's log", async () => {
  const events = [];
  const runner = await agent("agui", "thread_agui1", "what is 6 * 7?");
  const { newMessages } = await runner.runAgent({ runId: "agui-run-1" }, { onEvent: ({ event }) => events.push(event) });
  const types = events.map((e) => e.type);
  assert.equal(types[0], "RUN_STARTED");
  assert.equal(types.at(-1), "RUN_FINISHED");
  for (const t of ["REASONING_START", "REASONING_MESSAGE_CONTENT", "TOOL_CALL_START", "TOOL_CALL_ARGS", "TOOL_CALL_END", "TOOL_CALL_RESULT", "TEXT_MESSAGE_START", "TEXT_MESSAGE_CONTENT", "TEXT_MESSAGE_END"]) {
    assert.ok(types.includes(t), `${t} in ${types.join(",")}`);
  }
  const start = events.find((e) => e.type === "TOOL_CALL_START" && e.toolCallName === "calculator");
  assert.ok(start, "the calculator call");
  const args = events.filter((e) => e.type === "TOOL_CALL_ARGS" && e.toolCallId === start.toolCallId).map((e) => e.delta).join("");
  assert.deepEqual(JSON.parse(args), { expression: "6 * 7" });
  const result = events.find((e) => e.type === "TOOL_CALL_RESULT" && e.toolCallId === start.toolCallId);
  assert.equal(result.content, "42");
  const text = events.filter((e) => e.type === "TEXT_MESSAGE_CONTENT").map((e) => e.delta).join("");
  assert.match(text, /6 \* 7 = 42/);
  assert.ok(newMessages.some((m) => m.role === "assistant" && String(m.content).includes("6 * 7 = 42")));
  // The same run is an ordinary run of the thread.
  const stored = await server.history("thread_agui1", "agui");
  assert.ok(stored.some((e) => e.run_id === "agui-run-1" && e.event === "agent_completed"));
});

test("a failing run ends with RUN_ERROR, and a taken run id is refused", async () => {
  const events = [];
  const runner = await agent("agui", "thread_agui2", "/fail now");
  await runner.runAgent({ runId: "agui-run-2" }, { onEvent: ({ event }) => events.push(event), onRunFailed: () => ({ stopPropagation: true }) }).catch(() => {});
  const last = events.at(-1);
  assert.equal(last.type, "RUN_ERROR");
  assert.equal(last.code, "failed");

  const token = await server.token("agui");
  const again = await fetch(`${server.base}/v1/agui`, {
    method: "POST",
    headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
    body: JSON.stringify({ threadId: "thread_agui2", runId: "agui-run-2", messages: [{ id: "x", role: "user", content: "hi" }], tools: [], context: [], state: {}, forwardedProps: {} }),
  });
  assert.equal(again.status, 409);
  const other = await fetch(`${server.base}/v1/agui`, {
    method: "POST",
    headers: { authorization: `Bearer ${await server.token("intruder")}`, "content-type": "application/json" },
    body: JSON.stringify({ threadId: "thread_agui2", runId: "agui-run-3", messages: [{ id: "x", role: "user", content: "hi" }] }),
  });
  assert.equal(other.status, 403, "another user's thread");
});

test("a run that asks ends with AG-UI's interrupt outcome, and a resume answers it and goes on", async () => {
  const runner = await agent("agui", "thread_agui3", "what time is it? ask me first");
  const first = [];
  await runner.runAgent({ runId: "agui-ask-1" }, { onEvent: ({ event }) => first.push(event) });
  const finished = first.at(-1);
  assert.equal(finished.type, "RUN_FINISHED");
  assert.equal(finished.outcome.type, "interrupt", JSON.stringify(finished));
  assert.equal(first.filter((e) => e.type === "TOOL_CALL_START").length, 0, "nothing ran before the answer");
  const [interrupt] = finished.outcome.interrupts;
  assert.equal(interrupt.reason, "confirmation");
  assert.equal(interrupt.metadata.toolName, "clock");
  assert.deepEqual(interrupt.responseSchema.required, ["approved"]);
  assert.ok(Date.parse(interrupt.expiresAt) > Date.now(), "it says when it lapses");

  // New input without answering is refused while the thread waits (AG-UI's rule 4).
  const token = await server.token("agui");
  const blocked = await fetch(`${server.base}/v1/agui`, {
    method: "POST",
    headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
    body: JSON.stringify({ threadId: "thread_agui3", runId: "agui-ask-x", messages: [{ id: "y", role: "user", content: "hi" }] }),
  });
  assert.equal(blocked.status, 409);
  const wrong = await fetch(`${server.base}/v1/agui`, {
    method: "POST",
    headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
    body: JSON.stringify({ threadId: "thread_agui3", runId: "agui-ask-y", messages: [], resume: [{ interruptId: interrupt.id, status: "resolved", payload: { text: "yes" } }] }),
  });
  assert.equal(wrong.status, 400, "an answer of the wrong kind");

  const second = [];
  const resume = [{ interruptId: interrupt.id, status: "resolved", payload: { approved: true } }];
  await runner.runAgent({ runId: "agui-ask-2", resume }, { onEvent: ({ event }) => second.push(event) });
  assert.equal(second[0].type, "RUN_STARTED");
  assert.equal(second[0].runId, "agui-ask-2");
  const clock = second.find((e) => e.type === "TOOL_CALL_START");
  assert.equal(clock?.toolCallName, "clock", "the run went on with its clock");
  assert.equal(second.at(-1).type, "RUN_FINISHED");
  assert.notEqual(second.at(-1).outcome?.type, "interrupt");
  const stored = await server.history("thread_agui3", "agui");
  const received = stored.find((e) => e.event === "input_received");
  assert.deepEqual(received.data.answer, { approved: true });
  assert.equal(stored.at(-1).event, "agent_completed");
  assert.equal(new Set(stored.filter((e) => e.event !== "user_message").map((e) => e.run_id)).size, 1, "one agentwire run throughout");
});

test("a cancelled resume denies the approval", async () => {
  const runner = await agent("agui", "thread_agui4", "ask me first, then tell the time");
  const first = [];
  await runner.runAgent({ runId: "agui-deny-1" }, { onEvent: ({ event }) => first.push(event) });
  const [interrupt] = first.at(-1).outcome.interrupts;
  const second = [];
  await runner.runAgent({ runId: "agui-deny-2", resume: [{ interruptId: interrupt.id, status: "cancelled" }] }, { onEvent: ({ event }) => second.push(event) });
  assert.equal(second.filter((e) => e.type === "TOOL_CALL_START").length, 0, "denied: no clock");
  const text = second.filter((e) => e.type === "TEXT_MESSAGE_CONTENT").map((e) => e.delta).join("");
  assert.match(text, /did not let me read the clock/);
  const stored = await server.history("thread_agui4", "agui");
  const received = stored.find((e) => e.event === "input_received");
  assert.equal(received.data.declined, true);
});

test("a run cancelled while it streams finishes with AG-UI's cancelled outcome", async () => {
  const slow = await Agentwire.create("300ms");
  try {
    const token = await slow.token("agui");
    const runner = new HttpAgent({
      url: `${slow.base}/v1/agui`,
      headers: { authorization: `Bearer ${token}` },
      threadId: "thread_agui5",
      initialMessages: [{ id: "m1", role: "user", content: "what is 1 + 1?" }],
    });
    const events = [];
    const cancel = () =>
      fetch(`${slow.base}/v1/runs/agui-cancel-1/cancel`, { method: "POST", headers: { authorization: `Bearer ${token}` } });
    await runner.runAgent({ runId: "agui-cancel-1" }, {
      onEvent: ({ event }) => {
        events.push(event);
        if (event.type === "REASONING_START" && events.filter((e) => e.type === "REASONING_START").length === 1) void cancel();
      },
    });
    const last = events.at(-1);
    assert.equal(last.type, "RUN_FINISHED", JSON.stringify(last));
    assert.deepEqual(last.outcome, { type: "cancelled" });
  } finally {
    await slow.stop();
  }
});
