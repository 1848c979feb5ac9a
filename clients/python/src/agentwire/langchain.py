"""LangChain and LangGraph to agentwire: a callback handler, attached in one line.

    from agentwire.langchain import AgentwireCallbackHandler

    graph.invoke(inputs, config={"callbacks": [AgentwireCallbackHandler(publisher, thread_id=..., user_id=..., agent_name="helper")]})

Use `AsyncAgentwireCallbackHandler` with an `AsyncPublisher` for ``ainvoke`` and
``astream``. What each callback becomes:

| LangChain callback | agentwire event |
|---|---|
| the outermost chain starts (the graph's run) | a new run, and ``agent_started`` with its input |
| ``on_llm_new_token`` | ``agent_message`` delta (one ``message_id`` per model call) |
| ``on_llm_end`` with reasoning (content blocks of type ``reasoning``, or ``reasoning_content``) | ``agent_thinking`` |
| ``on_tool_start`` / ``on_tool_end`` / ``on_tool_error`` | ``tool_executing`` / ``tool_completed`` with ``result`` or ``error`` |
| the outermost chain ends / fails | ``agent_completed`` with the last message's text / ``agent_error`` |

A handler may serve several invocations one after another: each outermost
chain is a run of its own in the same thread. Like every LangChain handler, a
failure to publish is logged by LangChain and does not stop the agent.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Awaitable, Dict, List, Optional, TypeVar
from uuid import UUID

from langchain_core.callbacks import AsyncCallbackHandler, BaseCallbackHandler
from langchain_core.messages import BaseMessage, ToolMessage
from langchain_core.outputs import LLMResult

from ._json import jsonable as _jsonable
from .client import AsyncPublisher, Event, MessageIds, OpenTools, Publisher, _describe, _terminal, thinking

Json = Any
T = TypeVar("T")


def jsonable(value: Any) -> Json:
    """A JSON view of what LangChain passes around (messages as role and content)."""

    def message(v: Any) -> Optional[Json]:
        return {"role": v.type, "content": jsonable(v.content)} if isinstance(v, BaseMessage) else None

    return _jsonable(value, message)


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(b if isinstance(b, str) else str(b.get("text", "")) for b in content if isinstance(b, (str, dict)))
    return str(content)


def _final_result(outputs: Any) -> Json:
    """The answer of a graph's run: the last message's text, else the outputs as JSON."""
    messages = outputs.get("messages") if isinstance(outputs, dict) else None
    if isinstance(messages, list) and messages and isinstance(messages[-1], BaseMessage):
        return _text(messages[-1].content)
    if isinstance(outputs, BaseMessage):
        return _text(outputs.content)
    return jsonable(outputs)


def _reasoning(response: LLMResult) -> str:
    """The reasoning a model call returned, if any."""
    parts: List[str] = []
    for generations in response.generations:
        for generation in generations:
            message = getattr(generation, "message", None)
            if message is None:
                continue
            for block in getattr(message, "content_blocks", None) or []:
                if isinstance(block, dict) and block.get("type") == "reasoning" and block.get("reasoning"):
                    parts.append(str(block["reasoning"]))
            extra = message.additional_kwargs.get("reasoning_content")
            if not parts and isinstance(extra, str) and extra:
                parts.append(extra)
    return "\n".join(parts)


class _Mapping:
    """What both handlers share: which callbacks are the run's, and the events they make."""

    def __init__(self, thread_id: str, user_id: str, agent_name: str) -> None:
        self.thread_id = thread_id
        self.user_id = user_id
        self.agent_name = agent_name
        self.root: Optional[UUID] = None
        self.run_id = ""
        self.started = 0.0
        # Tools, and the deltas' message ids, by their LangChain run id.
        self.tools = OpenTools()
        self.messages = MessageIds()

    def starts_run(self, run_id: UUID, parent_run_id: Optional[UUID]) -> bool:
        if parent_run_id is not None or self.root is not None:
            return False
        self.root, self.started, self.run_id = run_id, time.monotonic(), ""
        self.tools.clear()
        self.messages.clear()
        return True

    def started_event(self, inputs: Any) -> Event:
        return Event("agent_started", {"agent_name": self.agent_name, "input": jsonable(inputs)})

    def ends_run(self, run_id: UUID) -> bool:
        """Whether `run_id` ends the run being published. The outermost chain
        ends even when its run could not be registered, so the next one starts
        a run of its own."""
        if run_id != self.root:
            return False
        self.root = None
        return bool(self.run_id)

    def completed(self, outputs: Any) -> Event:
        return _terminal(self.started, _final_result(outputs), None)

    def failed(self, error: BaseException) -> Event:
        return _terminal(self.started, None, error)

    def delta(self, token: str, run_id: UUID) -> Optional[Event]:
        if not token or not self.run_id:
            return None
        return Event("agent_message", {"message_id": self.messages.of(run_id), "delta": token})

    def thought(self, response: LLMResult, run_id: UUID) -> Optional[Event]:
        self.messages.forget(run_id)
        reasoning = _reasoning(response)
        return thinking(reasoning) if reasoning and self.run_id else None

    def tool_started(self, serialized: Dict[str, Any], input_str: str, run_id: UUID, kwargs: Dict[str, Any]) -> Optional[Event]:
        if not self.run_id:
            return None
        call_id = str(kwargs.get("tool_call_id") or f"call_{run_id.hex[:12]}")
        name = (serialized or {}).get("name") or kwargs.get("name") or "tool"
        inputs = kwargs.get("inputs")
        return self.tools.start(call_id, name, jsonable(inputs if inputs is not None else input_str), key=run_id)

    def tool_finished(self, run_id: UUID, output: Any = None, error: Optional[BaseException] = None) -> Optional[Event]:
        if error is not None:
            return self.tools.finish(run_id, error=_describe(error))
        if isinstance(output, ToolMessage) and output.status == "error":
            return self.tools.finish(run_id, error=_text(output.content))
        return self.tools.finish(run_id, result=jsonable(output.content if isinstance(output, ToolMessage) else output))


class AgentwireCallbackHandler(BaseCallbackHandler):
    """Publishes a LangChain or LangGraph run (``invoke``, ``stream``) to agentwire."""

    # Called where the callback happens, so events keep their order.
    run_inline = True

    def __init__(self, publisher: Publisher, *, thread_id: str, user_id: str, agent_name: str) -> None:
        self._p = publisher
        self._m = _Mapping(thread_id, user_id, agent_name)

    @property
    def run_id(self) -> str:
        """The agentwire run of the current (or last) invocation."""
        return self._m.run_id

    def _emit(self, event: Optional[Event], wait: bool = True) -> None:
        if event is not None:
            self._p.publish(self._m.run_id, [event], wait=wait)

    def on_chain_start(self, serialized: Any, inputs: Any, *, run_id: UUID, parent_run_id: Optional[UUID] = None, **kwargs: Any) -> None:
        if self._m.starts_run(run_id, parent_run_id):
            m = self._m
            m.run_id = self._p.create_run(m.thread_id, m.user_id, m.agent_name)
            self._emit(m.started_event(inputs))

    def on_chain_end(self, outputs: Any, *, run_id: UUID, **kwargs: Any) -> None:
        if self._m.ends_run(run_id):
            self._emit(self._m.completed(outputs))

    def on_chain_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        if self._m.ends_run(run_id):
            self._emit(self._m.failed(error))

    def on_llm_new_token(self, token: str, *, run_id: UUID, **kwargs: Any) -> None:
        self._emit(self._m.delta(token, run_id), wait=False)

    def on_llm_end(self, response: LLMResult, *, run_id: UUID, **kwargs: Any) -> None:
        self._emit(self._m.thought(response, run_id))

    def on_tool_start(self, serialized: Dict[str, Any], input_str: str, *, run_id: UUID, **kwargs: Any) -> None:
        self._emit(self._m.tool_started(serialized, input_str, run_id, kwargs))

    def on_tool_end(self, output: Any, *, run_id: UUID, **kwargs: Any) -> None:
        self._emit(self._m.tool_finished(run_id, output=output))

    def on_tool_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self._emit(self._m.tool_finished(run_id, error=error))


class AsyncAgentwireCallbackHandler(AsyncCallbackHandler):
    """Publishes a LangChain or LangGraph run (``ainvoke``, ``astream``) to agentwire."""

    def __init__(self, publisher: AsyncPublisher, *, thread_id: str, user_id: str, agent_name: str) -> None:
        self._p = publisher
        self._m = _Mapping(thread_id, user_id, agent_name)
        # The loop the publisher's connection lives on: the run's own.
        self._home: Optional[asyncio.AbstractEventLoop] = None

    @property
    def run_id(self) -> str:
        """The agentwire run of the current (or last) invocation."""
        return self._m.run_id

    async def _on_home_loop(self, call: Awaitable[T]) -> T:
        """Awaits `call` on the publisher's loop. LangChain runs a sync tool on a
        thread pool and gives its callbacks a loop of their own there; the
        publisher's connection cannot be used from that loop."""
        here = asyncio.get_running_loop()
        if self._home is None or self._home.is_closed():
            self._home = here
        if here is self._home:
            return await call
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(call, self._home))  # type: ignore[arg-type]

    async def _emit(self, event: Optional[Event], wait: bool = True) -> None:
        if event is not None:
            await self._on_home_loop(self._p.publish(self._m.run_id, [event], wait=wait))

    async def on_chain_start(self, serialized: Any, inputs: Any, *, run_id: UUID, parent_run_id: Optional[UUID] = None, **kwargs: Any) -> None:
        if self._m.starts_run(run_id, parent_run_id):
            m = self._m
            m.run_id = await self._on_home_loop(self._p.create_run(m.thread_id, m.user_id, m.agent_name))
            await self._emit(m.started_event(inputs))

    async def on_chain_end(self, outputs: Any, *, run_id: UUID, **kwargs: Any) -> None:
        if self._m.ends_run(run_id):
            await self._emit(self._m.completed(outputs))

    async def on_chain_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        if self._m.ends_run(run_id):
            await self._emit(self._m.failed(error))

    async def on_llm_new_token(self, token: str, *, run_id: UUID, **kwargs: Any) -> None:
        await self._emit(self._m.delta(token, run_id), wait=False)

    async def on_llm_end(self, response: LLMResult, *, run_id: UUID, **kwargs: Any) -> None:
        await self._emit(self._m.thought(response, run_id))

    async def on_tool_start(self, serialized: Dict[str, Any], input_str: str, *, run_id: UUID, **kwargs: Any) -> None:
        await self._emit(self._m.tool_started(serialized, input_str, run_id, kwargs))

    async def on_tool_end(self, output: Any, *, run_id: UUID, **kwargs: Any) -> None:
        await self._emit(self._m.tool_finished(run_id, output=output))

    async def on_tool_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        await self._emit(self._m.tool_finished(run_id, error=error))
