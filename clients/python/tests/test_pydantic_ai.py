"""The pydantic-ai integration against a real agentwire: an agent on pydantic-ai's
own FunctionModel that thinks, calls two tools (one asks for a retry) and streams
its answer, published by one ``publish_run`` call."""

import asyncio
import uuid

import pytest
from pydantic_ai import Agent, ModelRetry
from pydantic_ai.messages import ModelRequest
from pydantic_ai.models.function import AgentInfo, DeltaThinkingPart, DeltaToolCall, FunctionModel

from agentwire import AsyncPublisher
from agentwire.pydantic_ai import publish_run

from conftest import by_call, history, thoughts

KEY = "dev-publish-key"
ANSWER = ["It ", "is ", "10:00; ", "Atlantis ", "is ", "not ", "a ", "city."]


async def scripted(messages: list, info: AgentInfo):
    """First the tools (with a thought), then, once they answered, the words of the answer."""
    answered = any(
        type(p).__name__ in ("ToolReturnPart", "RetryPromptPart")
        for m in messages
        if isinstance(m, ModelRequest)
        for p in m.parts
    )
    if not answered:
        yield {0: DeltaThinkingPart(content="I need the clock ")}
        yield {0: DeltaThinkingPart(content="and the weather.")}
        yield {1: DeltaToolCall(name="clock", json_args='{"tz": "UTC"}', tool_call_id="call_clock")}
        yield {2: DeltaToolCall(name="weather", json_args='{"city": "Atlantis"}', tool_call_id="call_weather")}
        return
    for word in ANSWER:
        yield word


def make_agent(fail: bool = False) -> Agent:
    agent = Agent(FunctionModel(stream_function=scripted), name="pydantic-agent", retries=1)

    @agent.tool_plain
    def clock(tz: str) -> str:
        """The time in a zone."""
        if fail:
            raise RuntimeError("the clock broke")
        return f"10:00 {tz}"

    @agent.tool_plain
    def weather(city: str) -> str:
        """The weather in a city."""
        raise ModelRetry(f"no such city: {city}")

    return agent


def test_a_pydantic_ai_run_is_published_in_one_line(server):
    thread = f"thread_pa{uuid.uuid4().hex[:12]}"

    async def main():
        async with AsyncPublisher(server, KEY) as publisher:
            result = await publish_run(publisher, make_agent(), "time and weather?", thread_id=thread, user_id="ada")
            await publisher.flush()
            return result

    result = asyncio.run(main())
    assert result.output == "".join(ANSWER)
    events = history(server, thread, "ada")
    kinds = [e["event"] for e in events]
    assert kinds[0] == "agent_started" and kinds[-1] == "agent_completed"
    assert events[0]["data"] == {"agent_name": "pydantic-agent", "input": "time and weather?"}
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert thoughts(events) == ["I need the clock and the weather."]
    started = by_call(events, "tool_executing")
    assert started["call_clock"]["tool_name"] == "clock" and started["call_clock"]["args"] == {"tz": "UTC"}
    assert started["call_weather"]["args"] == {"city": "Atlantis"}
    done = by_call(events, "tool_completed")
    assert done["call_clock"]["result"] == "10:00 UTC"
    assert "no such city: Atlantis" in done["call_weather"]["error"]
    deltas = [e["data"] for e in events if e["event"] == "agent_message"]
    assert "".join(d["delta"] for d in deltas) == "".join(ANSWER)
    assert len({d["message_id"] for d in deltas}) == 1
    assert events[-1]["data"]["result"] == "".join(ANSWER)


def test_a_failing_pydantic_ai_run_ends_with_agent_error_and_raises(server):
    thread = f"thread_pa{uuid.uuid4().hex[:12]}"

    async def main():
        async with AsyncPublisher(server, KEY) as publisher:
            with pytest.raises(RuntimeError, match="the clock broke"):
                await publish_run(publisher, make_agent(fail=True), "time?", thread_id=thread, user_id="ada", agent_name="clockwork")
            await publisher.flush()

    asyncio.run(main())
    events = history(server, thread, "ada")
    assert events[0]["data"]["agent_name"] == "clockwork"
    assert events[-1]["event"] == "agent_error"
    assert events[-1]["data"]["code"] == "failed" and "the clock broke" in events[-1]["data"]["message"]
