// A Node agent asks its user and waits (PROTOCOL §2.1): approvals, questions,
// choices that lapse into their default, and a run cancelled while it waits.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { Publisher, RunEnded } from "../dist/index.js";
import { Agentwire, KEY, eventsOf, newThread } from "./helpers.mjs";

let server;
before(async () => {
  server = await Agentwire.create();
});
after(async () => {
  await server?.stop();
});

/** The user: waits for the next unanswered request of `thread`, then answers it over HTTP. */
async function answerWhenAsked(user, thread, answer) {
  const token = await server.token(user);
  for (let i = 0; i < 400; i++) {
    const events = await eventsOf(server, user, thread);
    const answered = new Set(events.filter((e) => e.event === "input_received").map((e) => e.data.request_id));
    const pending = events.find((e) => e.event === "input_requested" && !answered.has(e.data.request_id));
    if (pending) {
      const url = `${server.base}/v1/threads/${thread}/inputs/${pending.data.request_id}`;
      const headers = { authorization: `Bearer ${token}`, "content-type": "application/json" };
      const resp = await fetch(url, { method: "POST", headers, body: JSON.stringify({ ...answer, run_id: pending.run_id }) });
      assert.equal(resp.status, 200, await resp.text());
      return;
    }
    await new Promise((r) => setTimeout(r, 25));
  }
  throw new Error("never asked");
}

test("a run asks for approval and a reply, and goes on with the answers", async () => {
  const publisher = new Publisher({ baseUrl: server.base, publishKey: KEY });
  const threadId = newThread();
  const result = await publisher.run({ threadId, userId: "ada", agentName: "mailer" }, async (run) => {
    const [approved] = await Promise.all([run.approve("send_email", { to: "bob" }), answerWhenAsked("ada", threadId, { approved: true })]);
    const [city] = await Promise.all([run.ask("Which city?"), answerWhenAsked("ada", threadId, { text: "Lyon", message: "sunny" })]);
    assert.deepEqual(city, { value: { text: "Lyon", message: "sunny" }, timedOut: false, userId: "ada" });
    return { approved, city: city.value.text };
  });
  assert.deepEqual(result, { approved: true, city: "Lyon" });
  const events = await eventsOf(server, "ada", threadId);
  const asked = events.filter((e) => e.event === "input_requested").map((e) => e.data);
  assert.equal(asked[0].tool_name, "send_email");
  assert.deepEqual(asked[0].arguments, { to: "bob" });
  assert.equal(events.at(-1).event, "agent_completed");
  await publisher.close();
});

test("an unanswered choice takes its default, an unanswered approval is a denial", async () => {
  const publisher = new Publisher({ baseUrl: server.base, publishKey: KEY, stream: false });
  const threadId = newThread();
  await publisher.run({ threadId, userId: "bo", agentName: "picker" }, async (run) => {
    const choice = await run.ask("Tea or coffee?", { options: ["tea", "coffee"], default: "tea", timeoutMs: 300 });
    assert.deepEqual(choice, { value: { choice: "tea" }, timedOut: true, userId: undefined });
    assert.equal(await run.approve("delete_everything", {}, { timeoutMs: 300 }), false);
  });
  const sources = (await eventsOf(server, "bo", threadId)).filter((e) => e.event === "input_received").map((e) => e.data.source);
  assert.deepEqual(sources, ["timeout", "timeout"]);
  await publisher.close();
});

test("a run cancelled while it waits throws RunEnded", async () => {
  const publisher = new Publisher({ baseUrl: server.base, publishKey: KEY });
  const threadId = newThread();
  const run = await publisher.startRun({ threadId, userId: "cy", agentName: "waiter" });
  setTimeout(() => void publisher.cancel(run.runId), 300);
  await assert.rejects(run.ask("Anything?"), RunEnded);
  await publisher.close();
});
