/**
 * The dashboard: live delivery health of every node, pushed once a second by
 * `GET /v1/admin/stream` (operator only; open in dev mode).
 */
import { askForSecret } from "./dialog.js";
const debug = { frames: 0, last: null };
window.agentwireDashboard = debug;
const HISTORY = 300;
const published = [];
const delivered = [];
let previous = null;
const $ = (id) => document.getElementById(id);
const fmt = (n) => (n >= 10_000 ? `${(n / 1000).toFixed(1)}k` : n.toLocaleString("en-US", { maximumFractionDigits: 1 }));
const ms = (v) => (v === null || v === undefined ? "–" : v < 1 ? `≤ ${(v * 1000).toFixed(0)} µs` : `≤ ${v.toFixed(1)} ms`);
function sum(nodes, pick) {
    return nodes.reduce((acc, n) => acc + pick(n), 0);
}
function setText(id, value) {
    $(id).textContent = value;
}
function drawChart() {
    const svg = $("chart");
    const max = Math.max(1, ...published, ...delivered);
    const line = (series) => series
        .map((v, i) => `${((HISTORY - series.length + i) / (HISTORY - 1)) * 600},${180 - (v / max) * 170}`)
        .join(" ");
    svg.innerHTML =
        `<polyline class="published" fill="none" points="${line(published)}"/>` +
            `<polyline class="delivered" fill="none" points="${line(delivered)}"/>`;
    setText("chart-max", `peak ${fmt(max)}/s`);
}
function show(frame) {
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
        if (published.length > HISTORY)
            published.shift();
        if (delivered.length > HISTORY)
            delivered.shift();
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
        .map((n) => `<tr><td>${n.node.id.replace(/[<>&]/g, "")}</td><td>${Math.floor(n.node.uptime_s / 60)} min</td>` +
        `<td>${n.connections.ws + n.connections.sse}</td><td>${n.subscriptions}</td>` +
        `<td>${fmt(n.totals.appended)}</td><td>${fmt(n.totals.delivered)}</td><td>${n.node.ready ? "yes" : "no"}</td></tr>`)
        .join("");
    drawChart();
}
async function operatorKey() {
    // The key stays out of URLs (they end up in logs and history): it is asked for,
    // kept for the tab, and sent in the Authorization header.
    let key = sessionStorage.getItem("agentwire.admin") ?? "";
    for (;;) {
        const resp = await fetch("/v1/admin/stats", { headers: key ? { authorization: `Bearer ${key}` } : {} });
        if (resp.ok)
            return key;
        key = await askForSecret("agentwire.admin");
    }
}
/** Reads `stats` events from the stream until it ends; the frames go to `show`. */
async function follow(key, conn) {
    // fetch, not EventSource: EventSource cannot send the Authorization header.
    const resp = await fetch("/v1/admin/stream", { headers: key ? { authorization: `Bearer ${key}` } : {} });
    if (!resp.ok || !resp.body)
        throw new Error(`HTTP ${resp.status}`);
    conn.dataset.state = "open";
    conn.textContent = "live";
    const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
        const { value, done } = await reader.read();
        if (done)
            return;
        buffer += value;
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
            const message = buffer.slice(0, end);
            buffer = buffer.slice(end + 2);
            const lines = message.split("\n");
            if (!lines.includes("event: stats"))
                continue;
            const data = lines.filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trimStart());
            show(JSON.parse(data.join("\n")));
        }
    }
}
async function start() {
    const key = await operatorKey();
    const conn = $("conn");
    for (;;) {
        try {
            await follow(key, conn);
        }
        catch {
            // Reconnect below, as EventSource would.
        }
        conn.dataset.state = "closed";
        conn.textContent = "reconnecting…";
        await new Promise((resolve) => setTimeout(resolve, 1000));
    }
}
void start();
