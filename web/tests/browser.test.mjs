// The pages in a real browser: headless Debian Chromium driven by Playwright,
// against a real agentwire process on a loopback port (dev mode, embedded store).
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { Agentwire, WAIT, launchChromium } from "./server.mjs";

const root = new URL("../..", import.meta.url).pathname;
// Screenshots go to docs/ (and into the README) when asked, else next to the build.
const SHOTS = process.env.UPDATE_SCREENSHOTS ? join(root, "docs/screenshots") : join(root, "target/screenshots");

let browser;
let server;

const base = () => server.base;

before(async () => {
  server = await Agentwire.create();
  browser = await launchChromium();
  mkdirSync(SHOTS, { recursive: true });
});

after(async () => {
  await browser?.close();
  await server?.stop();
});

async function ask(page, text) {
  await page.fill("#text", text);
  await page.press("#text", "Enter");
}

const runs = (page) => page.locator("article.run");

/** A chat page for `user` on a new thread, connected; with the thread's id and `#hash`. */
async function threadPage(user, viewport = { width: 1180, height: 820 }) {
  const page = await browser.newPage({ viewport });
  await page.goto(`${base()}/?user=${user}`);
  await page.click("#new-thread");
  await page.waitForFunction(() => location.hash.startsWith("#thread_"));
  await page.waitForSelector("#conn[data-state=open]", { timeout: WAIT });
  const hash = await page.evaluate(() => location.hash);
  return { page, hash, thread: hash.slice(1) };
}

/** Another tab of `user` on the thread `hash`, connected. */
async function secondTab(user, hash) {
  const tab = await browser.newPage();
  await tab.goto(`${base()}/?user=${user}${hash}`);
  await tab.waitForSelector("#conn[data-state=open]", { timeout: WAIT });
  return tab;
}

test("a message on the chat page shows the whole run as it happens, in every tab", async () => {
  const { page, hash } = await threadPage("tester");
  // A tool's spinner is on screen only while it runs (tens of milliseconds here): watch the DOM for it.
  await page.evaluate(() => {
    window.sawSpinner = false;
    const look = () => (window.sawSpinner ||= !!document.querySelector(".step.tool.pending .spinner"));
    new MutationObserver(look).observe(document.body, { childList: true, subtree: true });
  });
  await ask(page, "what is 6 * 7?");
  await page.waitForSelector("article.run .status.completed", { timeout: WAIT });
  assert.ok(await page.evaluate(() => window.sawSpinner), "a spinner showed while a tool ran");

  const run = runs(page).first();
  assert.equal(await run.locator(".agent-name").textContent(), "demo", "agent_started names the agent");
  assert.ok((await run.locator('[data-event="agent_thinking"]').count()) >= 2, "agent_thinking is shown");
  const calculator = run.locator(".step.tool", { hasText: "calculator" });
  assert.match(await calculator.locator(".tool-args").textContent(), /6 \* 7/, "tool_executing shows the arguments");
  assert.match(await calculator.locator(".tool-result").textContent(), /42/, "tool_completed shows the result");
  assert.equal(await run.locator(".spinner").count(), 0, "no spinner is left once every tool completed");
  assert.match(await run.locator(".answer").textContent(), /6 \* 7 = 42/, "agent_message deltas make the answer");
  assert.match(await run.locator(".status").textContent(), /done/, "agent_completed marks the run done");
  assert.equal(await page.locator(".bubble.user").textContent(), "what is 6 * 7?");

  // A second tab on the same thread draws the same events.
  const tab = await secondTab("tester", hash);
  await tab.waitForSelector("article.run .status.completed", { timeout: WAIT });
  const seqs = await page.evaluate(() => window.agentwireChat.seqs);
  await tab.waitForFunction((n) => window.agentwireChat.seqs.length >= n, seqs.length);
  assert.deepEqual(await tab.evaluate(() => window.agentwireChat.seqs), seqs);
  await page.screenshot({ path: join(SHOTS, "chat.png") });
  await tab.close();
  await page.close();
});

test("an approval asked in one tab is answered there, and the run goes on in the other", async () => {
  const { page, hash } = await threadPage("approver");
  const other = await secondTab("approver", hash);

  await ask(page, "what time is it? ask me first");
  const open = '.step.input[data-kind="approval"][data-state="open"]';
  for (const tab of [page, other]) {
    await tab.waitForSelector(`${open} button.approve`, { timeout: WAIT });
    const box = tab.locator(open);
    assert.equal(await box.locator(".tool-name").textContent(), "clock", "the tool it wants to run");
    assert.match(await box.locator(".tool-args").textContent(), /UTC/, "and its arguments");
    assert.equal(await tab.locator(".step.tool").count(), 0, "nothing runs before the answer");
  }
  await page.screenshot({ path: join(SHOTS, "approval.png") });
  await page.click(`${open} button.approve`);
  // The other tab sees the decision and the run going on to its end.
  await other.waitForSelector('.step.input[data-state="answered"]', { timeout: WAIT });
  assert.match(await other.locator(".input-decision").textContent(), /approved by approver/);
  assert.equal(await other.locator(".step.input button").count(), 0, "no buttons left once it is answered");
  await other.waitForSelector("article.run .status.completed", { timeout: WAIT });
  assert.match(await other.locator(".step.tool", { hasText: "clock" }).locator(".tool-result").textContent(), /UTC/);
  assert.match(await other.locator(".answer").textContent(), /it is/);

  // Denied: the run ends without its clock, and says so.
  await ask(page, "again, ask me first");
  await page.waitForSelector(`${open} button.deny`, { timeout: WAIT });
  await other.waitForSelector(`${open} button.deny`, { timeout: WAIT });
  await other.click(`${open} button.deny`);
  await page.waitForFunction(() => document.querySelectorAll("article.run .status.completed").length === 2, null, { timeout: WAIT });
  assert.match(await runs(page).nth(1).locator(".input-decision").textContent(), /denied/);
  assert.match(await runs(page).nth(1).locator(".answer").textContent(), /did not let me read the clock/);
  assert.equal(await runs(page).nth(1).locator(".step.tool").count(), 0);
  await other.close();
  await page.close();
});

test("a question is answered in a field, a choice with a button, and a lapsed request shows its default", async () => {
  const { page, thread } = await threadPage("chooser");
  // An external agent asks three things at once.
  const { body: run } = await server.publish("/v1/runs", { thread_id: thread, user_id: "chooser", agent_name: "asker" });
  const ask = (request_id, data) => ({ event: "input_requested", data: { request_id, prompt: `${request_id}?`, ...data } });
  const published = await server.publish(`/v1/runs/${run.run_id}/events`, { events: [
    { event: "agent_started", data: { agent_name: "asker" } },
    ask("drink", { kind: "choice", options: ["tea", "coffee"] }),
    ask("city", { kind: "text" }),
    ask("hurry", { kind: "choice", options: ["now", "later"], default: "later", timeout_ms: 300 }),
  ] });
  assert.equal(published.status, 200, JSON.stringify(published.body));
  await page.waitForSelector('.step.input[data-request="drink"] button.choice', { timeout: WAIT });
  await page.click('.step.input[data-request="drink"] button.choice:has-text("coffee")');
  await page.fill('.step.input[data-request="city"] input.input-text', "Lyon");
  await page.click('.step.input[data-request="city"] button.reply');
  await page.waitForSelector('.step.input[data-request="drink"][data-state="answered"]', { timeout: WAIT });
  await page.waitForSelector('.step.input[data-request="city"][data-state="answered"]', { timeout: WAIT });
  assert.match(await page.locator('[data-request="drink"] .input-decision').textContent(), /chose “coffee”/);
  assert.match(await page.locator('[data-request="city"] .input-decision').textContent(), /replied “Lyon”/);
  // Nobody answers the third: the watchdog takes its default within a second or so.
  await page.waitForSelector('.step.input[data-request="hurry"][data-state="timed_out"]', { timeout: WAIT });
  assert.match(await page.locator('[data-request="hurry"] .input-decision').textContent(), /no answer in time: chose “later”/);
  const events = await server.history(thread, "chooser");
  const received = events.filter((e) => e.event === "input_received").map((e) => [e.data.request_id, e.data.source]);
  assert.deepEqual(received.sort(), [["city", "user"], ["drink", "user"], ["hurry", "timeout"]]);
  await page.close();
});

test("deleting a thread removes it on the server and from every tab watching it", async () => {
  const { page, hash, thread: id } = await threadPage("deleter");
  await ask(page, "what is 2 + 2?");
  await page.waitForSelector("article.run .status.completed", { timeout: WAIT });
  const tab = await secondTab("deleter", hash);
  await tab.waitForSelector("article.run .status.completed", { timeout: WAIT });

  // One click arms the button, the second deletes.
  const button = page.locator(`li[data-thread="${id}"] .delete-thread`);
  await button.click();
  assert.equal(await button.textContent(), "delete?");
  await button.click();
  await page.waitForFunction((t) => !document.querySelector(`li[data-thread="${t}"]`), id, { timeout: WAIT });
  await page.waitForFunction(() => document.querySelectorAll("article.run").length === 0, null, { timeout: WAIT });
  // The other tab is told by the server, not by the first tab.
  await tab.waitForSelector(".notice", { timeout: WAIT });
  assert.match(await tab.locator(".notice").last().textContent(), /deleted/);
  await tab.waitForFunction((t) => !document.querySelector(`li[data-thread="${t}"]`), id, { timeout: WAIT });
  assert.equal(await tab.locator("article.run").count(), 0, "the other tab no longer shows the thread");
  const token = await page.evaluate(async () => (await (await fetch("/dev/token?user=deleter")).json()).token);
  const resp = await fetch(`${base()}/v1/threads/${id}/events`, { headers: { authorization: `Bearer ${token}` } });
  assert.equal(resp.status, 404, "the thread is gone on the server");
  await tab.close();
  await page.close();
});

test("dropped connections and a server restart resume with every event shown once", async () => {
  const { page, thread } = await threadPage("resumer");

  // The page's socket drops mid-run: events published meanwhile arrive after the resume.
  await ask(page, "what is 12 * (3 + 4)?");
  await page.waitForSelector('[data-event="agent_thinking"]', { timeout: WAIT });
  await page.evaluate(() => window.agentwireChat.client.dropConnection());
  await page.waitForSelector("article.run .status.completed", { timeout: WAIT });

  // The server itself dies and comes back on the same port and data.
  await server.kill();
  await page.waitForSelector("#conn:not([data-state=open])", { timeout: WAIT });
  await server.start();
  await page.waitForSelector("#conn[data-state=open]", { timeout: WAIT });
  await ask(page, "/fail");
  await page.waitForSelector("article.run .status.error", { timeout: WAIT });

  const shown = await page.evaluate(() => window.agentwireChat.seqs);
  const stored = (await server.history(thread, "resumer")).map((e) => e.seq);
  assert.deepEqual(shown, stored, "the page shows each stored event once, in order");
  assert.equal(await runs(page).count(), 2);
  // A reload draws the same thing from the log.
  await page.reload();
  await page.waitForSelector("article.run .status.error", { timeout: WAIT });
  await page.waitForFunction((n) => window.agentwireChat.seqs.length >= n, stored.length);
  assert.deepEqual(await page.evaluate(() => window.agentwireChat.seqs), stored);
  await page.close();
});

test("the dashboard's figures move when load is applied", async () => {
  const page = await browser.newPage({ viewport: { width: 1180, height: 900 } });
  await page.goto(`${base()}/dashboard`);
  await page.waitForFunction(() => window.agentwireDashboard.frames >= 1, null, { timeout: WAIT });
  const before = await page.evaluate(() => window.agentwireDashboard.last.nodes[0].totals.appended);
  const shownBefore = await page.textContent("#m-published-total");

  const created = await server.publish("/v1/runs", { thread_id: "thread_load", user_id: "ops", agent_name: "load" });
  assert.equal(created.status, 201);
  const run = created.body.run_id;
  assert.equal((await server.publish(`/v1/runs/${run}/events`, { event: "agent_started", data: { agent_name: "load" } })).status, 200);
  // Someone watches the thread, so there are deliveries (and their lag) to show.
  const watcher = await browser.newPage();
  await watcher.goto(`${base()}/?user=ops#thread_load`);
  await watcher.waitForSelector("#conn[data-state=open]", { timeout: WAIT });
  const rounds = 16;
  for (let round = 0; round < rounds; round++) {
    const events = Array.from({ length: 10 + 5 * (round % 4) }, (_, i) => ({ event: "agent_thinking", data: { thought: `step ${round}-${i}` } }));
    assert.equal((await server.publish(`/v1/runs/${run}/events`, { events })).status, 200);
    await page.waitForTimeout(250);
  }
  await page.waitForFunction((b) => window.agentwireDashboard.last.nodes[0].totals.appended >= b + 200, before, { timeout: WAIT });
  await page.waitForFunction(() => window.agentwireDashboard.last.nodes[0].totals.delivered > 0, null, { timeout: WAIT });
  await page.waitForFunction((old) => document.querySelector("#m-published-total").textContent !== old, shownBefore, { timeout: WAIT });
  const peak = await page.evaluate(() => window.agentwireDashboard.frames);
  assert.ok(peak >= 2);
  assert.notEqual(await page.textContent("#m-threads"), "–");
  await page.screenshot({ path: join(SHOTS, "dashboard.png") });
  await watcher.close();
  await page.close();
});
