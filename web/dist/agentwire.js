/**
 * agentwire browser client: watch threads of agent runs over one WebSocket.
 *
 * - subscribe to any number of threads on one connection;
 * - every event arrives once and in `seq` order, even across reconnects: the
 *   client remembers the last `seq` of each thread, resubscribes with
 *   `after_seq` after a drop, and ignores anything it has already delivered;
 * - reconnects with exponential backoff and full jitter, and refreshes its
 *   token when the server says it expired (close 4001);
 * - a heartbeat (`ping` → `pong`) finds a dead connection the browser missed.
 *
 * ```ts
 * import { AgentwireClient } from "/assets/agentwire.js";
 * const client = new AgentwireClient({ url: "ws://127.0.0.1:8080/v1/ws", token: () => fetchToken() });
 * client.subscribe("thread_demo", { onEvent: (e) => console.log(e.seq, e.event, e.data) });
 * ```
 */
/** The wait before reconnect attempt `attempt` (0-based): full jitter over an exponential ceiling. */
export function backoffDelay(attempt, minMs, maxMs, random = Math.random) {
    const ceiling = Math.min(maxMs, minMs * 2 ** Math.min(attempt, 30));
    return Math.max(minMs / 2, Math.floor(random() * ceiling));
}
export class AgentwireClient {
    options;
    socket = null;
    watches = new Map();
    attempt = 0;
    closedByUser = false;
    reconnectTimer = null;
    heartbeatTimer = null;
    awaitingPong = false;
    state = "closed";
    constructor(options) {
        this.options = options;
        void this.connect();
    }
    /** The connection's state. */
    get connectionState() {
        return this.state;
    }
    /** Watches `threadId`, delivering events after `afterSeq` (0: the whole history). */
    subscribe(threadId, handlers, afterSeq = 0) {
        const watch = { threadId, lastSeq: afterSeq, handlers, liveAt: null };
        this.watches.set(threadId, watch);
        this.sendSubscribe(watch);
        return {
            threadId,
            get lastSeq() {
                return watch.lastSeq;
            },
            unsubscribe: () => {
                if (this.watches.get(threadId) === watch) {
                    this.watches.delete(threadId);
                    this.send({ type: "unsubscribe", thread_id: threadId });
                }
            },
        };
    }
    /** Closes the connection for good. */
    close() {
        this.closedByUser = true;
        this.clearTimers();
        this.socket?.close(1000, "client closed");
        this.setState("closed");
    }
    /** Drops the connection as a network failure would (the client reconnects and resumes). */
    dropConnection() {
        this.socket?.close(4000, "dropped by the client");
    }
    setState(state, detail) {
        this.state = state;
        this.options.onState?.(state, detail);
    }
    async connect() {
        if (this.closedByUser)
            return;
        this.setState("connecting");
        let token;
        try {
            token = typeof this.options.token === "function" ? await this.options.token() : this.options.token;
        }
        catch (e) {
            this.scheduleReconnect(`could not get a token: ${String(e)}`);
            return;
        }
        const url = new URL(this.options.url);
        url.searchParams.set("token", token);
        const socket = new WebSocket(url.toString());
        this.socket = socket;
        socket.onopen = () => {
            this.attempt = 0;
            this.setState("open");
            for (const watch of this.watches.values())
                this.sendSubscribe(watch);
            this.startHeartbeat();
        };
        socket.onmessage = (msg) => this.onFrame(String(msg.data));
        socket.onclose = (ev) => {
            if (this.socket !== socket)
                return;
            this.socket = null;
            this.clearTimers();
            const why = ev.code === 4008 ? "too slow, resuming" : ev.code === 4001 ? "token expired" : `closed (${ev.code})`;
            this.scheduleReconnect(why);
        };
    }
    scheduleReconnect(why) {
        if (this.closedByUser)
            return;
        this.setState("closed", why);
        const min = this.options.minDelayMs ?? 250;
        const max = this.options.maxDelayMs ?? 10_000;
        const delay = backoffDelay(this.attempt++, min, max);
        this.reconnectTimer = setTimeout(() => void this.connect(), delay);
    }
    startHeartbeat() {
        const every = this.options.heartbeatMs ?? 15_000;
        if (every <= 0)
            return;
        this.awaitingPong = false;
        this.heartbeatTimer = setInterval(() => {
            if (this.awaitingPong) {
                // No pong since the last ping: the connection is dead even if the browser has not noticed.
                this.socket?.close(4000, "heartbeat lost");
                return;
            }
            this.awaitingPong = true;
            this.send({ type: "ping" });
        }, every);
    }
    clearTimers() {
        if (this.heartbeatTimer)
            clearInterval(this.heartbeatTimer);
        if (this.reconnectTimer)
            clearTimeout(this.reconnectTimer);
        this.heartbeatTimer = null;
        this.reconnectTimer = null;
    }
    send(frame) {
        if (this.socket?.readyState === WebSocket.OPEN)
            this.socket.send(JSON.stringify(frame));
    }
    sendSubscribe(watch) {
        watch.liveAt = null;
        this.send({ type: "subscribe", thread_id: watch.threadId, after_seq: watch.lastSeq });
    }
    onFrame(text) {
        let frame;
        try {
            frame = JSON.parse(text);
        }
        catch {
            return;
        }
        switch (frame.type) {
            case "event":
                this.deliver(frame);
                break;
            case "batch":
                for (const e of frame.events ?? [])
                    this.deliver(e);
                break;
            case "subscribed": {
                const watch = this.watches.get(String(frame.thread_id));
                if (!watch)
                    break;
                watch.liveAt = Number(frame.head_seq);
                this.checkLive(watch);
                break;
            }
            case "reset": {
                const watch = this.watches.get(String(frame.thread_id));
                if (!watch)
                    break;
                const oldest = Number(frame.oldest_seq);
                watch.lastSeq = oldest - 1;
                watch.handlers.onReset?.(oldest);
                break;
            }
            case "error": {
                const watch = frame.thread_id ? this.watches.get(String(frame.thread_id)) : undefined;
                if (watch && (frame.code === "forbidden" || frame.code === "not_found"))
                    this.watches.delete(watch.threadId);
                watch?.handlers.onError?.(String(frame.code), String(frame.message));
                break;
            }
            case "pong":
                this.awaitingPong = false;
                break;
        }
    }
    deliver(event) {
        const watch = this.watches.get(event.thread_id);
        // Once per seq: a replay after a reconnect may repeat what was already delivered.
        if (!watch || event.seq <= watch.lastSeq)
            return;
        watch.lastSeq = event.seq;
        watch.handlers.onEvent(event);
        this.checkLive(watch);
    }
    checkLive(watch) {
        if (watch.liveAt !== null && watch.lastSeq >= watch.liveAt) {
            const head = watch.liveAt;
            watch.liveAt = null;
            watch.handlers.onLive?.(head);
        }
    }
}
