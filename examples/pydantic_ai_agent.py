"""A pydantic-ai agent published to agentwire with one call in place of agent.run.
It runs on pydantic-ai's TestModel (calls every tool, then answers), so it needs no API key.

    pip install './clients/python[pydantic-ai]' && python examples/pydantic_ai_agent.py
"""

import asyncio
import os

from pydantic_ai import Agent
from pydantic_ai.models.test import TestModel

from agentwire import AsyncPublisher
from agentwire.pydantic_ai import publish_run

agent = Agent(TestModel(custom_output_text="It is 10:00 in UTC."), name="pydantic-ai-example")


@agent.tool_plain
def clock(tz: str) -> str:
    """The time in a zone."""
    return f"10:00 {tz}"


async def main() -> None:
    async with AsyncPublisher(os.environ.get("AGENTWIRE_URL", "http://127.0.0.1:8080"), os.environ.get("AGENTWIRE_PUBLISH_KEY", "dev-publish-key")) as agentwire:
        await publish_run(agentwire, agent, "what time is it?", thread_id=os.environ.get("AGENTWIRE_THREAD", "thread_demo"), user_id="alice")


asyncio.run(main())
