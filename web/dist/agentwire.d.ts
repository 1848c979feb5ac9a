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
export type EventName = "agent_started" | "agent_thinking" | "tool_executing" | "tool_completed" | "agent_message" | "agent_completed" | "agent_error" | "user_message" | "input_requested" | "input_received";
/** `data` of each event, as PROTOCOL §2 defines it. */
export interface EventData {
    agent_started: {
        agent_name: string;
        input?: unknown;
    };
    agent_thinking: {
        thought: string;
        step?: number;
    };
    tool_executing: {
        tool_call_id: string;
        tool_name: string;
        args?: unknown;
    };
    tool_completed: {
        tool_call_id: string;
        result?: unknown;
        error?: unknown;
        duration_ms?: number;
    };
    agent_message: {
        message_id: string;
        delta: string;
    };
    agent_completed: {
        result?: unknown;
        duration_ms?: number;
    };
    agent_error: {
        code: "failed" | "cancelled" | "timeout" | "worker_lost";
        message: string;
    };
    user_message: {
        text: string;
        queued?: boolean;
    };
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
        answer: {
            approved?: boolean;
            text?: string;
            choice?: string;
            message?: string;
        } | null;
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
/** The wait before reconnect attempt `attempt` (0-based): full jitter over an exponential ceiling. */
export declare function backoffDelay(attempt: number, minMs: number, maxMs: number, random?: () => number): number;
/** A handle to stop watching one thread. */
export interface Subscription {
    readonly threadId: string;
    /** The last `seq` delivered. */
    readonly lastSeq: number;
    unsubscribe(): void;
}
export declare class AgentwireClient {
    private readonly options;
    private socket;
    private readonly watches;
    private attempt;
    private closedByUser;
    private reconnectTimer;
    private heartbeatTimer;
    private awaitingPong;
    private state;
    constructor(options: ClientOptions);
    /** The connection's state. */
    get connectionState(): ConnectionState;
    /** Watches `threadId`, delivering events after `afterSeq` (0: the whole history). */
    subscribe(threadId: string, handlers: SubscriptionHandlers, afterSeq?: number): Subscription;
    /** Closes the connection for good. */
    close(): void;
    /** Drops the connection as a network failure would (the client reconnects and resumes). */
    dropConnection(): void;
    private setState;
    private connect;
    private scheduleReconnect;
    private startHeartbeat;
    private clearTimers;
    private send;
    private sendSubscribe;
    private onFrame;
    private deliver;
    private checkLive;
}
