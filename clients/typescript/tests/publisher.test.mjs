// The Node publisher against a real agentwire: a run's events in order over the
// publisher WebSocket and over HTTP, refusals that surface, a restart mid-run
// that neither loses nor repeats an event.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { AgentwireError, Publisher } from "../dist/index.js";
import { PublishStream, publishUrl } from "../dist/stream.js";
import { Agentwire, KEY, eventsOf, newThread } from "./helpers.mjs";

let server;
before(async () => {
  server = await Agentwire.create();
});
after(async () => {
  await server?.stop();
});

/** A run with everything a run does: thinking, a tool that works, one that throws, deltas. */
async function fullRun(publisher, threadId) {
  return publisher.run({ threadId, userId: "ada", agentName: "helper", input: { q: "time?" } }, async (run) => {
    await run.thinking("Looking it up", 1);
    const now = await run.tool("clock", { tz: "UTC" }, () => "10:00");
    await assert.rejects(
      run.tool("search", { q: "x" }, () => {
        throw new TypeError("offline");
      }),
      /offline/,
    );
    for (const word of `It is ${now} in UTC, said the clock.`.split(/(?<= )/)) run.message(word);
    return { now };
  });
}

function assertFullRun(events) {
  assert.deepEqual(
    [...new Set(events.map((e) => e.event))],
    ["agent_started", "agent_thinking", "tool_executing", "tool_completed", "agent_message", "agent_completed"],
  );
  assert.deepEqual(events.map((e) => e.seq), events.map((_, i) => i + 1), "gap-free, each once");
  assert.ok(events.every((e) => typeof e.event_id === "string" && e.event_id.length > 0), "every event has an event_id");
  const text = events.filter((e) => e.event === "agent_message").map((e) => e.data.delta).join("");
  assert.equal(text, "It is 10:00 in UTC, said the clock.");
  const tools = events.filter((e) => e.event === "tool_completed");
  assert.deepEqual(tools[0].data.result, "10:00");
  assert.match(tools[1].data.error, /TypeError: offline/);
  assert.deepEqual(events.at(-1).data.result, { now: "10:00" });
}

for (const stream of [true, false]) {
  test(`a run's events arrive in order, each once (${stream ? "publisher WebSocket" : "a request each"})`, async () => {
    const publisher = new Publisher({ baseUrl: server.base, publishKey: KEY, stream });
    const thread = newThread();
    await fullRun(publisher, thread);
    await publisher.close();
    assertFullRun(await eventsOf(server, "ada", thread));
  });
}

for (const stream of [true, false]) {
  test(`a registration sent again is answered as the first and registers one run (${stream ? "publisher WebSocket" : "a request each"})`, async () => {
    const publisher = new Publisher({ baseUrl: server.base, publishKey: KEY, stream });
    const threadId = newThread();
    const runId = await publisher.createRun({ threadId, userId: "ada", agentName: "helper" });
    assert.match(runId, new RegExp(`^run_${threadId}_[0-9a-f]{16}$`));
    // What a retried request or a frame resent after a dropped connection is:
    // the same registration, with the run id the publisher chose.
    assert.equal(await publisher.createRun({ threadId, userId: "ada", agentName: "helper", runId }), runId);
    await assert.rejects(publisher.createRun({ threadId: newThread(), userId: "ada", agentName: "helper", runId }), (e) => e.code === "conflict");
    assert.deepEqual(await publisher.publish(runId, [{ event: "agent_started", data: { agent_name: "helper" } }]), [1]);
    await publisher.close();
    assert.deepEqual((await eventsOf(server, "ada", threadId)).map((e) => e.run_id), [runId]);
  });
}

test("at most so many frames wait for their answers, and they go in the order given", async () => {
  const threadId = newThread();
  const publisher = new Publisher({ baseUrl: server.base, publishKey: KEY, stream: false });
  const runId = await publisher.createRun({ threadId, userId: "ada", agentName: "helper" });
  const headers = { authorization: `Bearer ${KEY}` };
  const stream = new PublishStream({ url: publishUrl(server.base), headers, retries: 3, backoffMs: 50, maxBackoffMs: 500, mostWaiting: 4 });
  let most = 0;
  const note = () => (most = Math.max(most, stream.waiting.size));
  const sent = [stream.send(runId, [{ event: "agent_started", data: { agent_name: "helper" } }]).then(note)];
  for (let n = 0; n < 200; n++) {
    sent.push(stream.send(runId, [{ event: "agent_message", data: { message_id: "m", delta: `t${n} ` } }]).then(note));
  }
  await Promise.all(sent);
  await stream.close();
  assert.ok(most <= 4, `${most} frames waited at once`);
  const deltas = (await eventsOf(server, "ada", threadId)).filter((e) => e.event === "agent_message").map((e) => e.data.delta);
  assert.deepEqual(deltas, Array.from({ length: 200 }, (_, n) => `t${n} `));
});

test("a run whose body throws ends with agent_error and the error is thrown on", async () => {
  const publisher = new Publisher({ baseUrl: server.base, publishKey: KEY });
  const thread = newThread();
  const broken = publisher.run({ threadId: thread, userId: "ada", agentName: "helper" }, async (run) => {
    run.message("half an ans");
    throw new RangeError("model went away");
  });
  await assert.rejects(broken, RangeError);
  await publisher.close();
  const events = await eventsOf(server, "ada", thread);
  assert.deepEqual(events.map((e) => e.event), ["agent_started", "agent_message", "agent_error"]);
  assert.equal(events[2].data.code, "failed");
  assert.match(events[2].data.message, /model went away/);
});

test("a delta the server refuses is thrown by the run's next awaited call", async () => {
  const publisher = new Publisher({ baseUrl: server.base, publishKey: KEY });
  const run = await publisher.startRun({ threadId: newThread(), userId: "ada", agentName: "helper" });
  await run.complete("done");
  run.message("after the end");
  await assert.rejects(run.flush(), (e) => e instanceof AgentwireError && e.status === 409 && e.code === "lifecycle_violation");
  await publisher.close();
});

test("a bad publish key is refused at once, over HTTP and at the WebSocket handshake", async () => {
  const options = { threadId: newThread(), userId: "ada", agentName: "helper" };
  const overHttp = new Publisher({ baseUrl: server.base, publishKey: "not-a-key", retries: 50, stream: false });
  await assert.rejects(overHttp.createRun(options), (e) => e instanceof AgentwireError && e.status === 401);
  const streaming = new Publisher({ baseUrl: server.base, publishKey: "not-a-key", retries: 50 });
  const began = Date.now();
  await assert.rejects(streaming.createRun(options), (e) => e instanceof AgentwireError && e.status === 401);
  await assert.rejects(streaming.publish("run_thread_x_00000000", []), (e) => e instanceof AgentwireError && e.status === 401);
  assert.ok(Date.now() - began < 2_000, "not retried");
  await overHttp.close();
  await streaming.close();
});

test("token deltas of one turn go together, and thousands of them arrive in order", async () => {
  const publisher = new Publisher({ baseUrl: server.base, publishKey: KEY });
  const thread = newThread();
  const run = await publisher.startRun({ threadId: thread, userId: "ada", agentName: "streamer" });
  for (let i = 0; i < 3000; i++) run.message(`${i} `);
  await run.complete();
  await publisher.close();
  const events = await eventsOf(server, "ada", thread);
  const deltas = events.filter((e) => e.event === "agent_message").map((e) => e.data.delta);
  assert.equal(deltas.length, 3000);
  assert.equal(deltas.join(""), Array.from({ length: 3000 }, (_, i) => `${i} `).join(""));
  assert.equal(run.seqs.length, 3002, "every event's seq came back to the run");
});

test("a restart mid-run loses nothing and repeats nothing: unanswered frames are sent again", async () => {
  const publisher = new Publisher({ baseUrl: server.base, publishKey: KEY });
  const thread = newThread();
  const run = await publisher.startRun({ threadId: thread, userId: "ada", agentName: "survivor" });
  for (let i = 0; i < 200; i++) run.message(`a${i} `);
  await server.kill();
  for (let i = 0; i < 200; i++) run.message(`b${i} `);
  await server.start();
  await run.thinking("still here");
  await run.complete();
  await publisher.close();
  const events = await eventsOf(server, "ada", thread);
  assert.deepEqual(events.map((e) => e.seq), events.map((_, i) => i + 1));
  const ids = events.map((e) => e.event_id);
  assert.equal(new Set(ids).size, ids.length, "no event stored twice");
  const deltas = events.filter((e) => e.event === "agent_message").map((e) => e.data.delta).join("");
  const want = [...Array.from({ length: 200 }, (_, i) => `a${i} `), ...Array.from({ length: 200 }, (_, i) => `b${i} `)];
  assert.equal(deltas, want.join(""));
  assert.deepEqual(events.slice(-2).map((e) => e.event), ["agent_thinking", "agent_completed"]);
});
