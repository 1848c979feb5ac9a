"""The OpenAI Agents SDK integration against a real agentwire: an agent on the SDK's
own ScriptedModel that reasons, calls two tools (one fails) and answers, run with
``Runner.run_streamed`` and published by one ``publish_streamed`` call."""

import asyncio
import uuid

import pytest
from agents import Agent, Runner, function_tool, set_tracing_disabled
from agents.testing import ScriptedModel, assistant_message, function_call
from openai.types.responses import ResponseReasoningItem
from openai.types.responses.response_reasoning_item import Summary

from agentwire import AsyncPublisher
from agentwire.openai_agents import publish_streamed

from conftest import by_call, history, thoughts

KEY = "dev-publish-key"
# No trace export: the tests run without a network.
set_tracing_disabled(True)
ANSWER = "It is 10:00; Atlantis is not a city."


@function_tool
def clock(tz: str) -> str:
    """The time in a zone."""
    return f"10:00 {tz}"


@function_tool
def weather(city: str) -> str:
    """The weather in a city."""
    raise ValueError(f"no such city: {city}")


def scripted(steps) -> Agent:
    return Agent(name="openai-agent", instructions="Answer briefly.", model=ScriptedModel(steps), tools=[clock, weather])


def tools_then_answer():
    thought = ResponseReasoningItem(id="rs_1", type="reasoning", summary=[Summary(text="I need the clock and the weather.", type="summary_text")])
    return [
        [thought, function_call("clock", {"tz": "UTC"}, call_id="call_clock"), function_call("weather", {"city": "Atlantis"}, call_id="call_weather")],
        [assistant_message(ANSWER)],
    ]


def test_an_agents_sdk_run_streamed_is_published_in_one_line(server):
    thread = f"thread_oa{uuid.uuid4().hex[:12]}"

    async def main():
        async with AsyncPublisher(server, KEY) as publisher:
            agent = scripted(tools_then_answer())
            output = await publish_streamed(publisher, Runner.run_streamed(agent, "time and weather?"), thread_id=thread, user_id="ada")
            await publisher.flush()
            return output

    assert asyncio.run(main()) == ANSWER
    events = history(server, thread, "ada")
    kinds = [e["event"] for e in events]
    assert kinds[0] == "agent_started" and kinds[-1] == "agent_completed"
    assert events[0]["data"] == {"agent_name": "openai-agent", "input": "time and weather?"}
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert thoughts(events) == ["I need the clock and the weather."]
    started = by_call(events, "tool_executing")
    assert started["call_clock"] == {"tool_call_id": "call_clock", "tool_name": "clock", "args": {"tz": "UTC"}}
    assert started["call_weather"]["args"] == {"city": "Atlantis"}
    done = by_call(events, "tool_completed")
    assert done["call_clock"]["result"] == "10:00 UTC"
    # The SDK answers a failing tool with a text of its own (failure_error_function), passed on as it is.
    assert done["call_weather"]["result"].startswith("An error occurred while running the tool")
    assert "".join(e["data"]["delta"] for e in events if e["event"] == "agent_message") == ANSWER
    assert kinds.index("tool_completed") < kinds.index("agent_message")
    assert events[-1]["data"]["result"] == ANSWER


def test_a_failing_agents_sdk_run_ends_with_agent_error_and_raises(server):
    thread = f"thread_oa{uuid.uuid4().hex[:12]}"

    async def main():
        async with AsyncPublisher(server, KEY) as publisher:
            agent = scripted([RuntimeError("the model went away")])
            with pytest.raises(RuntimeError, match="the model went away"):
                await publish_streamed(publisher, Runner.run_streamed(agent, "hello"), thread_id=thread, user_id="ada", agent_name="fragile")
            await publisher.flush()

    asyncio.run(main())
    events = history(server, thread, "ada")
    assert [e["event"] for e in events] == ["agent_started", "agent_error"]
    assert events[0]["data"]["agent_name"] == "fragile"
    assert "the model went away" in events[1]["data"]["message"]
