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

/** The events of PROTOCOL §2. */
export type EventName =
  | "agent_started"
  | "agent_thinking"
  | "tool_executing"
  | "tool_completed"
  | "agent_message"
  | "agent_completed"
  | "agent_error"
  | "user_message"
  | "input_requested"
  | "input_received";

/** `data` of each event, as PROTOCOL §2 defines it. */
export interface EventData {
  agent_started: { agent_name: string; input?: unknown };
  agent_thinking: { thought: string; step?: number };
  tool_executing: { tool_call_id: string; tool_name: string; args?: unknown };
  tool_completed: { tool_call_id: string; result?: unknown; error?: unknown; duration_ms?: number };
  agent_message: { message_id: string; delta: string };
  agent_completed: { result?: unknown; duration_ms?: number };
  agent_error: { code: "failed" | "cancelled" | "timeout" | "worker_lost"; message: string };
  user_message: { text: string; queued?: boolean };
  input_requested: {
    request_id: string;
    kind: "approval" | "text" | "choice";
    prompt: string;
    tool_name?: string;
    arguments?: unknown;
    options?: string[];
    default?: unknown;
    timeout_ms?: number;
    expires_at?: string;
  };
  input_received: {
    request_id: string;
    kind: "approval" | "text" | "choice";
    answer: { approved?: boolean; text?: string; choice?: string; message?: string } | null;
    source: "user" | "timeout";
    user_id?: string;
  };
}

/** One event of a thread, exactly as the server sends it. */
export type Envelope = {
  [K in EventName]: {
    type: "event";
    thread_id: string;
    run_id: string;
    seq: number;
    event: K;
    event_id?: string;
    ts: string;
    data: EventData[K];
  };
}[EventName];

/** What a subscription tells its owner. */
export interface SubscriptionHandlers {
  /** Each event once, in `seq` order. */
  onEvent(event: Envelope): void;
  /** The history before `oldestSeq` is gone: drop what you have, events from `oldestSeq` follow. */
  onReset?(oldestSeq: number): void;
  /** The server refused the subscription (`forbidden`, `not_found`, …). */
  onError?(code: string, message: string): void;
  /** Replay has caught up with the head the server reported. */
  onLive?(headSeq: number): void;
}

export type ConnectionState = "connecting" | "open" | "closed";

export interface ClientOptions {
  /** `ws://host/v1/ws` (the token is added as `?token=`). */
  url: string;
  /** The JWT, or a function that fetches a fresh one (called on every connect). */
  token: string | (() => Promise<string>);
  /** Backoff bounds in milliseconds (defaults 250 and 10,000). */
  minDelayMs?: number;
  maxDelayMs?: number;
  /** Heartbeat period in milliseconds (default 15,000; 0 turns it off). */
  heartbeatMs?: number;
  /** Called whenever the connection state changes. */
  onState?(state: ConnectionState, detail?: string): void;
}

interface Watch {
  threadId: string;
  /** The last `seq` handed to `onEvent`. */
  lastSeq: number;
  handlers: SubscriptionHandlers;
  /** The head the server reported when this subscription began; `onLive` fires on reaching it. */
  liveAt: number | null;
}

/** The wait before reconnect attempt `attempt` (0-based): full jitter over an exponential ceiling. */
export function backoffDelay(attempt: number, minMs: number, maxMs: number, random: () => number = Math.random): number {
  const ceiling = Math.min(maxMs, minMs * 2 ** Math.min(attempt, 30));
  return Math.max(minMs / 2, Math.floor(random() * ceiling));
}

/** A handle to stop watching one thread. */
export interface Subscription {
  readonly threadId: string;
  /** The last `seq` delivered. */
  readonly lastSeq: number;
  unsubscribe(): void;
}

export class AgentwireClient {
  private socket: WebSocket | null = null;
  private readonly watches = new Map<string, Watch>();
  private attempt = 0;
  private closedByUser = false;
  private reconnectTimer: ReturnType<typeof setTimeout> | null = null;
  private heartbeatTimer: ReturnType<typeof setInterval> | null = null;
  private awaitingPong = false;
  private state: ConnectionState = "closed";

  constructor(private readonly options: ClientOptions) {
    void this.connect();
  }

  /** The connection's state. */
  get connectionState(): ConnectionState {
    return this.state;
  }

  /** Watches `threadId`, delivering events after `afterSeq` (0: the whole history). */
  subscribe(threadId: string, handlers: SubscriptionHandlers, afterSeq = 0): Subscription {
    const watch: Watch = { threadId, lastSeq: afterSeq, handlers, liveAt: null };
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
  close(): void {
    this.closedByUser = true;
    this.clearTimers();
    this.socket?.close(1000, "client closed");
    this.setState("closed");
  }

  /** Drops the connection as a network failure would (the client reconnects and resumes). */
  dropConnection(): void {
    this.socket?.close(4000, "dropped by the client");
  }

  private setState(state: ConnectionState, detail?: string): void {
    this.state = state;
    this.options.onState?.(state, detail);
  }

  private async connect(): Promise<void> {
    if (this.closedByUser) return;
    this.setState("connecting");
    let token: string;
    try {
      token = typeof this.options.token === "function" ? await this.options.token() : this.options.token;
    } catch (e) {
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
      for (const watch of this.watches.values()) this.sendSubscribe(watch);
      this.startHeartbeat();
    };
    socket.onmessage = (msg) => this.onFrame(String(msg.data));
    socket.onclose = (ev) => {
      if (this.socket !== socket) return;
      this.socket = null;
      this.clearTimers();
      const why = ev.code === 4008 ? "too slow, resuming" : ev.code === 4001 ? "token expired" : `closed (${ev.code})`;
      this.scheduleReconnect(why);
    };
  }

  private scheduleReconnect(why: string): void {
    if (this.closedByUser) return;
    this.setState("closed", why);
    const min = this.options.minDelayMs ?? 250;
    const max = this.options.maxDelayMs ?? 10_000;
    const delay = backoffDelay(this.attempt++, min, max);
    this.reconnectTimer = setTimeout(() => void this.connect(), delay);
  }

  private startHeartbeat(): void {
    const every = this.options.heartbeatMs ?? 15_000;
    if (every <= 0) return;
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

  private clearTimers(): void {
    if (this.heartbeatTimer) clearInterval(this.heartbeatTimer);
    if (this.reconnectTimer) clearTimeout(this.reconnectTimer);
    this.heartbeatTimer = null;
    this.reconnectTimer = null;
  }

  private send(frame: object): void {
    if (this.socket?.readyState === WebSocket.OPEN) this.socket.send(JSON.stringify(frame));
  }

  private sendSubscribe(watch: Watch): void {
    watch.liveAt = null;
    this.send({ type: "subscribe", thread_id: watch.threadId, after_seq: watch.lastSeq });
  }

  private onFrame(text: string): void {
    let frame: { type?: string; [k: string]: unknown };
    try {
      frame = JSON.parse(text);
    } catch {
      return;
    }
    switch (frame.type) {
      case "event":
        this.deliver(frame as unknown as Envelope);
        break;
      case "batch":
        for (const e of (frame.events as Envelope[]) ?? []) this.deliver(e);
        break;
      case "subscribed": {
        const watch = this.watches.get(String(frame.thread_id));
        if (!watch) break;
        watch.liveAt = Number(frame.head_seq);
        this.checkLive(watch);
        break;
      }
      case "reset": {
        const watch = this.watches.get(String(frame.thread_id));
        if (!watch) break;
        const oldest = Number(frame.oldest_seq);
        watch.lastSeq = oldest - 1;
        watch.handlers.onReset?.(oldest);
        break;
      }
      case "error": {
        const watch = frame.thread_id ? this.watches.get(String(frame.thread_id)) : undefined;
        if (watch && (frame.code === "forbidden" || frame.code === "not_found")) this.watches.delete(watch.threadId);
        watch?.handlers.onError?.(String(frame.code), String(frame.message));
        break;
      }
      case "pong":
        this.awaitingPong = false;
        break;
    }
  }

  private deliver(event: Envelope): void {
    const watch = this.watches.get(event.thread_id);
    // Once per seq: a replay after a reconnect may repeat what was already delivered.
    if (!watch || event.seq <= watch.lastSeq) return;
    watch.lastSeq = event.seq;
    watch.handlers.onEvent(event);
    this.checkLive(watch);
  }

  private checkLive(watch: Watch): void {
    if (watch.liveAt !== null && watch.lastSeq >= watch.liveAt) {
      const head = watch.liveAt;
      watch.liveAt = null;
      watch.handlers.onLive?.(head);
    }
  }
}
