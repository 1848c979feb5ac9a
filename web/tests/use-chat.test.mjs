// examples/use-chat in a real browser: a page on the AI SDK's own client, served
// from another origin than agentwire's (so CORS is part of it), asks the demo agent,
// is reloaded mid-run, and resumes the run from its start with nothing shown twice.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { build } from "esbuild";
import { WAIT, examplePages } from "./server.mjs";

const root = new URL("../..", import.meta.url).pathname;

let bench;
let browser;
let server;
let pagesBase;

before(async () => {
  mkdirSync(join(root, "target/examples"), { recursive: true });
  await build({
    entryPoints: [join(root, "examples/use-chat/chat.mjs")],
    bundle: true,
    format: "esm",
    outfile: join(root, "target/examples/use-chat.js"),
    // The page's `ai` is web/'s.
    nodePaths: [join(root, "web/node_modules")],
    logLevel: "error",
  });
  // Steps slow enough that the reload lands mid-run.
  bench = await examplePages("250ms");
  ({ browser, server, base: pagesBase } = bench);
});

after(async () => {
  await bench?.close();
});

test("a useChat-style page reloaded mid-run resumes the run from its start, nothing shown twice", async () => {
  const thread = `thread_usechat${Date.now().toString(36)}`;
  const page = await browser.newPage();
  page.on("pageerror", (e) => console.log("page error:", e.message));
  const query = new URLSearchParams({ server: server.base, thread, token: await server.token("alice") });
  await page.goto(`${pagesBase}/examples/use-chat/index.html?${query}`);
  // The run is under way: a tool has started.
  await page.waitForSelector("#message p.dynamic-tool", { timeout: WAIT });
  const before = await server.history(thread, "alice");
  assert.notEqual(before.at(-1).event, "agent_completed", "the reload comes mid-run");
  await page.reload();
  await page.waitForSelector("body[data-done]", { state: "attached", timeout: WAIT });
  assert.equal(await page.getAttribute("body", "data-resumed"), "yes", "the reloaded page resumed the run");

  const events = await server.history(thread, "alice");
  assert.equal(events.at(-1).event, "agent_completed");
  const text = await page.locator("#message p.text").allTextContents();
  const deltas = events.filter((e) => e.event === "agent_message").map((e) => e.data.delta).join("");
  assert.equal(text.join(""), deltas, "the whole answer, once");
  const thoughts = events.filter((e) => e.event === "agent_thinking").map((e) => e.data.thought);
  assert.deepEqual(await page.locator("#message p.reasoning").allTextContents(), thoughts, "what came before the reload too");
  const tools = events.filter((e) => e.event === "tool_completed").length;
  assert.equal(await page.locator("#message p.dynamic-tool[data-state=output-available]").count(), tools);
  assert.equal(events.filter((e) => e.event === "user_message").length, 1, "the reload asked nothing again");
  await page.close();
});
