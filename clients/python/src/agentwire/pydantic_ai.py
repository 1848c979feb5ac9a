"""pydantic-ai to agentwire: an agent's run, published as it streams.

One line in place of ``agent.run(...)``::

    from agentwire.pydantic_ai import publish_run

    result = await publish_run(publisher, agent, "what time is it?", thread_id=..., user_id=...)

It starts an agentwire run, runs the agent with an ``event_stream_handler`` that
maps its events, and ends the run with ``agent_completed`` (the output) or
``agent_error`` (the exception, raised on). Any other ``agent.run`` keyword is
passed through. `event_stream_handler(run)` gives the handler alone, for a run
of the publisher's you started yourself.

| pydantic-ai event | agentwire event |
|---|---|
| a thinking part, start to end | one ``agent_thinking`` with its content |
| text part start and ``TextPartDelta`` | ``agent_message`` deltas (one ``message_id`` per text part) |
| ``FunctionToolCallEvent`` | ``tool_executing`` |
| ``FunctionToolResultEvent`` | ``tool_completed`` with ``result``, or ``error`` when the call failed or is retried |

Events are read by their class names and fields, which pydantic-ai has kept
across its versions; it is tested with pydantic-ai 2.
"""

from __future__ import annotations

from typing import Any, AsyncIterable, Callable, Dict, Optional, Tuple

from ._json import jsonable
from .client import AsyncPublisher, AsyncRun, MessageIds, OpenTools

Json = Any


class _Events:
    """One run's mapping: thinking being gathered, text parts' message ids, open tool calls."""

    def __init__(self, run: AsyncRun) -> None:
        self.run = run
        self.thinking: Dict[int, str] = {}
        self.messages = MessageIds()
        self.tools = OpenTools()

    async def text(self, index: int, delta: str) -> None:
        if delta:
            await self.run.message(delta, self.messages.of(index))

    async def handle(self, event: Any) -> None:
        kind = type(event).__name__
        part = getattr(event, "part", None)
        part_kind = type(part).__name__
        if kind == "PartStartEvent":
            if part_kind == "ThinkingPart":
                self.thinking[event.index] = part.content or ""
            elif part_kind == "TextPart":
                # A new text part at an index starts a new message.
                self.messages.forget(event.index)
                await self.text(event.index, part.content)
        elif kind == "PartDeltaEvent":
            delta = event.delta
            if type(delta).__name__ == "ThinkingPartDelta":
                self.thinking[event.index] = self.thinking.get(event.index, "") + (delta.content_delta or "")
            elif type(delta).__name__ == "TextPartDelta":
                await self.text(event.index, delta.content_delta)
        elif kind == "PartEndEvent" and part_kind == "ThinkingPart":
            thought = self.thinking.pop(event.index, "") or part.content or ""
            if thought.strip():
                await self.run.thinking(thought)
        elif kind == "FunctionToolCallEvent":
            await self.run.emit(self.tools.start(part.tool_call_id, part.tool_name, _args(part)))
        elif kind == "FunctionToolResultEvent":
            await self._tool_result(event)

    async def _tool_result(self, event: Any) -> None:
        # `part` since pydantic-ai 1.x; `result` before.
        part = getattr(event, "part", None) or getattr(event, "result", None)
        call_id = getattr(part, "tool_call_id", None)
        failed = type(part).__name__ == "RetryPromptPart" or getattr(part, "outcome", "success") != "success"
        if failed:
            done = self.tools.finish(call_id, error=str(getattr(part, "content", "") or getattr(part, "outcome", "failed")))
        else:
            done = self.tools.finish(call_id, result=jsonable(getattr(part, "content", None)))
        if done is not None:
            await self.run.emit(done)


def _args(part: Any) -> Json:
    try:
        return jsonable(part.args_as_dict())
    except Exception:  # arguments the model sent as broken JSON: shown as they came
        return jsonable(part.args)


def event_stream_handler(run: AsyncRun) -> Callable[[Any, AsyncIterable[Any]], Any]:
    """An ``event_stream_handler`` for ``agent.run`` that publishes into `run`."""
    events = _Events(run)

    async def handler(_ctx: Any, stream: AsyncIterable[Any]) -> None:
        async for event in stream:
            await events.handle(event)

    return handler


async def publish_run(
    publisher: AsyncPublisher,
    agent: Any,
    user_prompt: Any = None,
    *,
    thread_id: str,
    user_id: str,
    agent_name: Optional[str] = None,
    **run_kwargs: Any,
) -> Any:
    """Runs `agent` as one agentwire run; answers what ``agent.run`` answers."""
    name = agent_name or getattr(agent, "name", None) or "pydantic-ai"
    async with publisher.run(thread_id, user_id, name, input=jsonable(user_prompt)) as run:
        result = await agent.run(user_prompt, event_stream_handler=event_stream_handler(run), **run_kwargs)
        run.result = jsonable(result.output)
    return result


__all__: Tuple[str, ...] = ("event_stream_handler", "publish_run")
