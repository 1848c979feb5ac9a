// A Node.js agent on the Vercel AI SDK: streamText's parts go to agentwire in one line.
// It runs on the SDK's MockLanguageModelV3 (a tool call, then an answer), so it needs no API key.
//   (cd clients/typescript && npm install) && (cd examples/node && npm install) && node examples/node/vercel_ai_agent.mjs
import { Publisher } from "@agentwire/publisher";
import { publishAiStream } from "@agentwire/publisher/ai-sdk";
import { jsonSchema, simulateReadableStream, stepCountIs, streamText, tool } from "ai";
import { MockLanguageModelV3 } from "ai/test";

const usage = { inputTokens: { total: 1 }, outputTokens: { total: 1 } };
const step = (chunks) => ({ stream: simulateReadableStream({ chunks: [{ type: "stream-start", warnings: [] }, ...chunks] }) });
const model = new MockLanguageModelV3({
  doStream: [
    step([
      { type: "tool-call", toolCallId: "call_1", toolName: "clock", input: '{"tz":"UTC"}' },
      { type: "finish", finishReason: { unified: "tool-calls" }, usage },
    ]),
    step([
      { type: "text-start", id: "t" },
      ...["It ", "is ", "10:00 ", "in ", "UTC."].map((delta) => ({ type: "text-delta", id: "t", delta })),
      { type: "text-end", id: "t" },
      { type: "finish", finishReason: { unified: "stop" }, usage },
    ]),
  ],
});
const clock = tool({
  inputSchema: jsonSchema({ type: "object", properties: { tz: { type: "string" } } }),
  execute: async ({ tz }) => `10:00 ${tz}`,
});

const agentwire = new Publisher({
  baseUrl: process.env.AGENTWIRE_URL ?? "http://127.0.0.1:8080",
  publishKey: process.env.AGENTWIRE_PUBLISH_KEY ?? "dev-publish-key",
});
const run = { threadId: process.env.AGENTWIRE_THREAD ?? "thread_demo", userId: "alice", agentName: "vercel-ai-example" };
await publishAiStream(agentwire, run, streamText({ model, tools: { clock }, prompt: "what time is it?", stopWhen: stepCountIs(3) }));
await agentwire.close();
