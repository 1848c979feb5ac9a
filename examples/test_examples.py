"""Every example, run against a real agentwire, must produce the events it promises.
Run by `examples/test.sh` (and so by `./scripts/test`)."""

import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BIN = Path(os.environ.get("AGENTWIRE_BIN", ROOT / "target" / "debug" / "agentwire"))
RUST_EXAMPLE = Path(os.environ.get("RUST_EXAMPLE_BIN", ROOT / "target" / "debug" / "agentwire-example-rust-agent"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTWIRE_")}
    env["AGENTWIRE_LOG"] = "warn"
    return env


def serve(args: list, env: dict) -> subprocess.Popen:
    """Starts a server and waits for /healthz."""
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL)
    base = f"http://{env.get('AGENTWIRE_LISTEN') or args[args.index('--listen') + 1]}"
    for _ in range(400):
        try:
            if httpx.get(f"{base}/healthz").status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"{args[0]} did not start")


@pytest.fixture(scope="module")
def server():
    port = free_port()
    proc = serve([str(BIN), "serve", "--listen", f"127.0.0.1:{port}", "--data-dir", tempfile.mkdtemp(prefix="agentwire-ex-")], clean_env())
    yield f"http://127.0.0.1:{port}"
    proc.kill()
    proc.wait()


def events_of(base: str, thread: str) -> list:
    token = httpx.get(f"{base}/dev/token", params={"user": "alice"}).json()["token"]
    page = httpx.get(f"{base}/v1/threads/{thread}/events", params={"limit": 1000}, headers={"authorization": f"Bearer {token}"})
    page.raise_for_status()
    return page.json()["events"]


def check_run(events: list, agent: str, answer: str) -> None:
    kinds = [e["event"] for e in events]
    assert kinds[0] == "agent_started" and events[0]["data"]["agent_name"] == agent, kinds
    assert kinds[-1] == "agent_completed", kinds
    assert {"tool_executing", "tool_completed", "agent_message"} <= set(kinds), kinds
    assert "".join(e["data"]["delta"] for e in events if e["event"] == "agent_message").strip() == answer


CASES = [
    (["python", "python_agent.py"], "python-example", "2 + 2 = 4"),
    (["python", "langgraph_agent.py"], "langgraph-example", "It is 10:00 in UTC."),
    (["python", "pydantic_ai_agent.py"], "pydantic-ai-example", "It is 10:00 in UTC."),
    (["python", "openai_agents_agent.py"], "openai-agents-example", "It is 10:00 in UTC."),
    (["node", "node/vercel_ai_agent.mjs"], "vercel-ai-example", "It is 10:00 in UTC."),
]


@pytest.mark.parametrize("command,agent,answer", CASES, ids=[c[0][1] for c in CASES])
def test_an_agent_example_publishes_its_run(server, command, agent, answer):
    thread = f"thread_ex{uuid.uuid4().hex[:12]}"
    env = {**clean_env(), "AGENTWIRE_URL": server, "AGENTWIRE_THREAD": thread}
    program = sys.executable if command[0] == "python" else command[0]
    done = subprocess.run([program, *command[1:]], cwd=HERE, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    check_run(events_of(server, thread), agent, answer)


def test_the_use_chat_example_gets_the_demo_agents_run_as_one_message(server):
    thread = f"thread_ex{uuid.uuid4().hex[:12]}"
    env = {**clean_env(), "AGENTWIRE_URL": server, "AGENTWIRE_THREAD": thread}
    done = subprocess.run(["node", "node/use_chat.mjs"], cwd=HERE, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    events = events_of(server, thread)
    assert events[0]["event"] == "user_message" and events[-1]["event"] == "agent_completed"
    answer = "".join(e["data"]["delta"] for e in events if e["event"] == "agent_message")
    assert f"answer: {answer}" in done.stdout.splitlines(), done.stdout
    assert sum(line.startswith("tool ") for line in done.stdout.splitlines()) == sum(e["event"] == "tool_completed" for e in events)


def test_the_rust_example_serves_its_own_agent():
    port = free_port()
    env = {**clean_env(), "AGENTWIRE_LISTEN": f"127.0.0.1:{port}"}
    proc = serve([str(RUST_EXAMPLE)], env)
    base = f"http://127.0.0.1:{port}"
    try:
        token = httpx.get(f"{base}/dev/token", params={"user": "alice"}).json()["token"]
        sent = httpx.post(f"{base}/v1/threads/thread_shout/messages", json={"text": "hello"}, headers={"authorization": f"Bearer {token}"})
        assert sent.status_code in (200, 201, 202), sent.text
        for _ in range(200):
            events = events_of(base, "thread_shout")
            if events and events[-1]["event"] in ("agent_completed", "agent_error"):
                break
            time.sleep(0.05)
        kinds = [e["event"] for e in events]
        assert kinds == ["user_message", "agent_started", "agent_thinking", "tool_executing", "tool_completed", "agent_message", "agent_completed"], kinds
        assert events[-2]["data"]["delta"] == "HELLO!"
        assert events[-1]["data"]["result"] == {"shouted": "HELLO"}
    finally:
        proc.kill()
        proc.wait()
