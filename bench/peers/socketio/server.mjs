// The socket.io 4 way to do the job: one room per thread, connection state
// recovery so a client that reconnects within two minutes gets what it missed.
// POST /publish {thread, event, data} numbers the event per thread and emits
// it to the thread's room; a client emits "subscribe" with a thread id and
// gets "subscribed" {thread_id, head_seq}, then "event" frames.
// No auth, no storage: only the fan-out and the recovery agentwire is compared against.
import { createServer } from "node:http";
import { Server } from "socket.io";

const port = Number(process.env.PORT ?? 0);
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
    io.to(msg.thread).emit("event", { type: "event", thread_id: msg.thread, seq, event: msg.event, data: msg.data });
    res.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify({ seqs: [seq] }));
  });
});

const io = new Server(http, {
  transports: ["websocket"],
  connectionStateRecovery: { maxDisconnectionDuration: 2 * 60 * 1000, skipMiddlewares: true },
});
io.on("connection", (socket) => {
  socket.on("subscribe", (thread) => {
    socket.join(thread);
    socket.emit("subscribed", { type: "subscribed", thread_id: thread, head_seq: seqs.get(thread) ?? 0 });
  });
});

http.listen(port, "127.0.0.1", () => console.log(`listening on ${http.address().port}`));
