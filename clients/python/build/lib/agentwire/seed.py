"""A drop-in for the seed system's WebSocket bridge.

An agent written against the seed bridge switches by changing one import::

    from agentwire.seed import AgentWebSocketBridge
    bridge = AgentWebSocketBridge("http://127.0.0.1:8080", publish_key="...", user_for_thread=lambda t: owner_of(t))

    await bridge.notify_agent_started(run_id, "triage", context={"query": q})
    await bridge.notify_tool_executing(run_id, "triage", "search", parameters={"q": q})
    await bridge.notify_tool_completed(run_id, "triage", "search", result=hits, execution_time_ms=12)
    await bridge.notify_agent_completed(run_id, "triage", result=answer)

Every method returns ``True`` when agentwire stored the event and ``False``
otherwise; none raises. Run ids in the seed's formats (``run_{thread_id}_{uuid8}``,
or any id containing ``thread_…``) are resolved by agentwire (PROTOCOL §1); the
first event of a run registers it for the thread's user, so the thread need not
exist beforehand when ``user_for_thread`` can name its owner. The seed had no
tool call ids: a completion is paired with the oldest open call of the same tool.

Seed agents did things agentwire's lifecycle refuses; the bridge adapts them so
they work unchanged:

- an event on a run that never had ``agent_started`` (other than an error) is
  preceded by one, sent by the bridge;
- an event after the run ended, or a second ``agent_started``, opens a new run
  for the same legacy run id: agentwire run ``{run_id}_{n}``, in the same thread.

The bridge remembers this for the last 10,000 run ids it saw.

Every signature of the seed bridge is accepted, ``trace_context`` included (it
is not sent). The seed's extra notifications map onto agentwire's events:

- ``notify_progress_update(run_id, agent_name, progress)``: ``agent_thinking``
  whose thought is ``progress["message"]``, with ``progress`` and its ``percentage``
  as ``progress_percentage``;
- ``notify_custom(run_id, agent_name, notification_type, data)``: ``agent_thinking``
  with ``custom_type`` and ``data`` (agentwire has no free-form event kind);
- ``notify_agent_death(run_id, agent_name, death_cause, death_context)``:
  ``agent_error`` (code ``timeout`` for a timeout, ``cancelled`` for a
  cancellation, ``worker_lost`` otherwise) with ``death_cause`` and ``death_context``.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any, Callable, Deque, Dict, List, Optional

from .client import AgentwireError, AsyncPublisher, Event

__all__ = ["AgentWebSocketBridge", "extract_thread_id"]

log = logging.getLogger("agentwire.seed")

# PROTOCOL §1: the first `thread_` that starts the id or follows a `_`, plus the letters and digits after it.
_THREAD = re.compile(r"(?:^|_)(thread_[A-Za-z0-9]+)")


def extract_thread_id(run_id: str) -> Optional[str]:
    """The thread a seed-style run id names, if any (the same rule as the server's)."""
    match = _THREAD.search(run_id)
    # A tail longer than a thread id may be names no thread (the server agrees).
    return match.group(1) if match and len(match.group(1)) <= len("thread_") + 64 else None


# How many legacy run ids the bridge remembers (least recently used go first).
_TRACKED = 10_000


@dataclass
class _LegacyRun:
    """What the bridge knows of one legacy run id."""

    current: str  # the agentwire run its events go to now
    generation: int = 0
    registered: bool = False
    started: bool = False
    ended: bool = False
    # tool name → open call ids, oldest first (the seed had no call ids)
    open_calls: Dict[str, Deque[str]] = field(default_factory=dict)

    def roll_over(self, legacy: str) -> None:
        """A new agentwire run for the same legacy id, in the same thread."""
        self.generation += 1
        self.current = f"{legacy}_{self.generation}"
        self.registered = self.started = self.ended = False
        self.open_calls = {}


class AgentWebSocketBridge:
    """The seed bridge's ``notify_*`` methods, publishing to agentwire."""

    def __init__(
        self,
        base_url: str,
        publish_key: str,
        *,
        user_for_thread: Optional[Callable[[str], str]] = None,
        retries: int = 3,
    ) -> None:
        self._publisher = AsyncPublisher(base_url, publish_key, retries=retries)
        self._user_for_thread = user_for_thread
        self._runs: "OrderedDict[str, _LegacyRun]" = OrderedDict()

    async def aclose(self) -> None:
        await self._publisher.aclose()

    def _run(self, legacy: str) -> _LegacyRun:
        run = self._runs.get(legacy)
        if run is None:
            run = self._runs[legacy] = _LegacyRun(current=legacy)
            if len(self._runs) > _TRACKED:
                self._runs.popitem(last=False)
        self._runs.move_to_end(legacy)
        return run

    def _current(self, run_id: str, event: str) -> _LegacyRun:
        """The legacy run, rolled over to a new agentwire run if `event` cannot go on the current one."""
        run = self._run(run_id)
        if run.ended or (event == "agent_started" and run.started):
            run.roll_over(run_id)
        return run

    async def _send(self, run_id: str, agent_name: str, event: Event) -> bool:
        run = self._current(run_id, event.event)
        events: List[Event] = [event]
        if not run.started and event.event not in ("agent_started", "agent_error"):
            events.insert(0, Event("agent_started", {"agent_name": agent_name}))
        try:
            if not run.registered:
                await self._ensure_run(run.current, agent_name)
                run.registered = True
            await self._publisher.publish(run.current, events)
        except Exception as exc:  # the seed's contract: report, never raise
            log.warning("agentwire refused %s for run %s: %s", event.event, run.current, exc)
            return False
        run.started = run.started or events[0].event == "agent_started"
        run.ended = event.event in ("agent_completed", "agent_error")
        return True

    async def _ensure_run(self, run_id: str, agent_name: str) -> None:
        """Registers a seed-style run for its thread's user the first time it is seen."""
        if self._user_for_thread is None:
            return
        thread_id = extract_thread_id(run_id)
        if thread_id is None:
            return
        try:
            await self._publisher.create_run(thread_id, self._user_for_thread(thread_id), agent_name, run_id=run_id)
        except AgentwireError as exc:
            if exc.code != "conflict":
                raise
            # Taken already: ours (registered earlier, or by another process of this
            # agent) only if it routes to the thread its id names; never adopt a run
            # of another thread, whose events would go to someone else's watchers.
            existing = await self._publisher.get_run(run_id)
            if existing.get("thread_id") != thread_id:
                raise AgentwireError(409, "conflict", f"run id {run_id} is registered to another thread") from exc

    async def notify_agent_started(
        self,
        run_id: str,
        agent_name: str,
        context: Optional[Dict[str, Any]] = None,
        trace_context: Optional[Dict[str, Any]] = None,
    ) -> bool:
        return await self._send(run_id, agent_name, Event("agent_started", {"agent_name": agent_name, "input": context}))

    async def notify_agent_thinking(
        self,
        run_id: str,
        agent_name: str,
        reasoning: str,
        step_number: Optional[int] = None,
        progress_percentage: Optional[float] = None,
        trace_context: Optional[Dict[str, Any]] = None,
    ) -> bool:
        data: Dict[str, Any] = {"thought": reasoning}
        if step_number is not None:
            data["step"] = step_number
        if progress_percentage is not None:
            data["progress_percentage"] = progress_percentage
        return await self._send(run_id, agent_name, Event("agent_thinking", data))

    async def notify_tool_executing(
        self,
        run_id: str,
        agent_name: str,
        tool_name: str,
        parameters: Optional[Dict[str, Any]] = None,
        trace_context: Optional[Dict[str, Any]] = None,
    ) -> bool:
        call_id = f"{tool_name}-{uuid.uuid4().hex[:8]}"
        self._current(run_id, "tool_executing").open_calls.setdefault(tool_name, deque()).append(call_id)
        data = {"tool_call_id": call_id, "tool_name": tool_name, "args": parameters}
        return await self._send(run_id, agent_name, Event("tool_executing", data))

    async def notify_tool_completed(
        self,
        run_id: str,
        agent_name: str,
        tool_name: str,
        result: Any = None,
        execution_time_ms: Optional[float] = None,
        trace_context: Optional[Dict[str, Any]] = None,
    ) -> bool:
        open_calls = self._run(run_id).open_calls
        queue = open_calls.get(tool_name) or next((q for q in open_calls.values() if q), None)
        if not queue:
            log.warning("tool_completed for %s in run %s without a matching tool_executing", tool_name, run_id)
            return False
        data = {"tool_call_id": queue.popleft(), "result": result, "duration_ms": execution_time_ms}
        return await self._send(run_id, agent_name, Event("tool_completed", data))

    async def notify_agent_completed(
        self,
        run_id: str,
        agent_name: str,
        result: Any = None,
        execution_time_ms: Optional[float] = None,
        trace_context: Optional[Dict[str, Any]] = None,
    ) -> bool:
        data = {"result": result, "duration_ms": execution_time_ms}
        return await self._send(run_id, agent_name, Event("agent_completed", data))

    async def notify_agent_error(
        self,
        run_id: str,
        agent_name: str,
        error: str,
        error_context: Optional[Dict[str, Any]] = None,
        trace_context: Optional[Dict[str, Any]] = None,
    ) -> bool:
        data: Dict[str, Any] = {"code": "failed", "message": str(error)}
        if isinstance(error_context, dict):
            data["error_context"] = error_context
        return await self._end(run_id, agent_name, data)

    async def notify_agent_death(
        self,
        run_id: str,
        agent_name: str,
        death_cause: str,
        death_context: Optional[Dict[str, Any]] = None,
        trace_context: Optional[Dict[str, Any]] = None,
    ) -> bool:
        code = {"timeout": "timeout", "cancelled": "cancelled"}.get(death_cause, "worker_lost")
        data = {
            "code": code,
            "message": f"the {agent_name} agent stopped: {death_cause}",
            "death_cause": death_cause,
            "death_context": death_context or {},
        }
        return await self._end(run_id, agent_name, data)

    async def notify_progress_update(
        self,
        run_id: str,
        agent_name: str,
        progress: Optional[Dict[str, Any]] = None,
        trace_context: Optional[Dict[str, Any]] = None,
    ) -> bool:
        progress = progress if isinstance(progress, dict) else {}
        data: Dict[str, Any] = {"thought": str(progress.get("message") or f"{agent_name} is making progress")}
        data["progress"] = progress
        if progress.get("percentage") is not None:
            data["progress_percentage"] = progress["percentage"]
        return await self._send(run_id, agent_name, Event("agent_thinking", data))

    async def notify_custom(
        self,
        run_id: str,
        agent_name: str,
        notification_type: str,
        data: Optional[Dict[str, Any]] = None,
        trace_context: Optional[Dict[str, Any]] = None,
    ) -> bool:
        data = data if isinstance(data, dict) else {}
        thought = str(data.get("message") or notification_type)
        event = Event("agent_thinking", {"thought": thought, "custom_type": notification_type, "data": data})
        return await self._send(run_id, agent_name, event)

    async def _end(self, run_id: str, agent_name: str, data: Dict[str, Any]) -> bool:
        return await self._send(run_id, agent_name, Event("agent_error", data))
