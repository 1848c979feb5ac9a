// A minimal hand-written bridge, the lower bound of what one achieves with `ws`:
// POST /publish {thread, event, data} numbers the event per thread and sends it to
// every WebSocket watching that thread (GET /ws?thread=...). No auth, no storage,
// no replay, no backpressure: only the fan-out agentwire is compared against.
import { createServer } from "node:http";
import { WebSocketServer } from "ws";

const port = Number(process.env.PORT ?? 0);
const watchers = new Map(); // thread -> Set<WebSocket>
const seqs = new Map(); // thread -> last seq

const http = createServer((req, res) => {
  if (req.method !== "POST" || req.url !== "/publish") {
    res.writeHead(404).end();
    return;
  }
  let body = "";
  req.on("data", (chunk) => (body += chunk));
  req.on("end", () => {
    let msg;
    try {
      msg = JSON.parse(body);
    } catch {
      res.writeHead(400).end();
      return;
    }
    const seq = (seqs.get(msg.thread) ?? 0) + 1;
    seqs.set(msg.thread, seq);
    const frame = JSON.stringify({ type: "event", thread_id: msg.thread, seq, event: msg.event, data: msg.data });
    for (const ws of watchers.get(msg.thread) ?? []) ws.send(frame);
    res.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify({ seqs: [seq] }));
  });
});

const wss = new WebSocketServer({ server: http, path: "/ws" });
wss.on("connection", (ws, req) => {
  const thread = new URL(req.url, "http://x").searchParams.get("thread");
  if (!watchers.has(thread)) watchers.set(thread, new Set());
  watchers.get(thread).add(ws);
  ws.on("close", () => watchers.get(thread)?.delete(ws));
  ws.send(JSON.stringify({ type: "subscribed", thread_id: thread, head_seq: seqs.get(thread) ?? 0 }));
});

http.listen(port, "127.0.0.1", () => console.log(`listening on ${http.address().port}`));
