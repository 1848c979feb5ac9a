// useChat's side, in Node: the AI SDK's DefaultChatTransport posts a chat to agentwire and
// reads the run back as one assistant message (a page with useChat({ transport, resume: true }) does the same).
//   agentwire serve, then: (cd examples/node && npm install) && node examples/node/use_chat.mjs
import { DefaultChatTransport, readUIMessageStream } from "ai";

const base = process.env.AGENTWIRE_URL ?? "http://127.0.0.1:8080";
const { token } = await (await fetch(`${base}/dev/token?user=alice`)).json();
const transport = new DefaultChatTransport({ api: `${base}/v1/ui/chat`, headers: { authorization: `Bearer ${token}` } });
const stream = await transport.sendMessages({
  chatId: process.env.AGENTWIRE_THREAD ?? "thread_demo",
  messages: [{ id: "u1", role: "user", parts: [{ type: "text", text: "what is 6 * 7?" }] }],
  trigger: "submit-message",
});
let message;
for await (message of readUIMessageStream({ stream })) {
  // each step is the assistant message so far
}
for (const part of message.parts) {
  if (part.type === "text") console.log(`answer: ${part.text}`);
  if (part.type === "reasoning") console.log(`thought: ${part.text}`);
  if (part.type === "dynamic-tool") console.log(`tool ${part.toolName}(${JSON.stringify(part.input)}) -> ${JSON.stringify(part.output)}`);
}
