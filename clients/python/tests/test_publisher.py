import asyncio
import uuid

import pytest

from agentwire import AgentwireError, AsyncPublisher, Event, Publisher
from agentwire.seed import AgentWebSocketBridge, extract_thread_id

from conftest import history

KEY = "dev-publish-key"


def fresh_thread() -> str:
    return f"thread_py{uuid.uuid4().hex[:10]}"


def kinds(events):
    return [e["event"] for e in events]


def test_a_run_context_manager_publishes_the_whole_lifecycle(server):
    thread = fresh_thread()
    with Publisher(server, KEY) as pub:
        with pub.run(thread, "alice", "py-agent", input="2 + 2?") as run:
            run.thinking("Adding", step=1)
            with run.tool("calculator", {"expression": "2 + 2", "api_key": "sk-1"}) as call:
                call.result = 4
            run.message("2 + 2 = 4")
            run.result = {"answer": 4}
    events = history(server, thread, "alice")
    assert kinds(events) == ["agent_started", "agent_thinking", "tool_executing", "tool_completed", "agent_message", "agent_completed"]
    assert events[2]["data"]["args"]["api_key"] == "[REDACTED]"
    assert events[3]["data"]["result"] == 4
    assert events[5]["data"]["result"] == {"answer": 4}
    assert [e["seq"] for e in events] == list(range(1, 7))


def test_an_exception_ends_the_tool_call_and_the_run_with_errors(server):
    thread = fresh_thread()
    with Publisher(server, KEY) as pub:
        with pytest.raises(ZeroDivisionError):
            with pub.run(thread, "bob", "py-agent") as run:
                with run.tool("divide", {"a": 1, "b": 0}):
                    1 / 0
        info = pub.get_run(run.run_id)
    events = history(server, thread, "bob")
    assert kinds(events) == ["agent_started", "tool_executing", "tool_completed", "agent_error"]
    assert "ZeroDivisionError" in events[2]["data"]["error"]
    assert events[3]["data"]["code"] == "failed"
    assert info["status"] == "error"


def test_async_runs_and_safe_retries(server):
    async def main():
        thread = fresh_thread()
        async with AsyncPublisher(server, KEY) as pub:
            async with pub.run(thread, "carol", "async-agent") as run:
                async with run.tool("clock") as call:
                    call.result = "noon"
                # The same event published twice (a retry) is stored once.
                event = Event("agent_thinking", {"thought": "once"})
                first = await run.emit(event)
                again = await run.emit(event)
                assert first == again
            with pytest.raises(AgentwireError) as refused:
                await pub.publish(run.run_id, [Event("agent_thinking", {"thought": "late"})])
            assert refused.value.status == 409 and refused.value.code == "lifecycle_violation"
        return thread

    thread = asyncio.run(main())
    assert kinds(history(server, thread, "carol")) == ["agent_started", "tool_executing", "tool_completed", "agent_thinking", "agent_completed"]


def test_retries_ride_out_an_unreachable_server():
    pub = Publisher("http://127.0.0.1:9", KEY, retries=2, backoff=0.01)
    with pytest.raises(Exception):
        pub.create_run("thread_x1", "dave", "a")


def test_the_seed_bridge_is_a_drop_in(server):
    thread = fresh_thread()
    run_id = f"run_{thread}_{uuid.uuid4().hex[:8]}"
    assert extract_thread_id(run_id) == thread
    assert extract_thread_id("user_123_thread_789_session") == "thread_789"
    assert extract_thread_id("mythread_1") is None

    async def main():
        bridge = AgentWebSocketBridge(server, KEY, user_for_thread=lambda t: "erin")
        results = [
            await bridge.notify_agent_started(run_id, "triage", context={"query": "rust"}),
            await bridge.notify_agent_thinking(run_id, "triage", "Searching", step_number=1, progress_percentage=10),
            await bridge.notify_tool_executing(run_id, "triage", "search", parameters={"q": "rust", "password": "x"}),
            await bridge.notify_tool_executing(run_id, "triage", "search", parameters={"q": "tokio"}),
            await bridge.notify_tool_completed(run_id, "triage", "search", result=["a"], execution_time_ms=5),
            await bridge.notify_tool_completed(run_id, "triage", "search", result=["b"], execution_time_ms=6),
            await bridge.notify_agent_completed(run_id, "triage", result="done", execution_time_ms=30),
            # A run id with no thread in it cannot be routed: the bridge says so instead of raising.
            await bridge.notify_agent_started("run_without_a_thread", "triage"),
        ]
        await bridge.aclose()
        return results

    results = asyncio.run(main())
    assert results == [True] * 7 + [False]
    events = history(server, thread, "erin")
    assert kinds(events) == ["agent_started", "agent_thinking", "tool_executing", "tool_executing", "tool_completed", "tool_completed", "agent_completed"]
    first_call = events[2]["data"]["tool_call_id"]
    assert events[4]["data"]["tool_call_id"] == first_call, "completions pair with calls in order"
    assert events[4]["data"]["result"] == ["a"]
    assert events[2]["data"]["args"]["password"] == "[REDACTED]"


def test_the_seed_bridge_never_adopts_a_run_of_another_thread(server):
    # Issue 14: the bridge took any 409 from run registration as "ours already".
    named, other = fresh_thread(), fresh_thread()
    run_id = f"run_{named}_{uuid.uuid4().hex[:8]}"
    pub = Publisher(server, KEY)
    pub.create_run(named, "mallory", "a")
    pub.create_run(other, "mallory", "a", run_id=run_id)  # her own threads: allowed
    with pytest.raises(AgentwireError) as refused:  # but never for a thread of someone else
        pub.create_run(fresh_thread(), "bob", "a", run_id=f"run_{named}_1")
    assert refused.value.status == 403

    async def main():
        bridge = AgentWebSocketBridge(server, KEY, user_for_thread=lambda t: "mallory")
        sent = await bridge.notify_agent_started(run_id, "triage")
        await bridge.aclose()
        return sent

    assert asyncio.run(main()) is False
    assert history(server, named, "mallory") == [] and history(server, other, "mallory") == []


def test_the_seed_bridge_takes_every_seed_signature(server):
    # Issue 17: the seed's own calls raised TypeError or did not exist.
    thread = fresh_thread()
    run_id = f"run_{thread}_{uuid.uuid4().hex[:8]}"
    died = f"run_{thread}_{uuid.uuid4().hex[:8]}"
    trace = {"trace_id": "abc", "span_id": "def"}

    async def main():
        bridge = AgentWebSocketBridge(server, KEY, user_for_thread=lambda t: "erin")
        results = [
            await bridge.notify_agent_started(run_id, "triage", {"query": "rust"}, trace_context=trace),
            await bridge.notify_agent_thinking(run_id, "triage", "Searching", 1, 40, trace_context=trace),
            await bridge.notify_progress_update(run_id, "triage", {"percentage": 60, "message": "half way", "current_step": 3}),
            await bridge.notify_custom(run_id, "triage", "plan_ready", {"steps": 3}),
            await bridge.notify_agent_error(
                run_id, "triage", "it broke", {"error_type": "Timeout", "agent_step": "search"}, trace
            ),
            await bridge.notify_agent_started(died, "triage"),
            await bridge.notify_agent_death(died, "triage", "no_heartbeat", {"last_seen": 3}),
        ]
        await bridge.aclose()
        return results

    assert asyncio.run(main()) == [True] * 7
    events = history(server, thread, "erin")
    assert kinds(events) == ["agent_started", "agent_thinking", "agent_thinking", "agent_thinking", "agent_error", "agent_started", "agent_error"]
    assert events[1]["data"]["progress_percentage"] == 40
    assert events[2]["data"]["progress_percentage"] == 60 and events[2]["data"]["thought"] == "half way"
    assert events[3]["data"]["custom_type"] == "plan_ready"
    assert events[4]["data"]["error_context"]["error_type"] == "Timeout"
    assert events[6]["data"]["code"] == "worker_lost" and events[6]["data"]["death_cause"] == "no_heartbeat"


def test_the_seed_bridge_adapts_agents_that_break_the_lifecycle(server):
    # Issue 17: seed agents think before starting and run start → complete several
    # times on one run id; agentwire refused two thirds of what they said.
    thread = fresh_thread()
    run_id = f"run_{thread}_{uuid.uuid4().hex[:8]}"

    async def main():
        bridge = AgentWebSocketBridge(server, KEY, user_for_thread=lambda t: "erin")
        results = [
            await bridge.notify_agent_thinking(run_id, "triage", "no start first"),
            await bridge.notify_agent_completed(run_id, "triage", result="one"),
            await bridge.notify_agent_started(run_id, "triage"),
            await bridge.notify_tool_executing(run_id, "triage", "search", {"q": 1}),
            await bridge.notify_tool_completed(run_id, "triage", "search", ["r"]),
            await bridge.notify_agent_completed(run_id, "triage", result="two"),
            await bridge.notify_agent_thinking(run_id, "triage", "after the end"),
            await bridge.notify_agent_error(run_id, "triage", "three failed"),
        ]
        await bridge.aclose()
        return results

    assert asyncio.run(main()) == [True] * 8
    events = history(server, thread, "erin")
    assert kinds(events) == [
        "agent_started", "agent_thinking", "agent_completed",
        "agent_started", "tool_executing", "tool_completed", "agent_completed",
        "agent_started", "agent_thinking", "agent_error",
    ]
    runs = [e["run_id"] for e in events]
    assert runs[:3] == [run_id] * 3
    assert runs[3:7] == [f"{run_id}_1"] * 4
    assert runs[7:] == [f"{run_id}_2"] * 3
