"""An OpenAI Agents SDK agent, run streamed and published to agentwire in one line.
It runs on the SDK's ScriptedModel (a tool call, then an answer), so it needs no API key.

    pip install './clients/python[openai-agents]' && python examples/openai_agents_agent.py
"""

import asyncio
import os

from agents import Agent, Runner, function_tool, set_tracing_disabled
from agents.testing import ScriptedModel, assistant_message, function_call

from agentwire import AsyncPublisher
from agentwire.openai_agents import publish_streamed

set_tracing_disabled(True)


@function_tool
def clock(tz: str) -> str:
    """The time in a zone."""
    return f"10:00 {tz}"


model = ScriptedModel([[function_call("clock", {"tz": "UTC"}, call_id="call_1")], [assistant_message("It is 10:00 in UTC.")]])
agent = Agent(name="openai-agents-example", model=model, tools=[clock])


async def main() -> None:
    async with AsyncPublisher(os.environ.get("AGENTWIRE_URL", "http://127.0.0.1:8080"), os.environ.get("AGENTWIRE_PUBLISH_KEY", "dev-publish-key")) as agentwire:
        await publish_streamed(agentwire, Runner.run_streamed(agent, "what time is it?"), thread_id=os.environ.get("AGENTWIRE_THREAD", "thread_demo"), user_id="alice")


asyncio.run(main())
