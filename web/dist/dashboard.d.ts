/**
 * The dashboard: live delivery health of every node, pushed once a second by
 * `GET /v1/admin/stream` (operator only; open in dev mode).
 */
interface NodeStats {
    node: {
        id: string;
        uptime_s: number;
        ready: boolean;
    };
    connections: {
        ws: number;
        sse: number;
    };
    subscriptions: number;
    watched_threads: number;
    threads: number;
    runs_in_flight: number;
    agent_runs: number;
    totals: {
        appended: number;
        delivered: number;
        rejected: number;
        unroutable: number;
        slow_consumer_disconnects: number;
        dropped_slow_consumer: number;
        resumes: number;
        resets: number;
    };
    lag_ms?: {
        p50: number | null;
        p90: number | null;
        p99: number | null;
    };
}
interface Frame {
    nodes: NodeStats[];
    interval_ms: number;
}
/** What the page shows, exposed for the browser tests. */
interface DashboardDebug {
    frames: number;
    last: Frame | null;
}
declare const debug: DashboardDebug;
declare const HISTORY = 300;
declare const published: number[];
declare const delivered: number[];
declare let previous: {
    appended: number;
    delivered: number;
    at: number;
} | null;
declare const $: (id: string) => HTMLElement;
declare const fmt: (n: number) => string;
declare const ms: (v: number | null | undefined) => string;
declare function sum(nodes: NodeStats[], pick: (n: NodeStats) => number): number;
declare function setText(id: string, value: string): void;
declare function drawChart(): void;
declare function show(frame: Frame): void;
declare function askForKey(): Promise<string>;
declare function operatorKey(): Promise<string>;
declare function start(): Promise<void>;
