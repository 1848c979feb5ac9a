// The example pages (examples/watch.html, examples/legacy.html) in a real browser:
// served from another origin than agentwire's, as a team's own frontend would be,
// they show a run published while they watch.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { WAIT, examplePages } from "./server.mjs";

let bench;
let browser;
let server;
let pagesBase;

before(async () => {
  bench = await examplePages("80ms");
  ({ browser, server, base: pagesBase } = bench);
});

after(async () => {
  await bench?.close();
});

/** Registers a run into `thread` for alice, as an external agent; answers a function that publishes its events. */
async function registerRun(thread) {
  const created = await server.publish("/v1/runs", { thread_id: thread, user_id: "alice", agent_name: "example-agent" });
  const run = created.body.run_id;
  return () =>
    server.publish(`/v1/runs/${run}/events`, {
      events: [
        { event: "agent_started", data: { agent_name: "example-agent" } },
        { event: "agent_thinking", data: { thought: "checking the clock" } },
        { event: "tool_executing", data: { tool_call_id: "c1", tool_name: "clock", args: {} } },
        { event: "tool_completed", data: { tool_call_id: "c1", result: "10:00" } },
        { event: "agent_message", data: { message_id: "m1", delta: "It is 10:00." } },
        { event: "agent_completed", data: { result: "10:00" } },
      ],
    });
}

const KINDS = ["agent_started", "agent_thinking", "tool_executing", "tool_completed", "agent_message", "agent_completed"];

for (const [file, ready, selector, attribute] of [
  ["watch.html", "#state:text-is('open')", "#events li", "data-event"],
  ["legacy.html", "body[data-subscribed]", "#messages li", "data-type"],
]) {
  test(`examples/${file}, served from another origin, shows a run published while it watches`, async () => {
    const thread = `thread_page${Date.now().toString(36)}`;
    const publish = await registerRun(thread);
    const page = await browser.newPage();
    const query = new URLSearchParams({ server: server.base, thread, token: await server.token("alice") });
    await page.goto(`${pagesBase}/examples/${file}?${query}`);
    await page.waitForSelector(ready, { state: "attached", timeout: WAIT });
    await publish();
    await page.waitForFunction((s) => document.querySelectorAll(s).length >= 6, selector, { timeout: WAIT });
    const shown = await page.locator(selector).evaluateAll((items, a) => items.map((i) => i.getAttribute(a)), attribute);
    assert.deepEqual(shown, KINDS);
    await page.close();
  });
}
