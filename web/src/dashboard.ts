/**
 * The dashboard: live delivery health of every node, pushed once a second by
 * `GET /v1/admin/stream` (operator only; open in dev mode).
 */
import { askForSecret } from "./dialog.js";

interface NodeStats {
  node: { id: string; uptime_s: number; ready: boolean };
  connections: { ws: number; sse: number };
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
  lag_ms?: { p50: number | null; p90: number | null; p99: number | null };
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

const debug: DashboardDebug = { frames: 0, last: null };
(window as unknown as { agentwireDashboard: DashboardDebug }).agentwireDashboard = debug;

const HISTORY = 300;
const published: number[] = [];
const delivered: number[] = [];
let previous: { appended: number; delivered: number; at: number } | null = null;

const $ = (id: string) => document.getElementById(id) as HTMLElement;
const fmt = (n: number) => (n >= 10_000 ? `${(n / 1000).toFixed(1)}k` : n.toLocaleString("en-US", { maximumFractionDigits: 1 }));
const ms = (v: number | null | undefined) => (v === null || v === undefined ? "–" : v < 1 ? `≤ ${(v * 1000).toFixed(0)} µs` : `≤ ${v.toFixed(1)} ms`);

function sum(nodes: NodeStats[], pick: (n: NodeStats) => number): number {
  return nodes.reduce((acc, n) => acc + pick(n), 0);
}

function setText(id: string, value: string): void {
  $(id).textContent = value;
}

function drawChart(): void {
  const svg = $("chart");
  const max = Math.max(1, ...published, ...delivered);
  const line = (series: number[]) =>
    series
      .map((v, i) => `${((HISTORY - series.length + i) / (HISTORY - 1)) * 600},${180 - (v / max) * 170}`)
      .join(" ");
  svg.innerHTML =
    `<polyline class="published" fill="none" points="${line(published)}"/>` +
    `<polyline class="delivered" fill="none" points="${line(delivered)}"/>`;
  setText("chart-max", `peak ${fmt(max)}/s`);
}

function show(frame: Frame): void {
  debug.frames += 1;
  debug.last = frame;
  const nodes = frame.nodes;
  const appended = sum(nodes, (n) => n.totals.appended);
  const sent = sum(nodes, (n) => n.totals.delivered);
  const now = performance.now();
  if (previous) {
    const secs = Math.max(0.001, (now - previous.at) / 1000);
    published.push(Math.max(0, (appended - previous.appended) / secs));
    delivered.push(Math.max(0, (sent - previous.delivered) / secs));
    if (published.length > HISTORY) published.shift();
    if (delivered.length > HISTORY) delivered.shift();
  }
  previous = { appended, delivered: sent, at: now };
  const ws = sum(nodes, (n) => n.connections.ws);
  const sse = sum(nodes, (n) => n.connections.sse);
  setText("m-connections", fmt(ws + sse));
  setText("m-connections-detail", `${ws} WebSocket · ${sse} SSE`);
  setText("m-subscriptions", fmt(sum(nodes, (n) => n.subscriptions)));
  setText("m-watched", `${fmt(sum(nodes, (n) => n.watched_threads))} threads watched`);
  setText("m-threads", fmt(Math.max(...nodes.map((n) => n.threads))));
  setText("m-runs", fmt(Math.max(...nodes.map((n) => n.runs_in_flight))));
  setText("m-agent-runs", `${sum(nodes, (n) => n.agent_runs)} in-process`);
  setText("m-published-rate", fmt(published.at(-1) ?? 0));
  setText("m-published-total", `${fmt(appended)} in all`);
  setText("m-delivered-rate", fmt(delivered.at(-1) ?? 0));
  setText("m-delivered-total", `${fmt(sent)} in all`);
  const lag = nodes[0]?.lag_ms;
  setText("m-lag-p50", ms(lag?.p50));
  setText("m-lag-p90", ms(lag?.p90));
  setText("m-lag-p99", ms(lag?.p99));
  setText("m-slow", fmt(sum(nodes, (n) => n.totals.slow_consumer_disconnects)));
  setText("m-dropped", fmt(sum(nodes, (n) => n.totals.dropped_slow_consumer)));
  setText("m-rejected", fmt(sum(nodes, (n) => n.totals.rejected)));
  setText("m-unroutable", fmt(sum(nodes, (n) => n.totals.unroutable)));
  setText("m-resumes", fmt(sum(nodes, (n) => n.totals.resumes)));
  setText("m-resets", fmt(sum(nodes, (n) => n.totals.resets)));
  $("nodes").innerHTML = nodes
    .map(
      (n) =>
        `<tr><td>${n.node.id.replace(/[<>&]/g, "")}</td><td>${Math.floor(n.node.uptime_s / 60)} min</td>` +
        `<td>${n.connections.ws + n.connections.sse}</td><td>${n.subscriptions}</td>` +
        `<td>${fmt(n.totals.appended)}</td><td>${fmt(n.totals.delivered)}</td><td>${n.node.ready ? "yes" : "no"}</td></tr>`,
    )
    .join("");
  drawChart();
}

async function operatorKey(): Promise<string> {
  // The key stays out of URLs (they end up in logs and history): it is asked for,
  // kept for the tab, and sent in the Authorization header.
  let key = sessionStorage.getItem("agentwire.admin") ?? "";
  for (;;) {
    const resp = await fetch("/v1/admin/stats", { headers: key ? { authorization: `Bearer ${key}` } : {} });
    if (resp.ok) return key;
    key = await askForSecret("agentwire.admin");
  }
}

/** Reads `stats` events from the stream until it ends; the frames go to `show`. */
async function follow(key: string, conn: HTMLElement): Promise<void> {
  // fetch, not EventSource: EventSource cannot send the Authorization header.
  const resp = await fetch("/v1/admin/stream", { headers: key ? { authorization: `Bearer ${key}` } : {} });
  if (!resp.ok || !resp.body) throw new Error(`HTTP ${resp.status}`);
  conn.dataset.state = "open";
  conn.textContent = "live";
  const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end: number;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const message = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const lines = message.split("\n");
      if (!lines.includes("event: stats")) continue;
      const data = lines.filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trimStart());
      show(JSON.parse(data.join("\n")) as Frame);
    }
  }
}

async function start(): Promise<void> {
  const key = await operatorKey();
  const conn = $("conn");
  for (;;) {
    try {
      await follow(key, conn);
    } catch {
      // Reconnect below, as EventSource would.
    }
    conn.dataset.state = "closed";
    conn.textContent = "reconnecting…";
    await new Promise((resolve) => setTimeout(resolve, 1000));
  }
}

void start();
