// The page's script (bundled with the `ai` package by `npm run bundle-example` in web/):
// what useChat({ transport, resume: true }) does, without React.
import { DefaultChatTransport, readUIMessageStream } from "ai";

const params = new URLSearchParams(location.search);
const server = params.get("server") ?? "http://127.0.0.1:8080";
const thread = params.get("thread") ?? "thread_demo";
const transport = new DefaultChatTransport({
  api: `${server}/v1/ui/chat`,
  headers: { authorization: `Bearer ${params.get("token")}` },
});

function render(part) {
  const p = document.createElement("p");
  p.className = part.type;
  if (part.type === "text" || part.type === "reasoning") p.textContent = part.text;
  if (part.type === "dynamic-tool") {
    p.dataset.state = part.state;
    p.textContent = `${part.toolName}(${JSON.stringify(part.input)}) → ${JSON.stringify(part.output ?? part.errorText ?? "…")}`;
  }
  return p;
}

async function show(stream) {
  for await (const message of readUIMessageStream({ stream })) {
    document.getElementById("message").replaceChildren(...message.parts.map(render));
  }
  document.body.dataset.done = "yes";
}

// On load, as useChat with resume: true: the running run, from its start, if there is one.
const running = await transport.reconnectToStream({ chatId: thread });
if (running) {
  document.body.dataset.resumed = "yes";
  await show(running);
} else if (!sessionStorage.getItem(thread)) {
  sessionStorage.setItem(thread, "asked");
  const messages = [{ id: "u1", role: "user", parts: [{ type: "text", text: "what is 6 * 7?" }] }];
  await show(await transport.sendMessages({ chatId: thread, messages, trigger: "submit-message" }));
}
