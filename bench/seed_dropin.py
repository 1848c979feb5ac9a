"""The seed drop-in under concurrent calls (issue 17, item 4).

A seed agent's notifies, as the seed's own tests make them: `concurrency`
agents at once, each making runs one after another (`runs` in all), each run
`agent_started`, `thinking` thoughts, one tool call and `agent_completed`, every
call awaited before the next: `concurrency` calls in flight. It
reports notifies a second, each call's latency (p50 / p99 / max), and the CPU
of this process and of the server, read from /proc. Against a release
`agentwire serve` on its durable store (dev mode, the soak's lifted rates),
started here on a free loopback port and stopped at the end.

    cargo build --release -p agentwire
    target/py-venv/bin/python bench/seed_dropin.py [runs] [thinking] [concurrency]

Defaults: 1,000 runs, 8 thoughts each (12 notifies a run), 100 agents at once.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "clients" / "python" / "src"))

from agentwire.seed import AgentWebSocketBridge  # noqa: E402

LIFTED = ["--publish-rate", "10000000", "--quota-key-runs", "100000000", "--quota-key-events", "1000000000"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_server(data: str) -> tuple:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTWIRE_")}
    env["AGENTWIRE_LOG"] = "warn"
    binary = str(ROOT / "target" / "release" / "agentwire")
    args = [binary, "serve", "--listen", f"127.0.0.1:{port}", "--data-dir", data, *LIFTED]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            if httpx.get(f"{base}/healthz").status_code == 200:
                return proc, base
        except httpx.TransportError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("agentwire did not start")


async def seed_run(bridge: AgentWebSocketBridge, n: int, thinking: int, gate: asyncio.Semaphore, latencies: list, firsts: list) -> int:
    """One seed agent's run, call after call; answers how many notifies were refused."""
    run_id = f"run_thread_seedbench{n}_{n:08x}"
    calls = [lambda: bridge.notify_agent_started(run_id, "triage", context={"query": "why is the build red?"})]
    for step in range(thinking):
        calls.append(lambda step=step: bridge.notify_agent_thinking(run_id, "triage", f"step {step}: reading the logs", step_number=step, progress_percentage=step * 10.0))
    calls.append(lambda: bridge.notify_tool_executing(run_id, "triage", "search", {"q": "build"}))
    calls.append(lambda: bridge.notify_tool_completed(run_id, "triage", "search", {"hits": 3}, execution_time_ms=12))
    calls.append(lambda: bridge.notify_agent_completed(run_id, "triage", {"answer": "a flaky test"}, execution_time_ms=900))
    refused = 0
    for i, call in enumerate(calls):
        async with gate:
            began = time.perf_counter()
            ok = await call()
            latencies.append(time.perf_counter() - began)
            if i == 0:
                # The first call of a run also registers it (an HTTP request).
                firsts.append(latencies[-1])
        refused += 0 if ok else 1
    return refused


def quantile(sorted_values: list, q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


async def main(runs: int, thinking: int, concurrency: int) -> None:
    data = tempfile.mkdtemp(prefix="seed-bench-", dir=ROOT / "target")
    proc, base = start_server(data)
    try:
        bridge = AgentWebSocketBridge(base, "dev-publish-key", user_for_thread=lambda thread: "bench")
        gate = asyncio.Semaphore(concurrency)
        latencies: list = []
        firsts: list = []
        await seed_run(bridge, 10_000, 1, gate, [], [])  # warm: the connection
        server_cpu, own_cpu, began = cpu_seconds(proc.pid), time.process_time(), time.perf_counter()
        todo = iter(range(runs))

        async def agent() -> int:
            # One seed agent: its runs one after another, as an agent process makes them.
            return sum([await seed_run(bridge, n, thinking, gate, latencies, firsts) for n in todo])

        refused = sum(await asyncio.gather(*(agent() for _ in range(concurrency))))
        took = time.perf_counter() - began
        server_cpu, own_cpu = cpu_seconds(proc.pid) - server_cpu, time.process_time() - own_cpu
        await bridge.aclose()
    finally:
        proc.kill()
        proc.wait()
        subprocess.run(["rm", "-rf", data], check=False)
    latencies.sort()
    firsts.sort()
    ms = [quantile(latencies, q) * 1e3 for q in (0.5, 0.99, 1.0)]
    first_ms = [quantile(firsts, q) * 1e3 for q in (0.5, 0.99, 1.0)]
    print(f"seed drop-in: {runs} runs x {thinking + 4} notifies, {concurrency} agents at once")
    print(f"notifies: {len(latencies)} in {took:.2f} s = {len(latencies) / took:,.0f}/s; refused {refused}")
    print(f"per call p50 / p99 / max: {ms[0]:.2f} / {ms[1]:.2f} / {ms[2]:.2f} ms")
    print(f"a run's first call (registers it) p50 / p99 / max: {first_ms[0]:.2f} / {first_ms[1]:.2f} / {first_ms[2]:.2f} ms")
    print(f"CPU: this process {own_cpu:.2f} s, server {server_cpu:.2f} s")


if __name__ == "__main__":
    argv = [int(a) for a in sys.argv[1:]]
    asyncio.run(main(*(argv + [1000, 8, 100][len(argv):])))
