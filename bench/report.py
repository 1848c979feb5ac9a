"""Turns bench/run.sh's results (JSON lines) into BENCHMARKS.md's generated
section and SVG charts. Usage: report.py results.jsonl BENCHMARKS.md chart-dir"""
import json
import os
import platform
import re
import subprocess
import sys
from datetime import date

BEGIN = "<!-- bench/run.sh writes from here -->"
END = "<!-- bench/run.sh writes up to here -->"
SYSTEMS = ["agentwire", "agentwire-memory", "socketio", "ws", "fastapi"]
NAMES = {
    "agentwire": "agentwire (embedded store)",
    "agentwire-memory": "agentwire (memory store)",
    "socketio": "socket.io 4 (Node.js)",
    "ws": "ws (Node.js)",
    "fastapi": "FastAPI + uvicorn (the seed stack)",
}
SHORT = {
    "a1": "a: 1 thread x 1,000 subscribers",
    "a2": "a: 1,000 threads x 1 subscriber",
    "b10": "b: 10,000 idle connections",
    "b19": "b: 19,000 idle connections",
    "c": "c: 10,000 events/s",
    "d": "d: 100 runs x 200 deltas/s",
    "e": "e: storm of 5,000",
}
COLORS = {"agentwire": "#1f6feb", "agentwire-memory": "#58a6ff", "socketio": "#8250df", "ws": "#bf8700", "fastapi": "#cf222e"}


def sh(*cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return "not found"


def machine():
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    mem = next((l.split()[1] for l in open("/proc/meminfo") if l.startswith("MemTotal")), "0")
    pkg = lambda p: json.load(open(p)).get("version", "?") if os.path.exists(p) else "?"
    reqs = open("bench/peers/fastapi/requirements.txt").read().split()
    return [
        f"{os.cpu_count()} vCPU ({cpu}), {int(mem) // 1024 // 1024} GiB RAM, Linux {platform.release()}",
        f"{sh('rustc', '--version')}; agentwire {sh('git', 'rev-parse', '--short', 'HEAD')} (release build)",
        f"Node.js {sh('node', '--version')}: socket.io {pkg('bench/peers/socketio/node_modules/socket.io/package.json')},"
        f" ws {pkg('bench/peers/ws-fanout/node_modules/ws/package.json')}",
        f"Python {platform.python_version()}: {', '.join(reqs)}",
        "descriptors per process: " + sh("sh", "-c", "ulimit -Hn"),
    ]


def f(x, digits=0):
    return f"{x:,.{digits}f}"


def ms(d, key):
    return float(d["latency_ms"][key])


def ratio(a, b):
    return "–" if not a or not b else f"{a / b:.1f}×"


def advantage(d, aw):
    """How this system compares with agentwire (embedded) in this scenario, in its own terms."""
    if aw is None or d is aw:
        return "–"
    if d.get("mode") == "idle":
        return f"{ratio(d['rss_kib_per_connection'], aw['rss_kib_per_connection'])} agentwire's memory per connection"
    parts = [f"agentwire delivers {ratio(aw['deliveries_per_s'], d['deliveries_per_s'])}",
             f"p99 {ratio(ms(d, 'p99'), ms(aw, 'p99'))} agentwire's"]
    if d.get("mode") == "storm" and d.get("reconnect_seconds") and aw.get("reconnect_seconds"):
        parts.append(f"reconnect {ratio(d['reconnect_seconds'], aw['reconnect_seconds'])} as long")
    return "; ".join(parts)


def table(rows, aw):
    out = [
        "| system | publishes/s taken | deliveries/s | lost / dup | latency p50 / p99 / p999 / max (ms) | server CPU (s) | RSS per connection (KiB) | reconnect (s) | against agentwire (embedded) |",
        "|---|---:|---:|---|---|---:|---:|---:|---|",
    ]
    for s in SYSTEMS:
        d = rows.get(s)
        if d is None:
            continue
        if d.get("failed"):
            out.append(f"| {NAMES[s]} | failed to run | | | | | | | |")
            continue
        l = d["latency_ms"]
        rec = "–" if d.get("reconnect_seconds") is None else f"{d['reconnect_seconds']:.2f}"
        fails = f" ({d['failed_connections']} connections failed)" if d["failed_connections"] else ""
        taken = f(d["published"] / d["publish_seconds"]) if d["published"] else "–"
        out.append(
            f"| {NAMES[s]} | {taken} | {f(d['deliveries_per_s'])} | {d['lost']} / {d['duplicated']}{fails} | "
            f"{l['p50']} / {l['p99']} / {l['p999']} / {l['max']} | {d['cpu_seconds']:.2f} | "
            f"{d['rss_kib_per_connection']:.1f} | {rec} | {advantage(d, aw)} |"
        )
    return "\n".join(out)


def bars(title, unit, groups, path, log=False):
    """Horizontal grouped bars: groups = [(label, {system: value})]."""
    import math

    row_h, gap, left, width = 16, 14, 230, 420
    systems = [s for s in SYSTEMS if any(s in g for _, g in groups)]
    height = 40 + len(groups) * (len(systems) * row_h + gap) + 20 * len(systems)
    vals = [v for _, g in groups for v in g.values() if v and v > 0]
    top = max(vals) if vals else 1
    lo = min(vals) if vals else 1
    scale = (lambda v: (math.log10(v) - math.log10(lo / 2)) / (math.log10(top) - math.log10(lo / 2))) if log else (lambda v: v / top)
    svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + width + 120}" height="{height}" font-family="sans-serif" font-size="11">',
           f'<text x="10" y="18" font-size="13" font-weight="bold">{title} ({unit}{", log scale" if log else ""})</text>']
    y = 34
    for label, g in groups:
        svg.append(f'<text x="10" y="{y + 11}" font-weight="bold">{label}</text>')
        y += 14
        for s in systems:
            v = g.get(s)
            svg.append(f'<text x="20" y="{y + 11}">{NAMES[s]}</text>')
            if v is not None and v > 0:
                w = max(1, scale(v) * width)
                svg.append(f'<rect x="{left}" y="{y}" width="{w:.1f}" height="{row_h - 3}" fill="{COLORS[s]}"/>')
                svg.append(f'<text x="{left + w + 4:.1f}" y="{y + 11}">{v:,.2f}</text>' if v < 100 else f'<text x="{left + w + 4:.1f}" y="{y + 11}">{v:,.0f}</text>')
            else:
                svg.append(f'<text x="{left}" y="{y + 11}" fill="#888">n/a</text>')
            y += row_h
        y += gap
    svg.append("</svg>")
    open(path, "w").write("\n".join(svg))


def main():
    results, md, chart_dir = sys.argv[1:4]
    runs = [json.loads(l) for l in open(results) if l.strip()]
    for r in runs:
        # Memory per connection that was actually made (a peer may refuse some).
        made = r.get("threads", 0) * r.get("subscribers_per_thread", 0) - r.get("failed_connections", 0)
        if not r.get("failed") and made > 0:
            r["rss_kib_per_connection"] = max(0, r["rss_kib"]["connected"] - r["rss_kib"]["before_connections"]) / made
    by = {}
    for r in runs:
        by.setdefault(r["scenario"], {"title": r["title"], "rows": {}})["rows"][r["system"]] = r
    os.makedirs(chart_dir, exist_ok=True)
    ok = lambda d: d and not d.get("failed")
    thr = [(SHORT[k], {s: d["deliveries_per_s"] for s, d in by[k]["rows"].items() if ok(d)}) for k in ("a1", "d") if k in by]
    bars("Deliveries per second", "higher is better", thr, f"{chart_dir}/throughput.svg")
    lat = []
    for k in ("c", "d"):
        if k in by:
            for q in ("p50", "p99", "p999"):
                lat.append((f"{SHORT[k]}, {q}", {s: ms(d, q) for s, d in by[k]["rows"].items() if ok(d)}))
    bars("Publish → receive latency", "ms, lower is better", lat, f"{chart_dir}/latency.svg", log=True)
    mem = [(SHORT[k], {s: d["rss_kib_per_connection"] for s, d in by[k]["rows"].items() if ok(d)}) for k in ("b10", "b19") if k in by]
    bars("Server memory per idle connection", "KiB, lower is better", mem, f"{chart_dir}/memory.svg")

    lines = [BEGIN, "", f"Generated by `bench/run.sh` on {date.today().isoformat()}. Machine and versions:", ""]
    lines += [f"- {m}" for m in machine()]
    lines += ["", f"![deliveries per second]({chart_dir}/throughput.svg)", "",
              f"![latency percentiles]({chart_dir}/latency.svg)", "", f"![memory per connection]({chart_dir}/memory.svg)", ""]
    for k, v in by.items():
        lines += [f"#### {v['title']}", "", table(v["rows"], v["rows"].get("agentwire") if ok(v["rows"].get("agentwire")) else None), ""]
    lines.append(END)
    text = open(md).read()
    if BEGIN in text and END in text:
        text = text[: text.index(BEGIN)] + "\n".join(lines) + text[text.index(END) + len(END):]
    else:
        text = text.rstrip() + "\n\n## The whole comparison, generated (issue 8)\n\n" + "\n".join(lines) + "\n"
    open(md, "w").write(text)


if __name__ == "__main__":
    main()
