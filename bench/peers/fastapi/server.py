"""The seed stack as a benchmark peer: FastAPI + uvicorn WebSockets with an
in-process bridge that resolves run -> thread from the run id
(`run_{thread_id}_{uuid8}`, the seed's fix) and fans events out to the thread's
connections. POST /publish {run_id, event, data}; WS /ws?thread=...
No auth, no storage, no replay, like the other peers."""

import json
import os
import re

from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse

app = FastAPI()
watchers: dict = {}
seqs: dict = {}
THREAD = re.compile(r"(?:^|_)(thread_[A-Za-z0-9]+)")


@app.post("/publish")
async def publish(request: Request):
    msg = await request.json()
    match = THREAD.search(msg.get("run_id", ""))
    if not match:
        return JSONResponse({"error": "unroutable"}, status_code=404)
    thread = match.group(1)
    seq = seqs.get(thread, 0) + 1
    seqs[thread] = seq
    frame = json.dumps({"type": "event", "thread_id": thread, "seq": seq, "event": msg["event"], "data": msg.get("data")})
    for ws in list(watchers.get(thread, ())):
        try:
            await ws.send_text(frame)
        except Exception:
            watchers[thread].discard(ws)
    return {"seqs": [seq]}


@app.websocket("/ws")
async def ws(websocket: WebSocket, thread: str):
    await websocket.accept()
    watchers.setdefault(thread, set()).add(websocket)
    await websocket.send_text(json.dumps({"type": "subscribed", "thread_id": thread, "head_seq": seqs.get(thread, 0)}))
    try:
        while True:
            await websocket.receive_text()
    except WebSocketDisconnect:
        watchers[thread].discard(websocket)


if __name__ == "__main__":
    import uvicorn

    uvicorn.run(app, host="127.0.0.1", port=int(os.environ.get("PORT", "0")), log_level="warning")
