"""The OpenAI Agents SDK (``openai-agents``) to agentwire: a streamed run, published as it goes.

One line around ``Runner.run_streamed``::

    from agentwire.openai_agents import publish_streamed

    output = await publish_streamed(publisher, Runner.run_streamed(agent, "what time is it?"), thread_id=..., user_id=...)

It starts an agentwire run, reads the run's ``stream_events()``, and ends the
run with ``agent_completed`` (the final output) or ``agent_error`` (the
exception, raised on; the SDK run is cancelled). What each event becomes:

| Agents SDK stream event | agentwire event |
|---|---|
| raw ``response.output_text.delta`` | ``agent_message`` delta (one ``message_id`` per output message) |
| raw reasoning text deltas, then ``reasoning_item_created`` | one ``agent_thinking`` with the reasoning |
| ``tool_called`` | ``tool_executing`` with the parsed arguments |
| ``tool_output`` | ``tool_completed`` with the tool's output |

The SDK turns a failing tool into an output that says so (its
``failure_error_function``); that output is the ``result``. Tested with
openai-agents 0.24 and its ``ScriptedModel``.
"""

from __future__ import annotations

import json
import uuid
from typing import Any, Dict, Optional

from ._json import jsonable
from .client import AsyncPublisher, AsyncRun, MessageIds, OpenTools

Json = Any


def _field(value: Any, name: str) -> Any:
    """A field of an SDK item, which may be a model or a plain dict."""
    return value.get(name) if isinstance(value, dict) else getattr(value, name, None)


def _reasoning_text(raw: Any) -> str:
    parts = []
    for key in ("summary", "content"):
        for block in _field(raw, key) or []:
            text = _field(block, "text")
            if text:
                parts.append(str(text))
    return "\n".join(parts)


class _Events:
    """One run's mapping: message ids per output item, reasoning being gathered, open tool calls."""

    def __init__(self, run: AsyncRun) -> None:
        self.run = run
        self.messages = MessageIds()
        self.reasoning: Dict[str, str] = {}
        self.tools = OpenTools()

    async def handle(self, event: Any) -> None:
        kind = _field(event, "type")
        if kind == "raw_response_event":
            await self._raw(event.data)
        elif kind == "run_item_stream_event":
            await self._item(event.name, event.item)

    async def _raw(self, data: Any) -> None:
        kind = _field(data, "type") or ""
        item_id = str(_field(data, "item_id") or "")
        if kind == "response.output_text.delta":
            delta = _field(data, "delta") or ""
            if delta:
                await self.run.message(delta, self.messages.of(item_id))
        elif kind in ("response.reasoning_summary_text.delta", "response.reasoning_text.delta"):
            self.reasoning[item_id] = self.reasoning.get(item_id, "") + (_field(data, "delta") or "")

    async def _item(self, name: str, item: Any) -> None:
        raw = _field(item, "raw_item")
        if name == "reasoning_item_created":
            thought = self.reasoning.pop(str(_field(raw, "id") or ""), "") or _reasoning_text(raw)
            if thought.strip():
                await self.run.thinking(thought)
        elif name == "tool_called":
            call_id = str(_field(raw, "call_id") or _field(raw, "id") or f"call_{uuid.uuid4().hex[:12]}")
            tool = _field(raw, "name") or _field(raw, "type") or "tool"
            await self.run.emit(self.tools.start(call_id, tool, _arguments(raw)))
        elif name == "tool_output":
            done = self.tools.finish(str(_field(raw, "call_id") or ""), result=jsonable(_field(item, "output")))
            if done is not None:
                await self.run.emit(done)


def _arguments(raw: Any) -> Json:
    arguments = _field(raw, "arguments")
    if isinstance(arguments, str):
        try:
            return json.loads(arguments)
        except ValueError:
            return arguments
    return jsonable(arguments)


async def publish_streamed(
    publisher: AsyncPublisher,
    result: Any,
    *,
    thread_id: str,
    user_id: str,
    agent_name: Optional[str] = None,
) -> Any:
    """Publishes the run `result` (what ``Runner.run_streamed`` answers) as it streams; answers its final output."""
    agent = getattr(result, "current_agent", None) or getattr(result, "last_agent", None)
    name = agent_name or getattr(agent, "name", None) or "openai-agents"
    async with publisher.run(thread_id, user_id, name, input=jsonable(getattr(result, "input", None))) as run:
        events = _Events(run)
        try:
            async for event in result.stream_events():
                await events.handle(event)
        except BaseException:
            cancel = getattr(result, "cancel", None)
            if callable(cancel):
                cancel()
            raise
        run.result = jsonable(result.final_output)
    return result.final_output
