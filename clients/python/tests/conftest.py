"""A real agentwire server (dev mode, embedded store) for the tests."""

import os
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[3]
BIN = os.environ.get("AGENTWIRE_BIN", str(ROOT / "target" / "debug" / "agentwire"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def server():
    port = _free_port()
    data = tempfile.mkdtemp(prefix="agentwire-py-")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTWIRE_")}
    env["AGENTWIRE_LOG"] = "warn"
    proc = subprocess.Popen(
        [BIN, "serve", "--listen", f"127.0.0.1:{port}", "--data-dir", data, "--demo-step-delay", "0s"],
        env=env,
        stdout=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            if httpx.get(f"{base}/healthz").status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.05)
    else:
        proc.kill()
        raise RuntimeError("agentwire did not start")
    yield base
    proc.kill()
    proc.wait()


def history(base: str, thread: str, user: str) -> list:
    token = httpx.get(f"{base}/dev/token", params={"user": user}).json()["token"]
    page = httpx.get(f"{base}/v1/threads/{thread}/events", params={"limit": 10000}, headers={"authorization": f"Bearer {token}"})
    page.raise_for_status()
    return page.json()["events"]


def by_call(events: list, kind: str) -> dict:
    """The data of `kind` events (tool_executing, tool_completed) by tool_call_id."""
    return {e["data"]["tool_call_id"]: e["data"] for e in events if e["event"] == kind}


def thoughts(events: list) -> list:
    return [e["data"]["thought"] for e in events if e["event"] == "agent_thinking"]
