"""Publishers for agentwire: `Publisher` (blocking) and `AsyncPublisher` (asyncio).

Both speak the API of PROTOCOL §3 with a publish key: runs and events over one
WebSocket per publisher (§3.1; ``stream=False`` sends each as an HTTP request
instead). Token deltas (``run.message``) go without waiting for
their answer; any refusal is raised by the run's next event or its end. Every
event gets an ``event_id`` before its first attempt, so retrying after a
``503`` or a network error can never store it twice: the server answers a
repeat with the first seq.

A run is best used as a context manager, which always ends it::

    with publisher.run(thread_id="thread_a1", user_id="alice", agent_name="helper") as run:
        run.thinking("Looking it up")
        with run.tool("search", {"q": "rust"}) as call:
            call.result = search("rust")          # raising here ends the call with its error
        run.message("Here is what I found")
        run.result = {"answer": 42}               # agent_completed; raising ends with agent_error

A run can ask its user and wait (PROTOCOL §2.1): ``run.approve("send_email",
{"to": "bob"})`` answers whether they approved (a request nobody answers in
time is a denial), ``run.ask("Which city?")`` or ``run.ask("Tea or coffee?",
options=["tea", "coffee"])`` answers an `Answer`.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple

import httpx

from .stream import AsyncStream, SyncStream


Json = Any


class AgentwireError(Exception):
    """The server refused a request: ``status`` and the protocol's error ``code``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


@dataclass
class Event:
    """One event to publish; ``event_id`` is minted once, so retries are safe."""

    event: str
    data: Dict[str, Json] = field(default_factory=dict)
    event_id: str = field(default_factory=lambda: uuid.uuid4().hex)

    def body(self) -> Dict[str, Json]:
        return {"event": self.event, "data": self.data, "event_id": self.event_id}


def thinking(thought: str, step: Optional[int] = None) -> Event:
    data: Dict[str, Json] = {"thought": thought}
    if step is not None:
        data["step"] = step
    return Event("agent_thinking", data)


# Every connection kept for the next request: httpx keeps 20 of its 100 by
# default, so a burst of concurrent registrations paid a new TCP connection
# for four requests in five.
_POOL = httpx.Limits(max_connections=64, max_keepalive_connections=64, keepalive_expiry=30.0)


def _retryable(status: Optional[int]) -> bool:
    # None: the request never got an answer (connection refused, reset, timeout).
    return status is None or status == 503


def _backoff(attempt: int, base: float, cap: float) -> float:
    return random.uniform(0, min(cap, base * 2**attempt))


def _run_body(thread_id: str, user_id: str, agent_name: str, run_id: Optional[str]) -> Dict[str, Json]:
    # A run id of our own when none is given: a registration sent again (a
    # retried request, a frame resent after a dropped connection) is then
    # answered as the first was instead of registering a second run.
    run_id = run_id or f"run_{thread_id}_{uuid.uuid4().hex[:16]}"
    return {"thread_id": thread_id, "user_id": user_id, "agent_name": agent_name, "run_id": run_id}


def _tool_started(call_id: str, name: str, args: Json) -> Event:
    return Event("tool_executing", {"tool_call_id": call_id, "tool_name": name, "args": args})


def _tool_finished(call_id: str, started: float, result: Json, error: Optional[str]) -> Event:
    data: Dict[str, Json] = {"tool_call_id": call_id, "duration_ms": int((time.monotonic() - started) * 1000)}
    if error is not None:
        data["error"] = error
    else:
        data["result"] = result
    return Event("tool_completed", data)


def _describe(exc: Optional[BaseException]) -> Optional[str]:
    return None if exc is None else f"{type(exc).__name__}: {exc}"


def new_message_id() -> str:
    """A fresh ``message_id`` for ``agent_message`` deltas."""
    return f"msg_{uuid.uuid4().hex[:12]}"


class MessageIds:
    """One ``message_id`` per text a framework streams, by the framework's own
    key (a part's index, an output item's id, a model call), minted once."""

    def __init__(self) -> None:
        self._ids: Dict[Any, str] = {}

    def of(self, key: Any) -> str:
        found = self._ids.get(key)
        if found is None:
            found = self._ids[key] = new_message_id()
        return found

    def forget(self, key: Any) -> None:
        self._ids.pop(key, None)

    def clear(self) -> None:
        self._ids.clear()


class OpenTools:
    """Tool calls a framework reported started and not yet ended, for the
    integrations: each end becomes ``tool_completed`` with its duration, once;
    an end whose start was never seen becomes nothing (the server would refuse
    it). Keys are the framework's own (a call id, a LangChain run id)."""

    def __init__(self) -> None:
        self._open: Dict[Any, Tuple[str, float]] = {}

    def start(self, call_id: str, name: str, args: Json, key: Any = None) -> Event:
        self._open[call_id if key is None else key] = (call_id, time.monotonic())
        return _tool_started(call_id, name, args)

    def finish(self, key: Any, result: Json = None, error: Optional[str] = None) -> Optional[Event]:
        opened = self._open.pop(key, None)
        return None if opened is None else _tool_finished(opened[0], opened[1], result, error)

    def clear(self) -> None:
        self._open.clear()


def _terminal(started: float, result: Json, exc: Optional[BaseException]) -> Event:
    if exc is None:
        return Event("agent_completed", {"result": result, "duration_ms": int((time.monotonic() - started) * 1000)})
    cancelled = isinstance(exc, (KeyboardInterrupt, asyncio.CancelledError))
    return Event("agent_error", {"code": "cancelled" if cancelled else "failed", "message": f"{type(exc).__name__}: {exc}"})


@dataclass
class Answer:
    """The answer to ``run.ask``: the user's, or the request's default once it lapsed."""

    value: Optional[Dict[str, Json]]
    """``{"approved": …}``, ``{"text": …}`` or ``{"choice": …}`` (with ``message``
    when the user added one); ``None`` when it lapsed without a default."""
    timed_out: bool = False
    user_id: Optional[str] = None

    def _get(self, key: str) -> Json:
        return (self.value or {}).get(key)

    @property
    def approved(self) -> bool:
        return self._get("approved") is True

    @property
    def text(self) -> Optional[str]:
        return self._get("text")

    @property
    def choice(self) -> Optional[str]:
        return self._get("choice")

    @property
    def message(self) -> Optional[str]:
        return self._get("message")


class RunEnded(AgentwireError):
    """The run ended (cancelled, timed out) while it waited for an answer."""

    def __init__(self, request_id: str) -> None:
        super().__init__(409, "closed", f"input request {request_id} closed: its run ended")


# How long one long poll waits for an answer before it asks again, in seconds.
_POLL = 30.0


def _question(
    prompt: str,
    kind: str,
    *,
    options: Optional[List[str]] = None,
    default: Json = None,
    timeout: Optional[float] = None,
    tool_name: Optional[str] = None,
    arguments: Json = None,
) -> Tuple[str, Event]:
    """An ``input_requested`` event and its request id."""
    request_id = f"input_{uuid.uuid4().hex[:12]}"
    data: Dict[str, Json] = {"request_id": request_id, "kind": kind, "prompt": prompt}
    if tool_name is not None:
        data["tool_name"] = tool_name
        data["arguments"] = arguments
    if options is not None:
        data["options"] = list(options)
    if default is not None:
        data["default"] = default
    if timeout is not None:
        data["timeout_ms"] = max(1, int(timeout * 1000))
    return request_id, Event("input_requested", data)


def _answer(view: Mapping[str, Json], request_id: str) -> Optional[Answer]:
    """The answer a long poll brought; ``None`` while the request is open."""
    status = view.get("status")
    if status == "open":
        return None
    if status == "closed":
        raise RunEnded(request_id)
    return Answer(view.get("answer"), timed_out=status == "timed_out", user_id=view.get("user_id"))


def _error(resp: httpx.Response) -> AgentwireError:
    try:
        err = resp.json().get("error", {})
    except ValueError:
        err = {}
    return AgentwireError(resp.status_code, err.get("code", "unknown"), err.get("message", resp.text))


class _Settings:
    def __init__(self, base_url: str, publish_key: str, retries: int, backoff: float, max_backoff: float) -> None:
        self.base_url = base_url.rstrip("/")
        self.headers = {"authorization": f"Bearer {publish_key}"}
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff


# ---- blocking ---------------------------------------------------------------------------------


class Publisher:
    """A blocking publisher. ``retries`` attempts are made on ``503`` and network errors."""

    def __init__(
        self,
        base_url: str,
        publish_key: str,
        *,
        retries: int = 5,
        backoff: float = 0.2,
        max_backoff: float = 5.0,
        timeout: float = 10.0,
        stream: bool = True,
    ) -> None:
        self._s = _Settings(base_url, publish_key, retries, backoff, max_backoff)
        self._http = httpx.Client(timeout=timeout, limits=_POOL)
        self._stream = SyncStream(self._s.base_url, self._s.headers, retries, backoff) if stream else None

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()
        self._http.close()

    def __enter__(self) -> "Publisher":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(
        self, method: str, path: str, body: Optional[Mapping[str, Json]] = None, timeout: Optional[float] = None
    ) -> Json:
        patience: Any = httpx.USE_CLIENT_DEFAULT if timeout is None else timeout
        for attempt in range(self._s.retries + 1):
            try:
                resp = self._http.request(
                    method, self._s.base_url + path, json=body, headers=self._s.headers, timeout=patience
                )
            except httpx.TransportError:
                if attempt == self._s.retries:
                    raise
                time.sleep(_backoff(attempt, self._s.backoff, self._s.max_backoff))
                continue
            if resp.is_success:
                return resp.json()
            if _retryable(resp.status_code) and attempt < self._s.retries:
                time.sleep(_backoff(attempt, self._s.backoff, self._s.max_backoff))
                continue
            raise _error(resp)
        raise AssertionError("unreachable")

    def create_run(self, thread_id: str, user_id: str, agent_name: str, run_id: Optional[str] = None) -> str:
        """Registers a run (creating the thread for ``user_id`` if new); answers its id.
        With the stream, over the publisher WebSocket: no HTTP request per run."""
        body = _run_body(thread_id, user_id, agent_name, run_id)
        if self._stream is not None:
            return self._stream.register(body)["run_id"]
        return self._request("POST", "/v1/runs", body)["run_id"]

    def publish(self, run_id: str, events: Iterable[Event], wait: bool = True) -> List[int]:
        """Publishes events of one run, all or nothing; answers their seqs. Without
        ``wait`` (streaming only) it answers at once, and a refusal is raised later."""
        bodies = [e.body() for e in events]
        if self._stream is not None:
            return self._stream.send(run_id, bodies, wait)
        return self._request("POST", f"/v1/runs/{run_id}/events", {"events": bodies})["seqs"]

    def flush(self) -> None:
        """Waits for every event sent to be answered; raises the first refusal."""
        if self._stream is not None:
            self._stream.flush()

    def get_run(self, run_id: str) -> Dict[str, Json]:
        return self._request("GET", f"/v1/runs/{run_id}")

    def wait_input(self, run_id: str, request_id: str, wait: float = _POLL) -> Dict[str, Json]:
        """Where an input request stands, waiting up to ``wait`` seconds while it is open."""
        path = f"/v1/runs/{run_id}/inputs/{request_id}?wait={wait}"
        return self._request("GET", path, timeout=wait + 10.0)

    def cancel(self, run_id: str) -> None:
        self._request("POST", f"/v1/runs/{run_id}/cancel", {})

    def run(self, thread_id: str, user_id: str, agent_name: str, input: Json = None) -> "Run":
        """A run context manager: ``agent_started`` on entry, a terminal event on exit."""
        return Run(self, thread_id, user_id, agent_name, input)


class _ToolCallState:
    """What a tool call knows, blocking or not."""

    def __init__(self, name: str, args: Json) -> None:
        self.name = name
        self.args = args
        self.id = f"call_{uuid.uuid4().hex[:12]}"
        self.result: Json = None
        self._started = 0.0


class ToolCall(_ToolCallState):
    """One tool call; set ``result`` (or raise) inside the ``with`` block."""

    def __init__(self, run: "Run", name: str, args: Json) -> None:
        super().__init__(name, args)
        self._run = run

    def __enter__(self) -> "ToolCall":
        self._started = time.monotonic()
        self._run.emit(_tool_started(self.id, self.name, self.args))
        return self

    def __exit__(self, exc_type: Any, exc: Optional[BaseException], tb: Any) -> None:
        self._run.emit(_tool_finished(self.id, self._started, self.result, _describe(exc)))


class _RunState:
    """What a run knows, blocking or not."""

    def __init__(self, thread_id: str, user_id: str, agent_name: str, input: Json) -> None:
        self.thread_id = thread_id
        self.user_id = user_id
        self.agent_name = agent_name
        self.input = input
        self.run_id = ""
        self.result: Json = None
        self.seqs: List[int] = []
        self._message_id = new_message_id()
        self._started = 0.0

    def _delta(self, delta: str, message_id: Optional[str]) -> Event:
        return Event("agent_message", {"message_id": message_id or self._message_id, "delta": delta})

    def _start(self) -> Event:
        self._started = time.monotonic()
        return Event("agent_started", {"agent_name": self.agent_name, "input": self.input})


class Run(_RunState):
    """A run that always ends: ``agent_completed`` with ``result``, or ``agent_error`` if the block raised."""

    def __init__(self, publisher: Publisher, thread_id: str, user_id: str, agent_name: str, input: Json) -> None:
        super().__init__(thread_id, user_id, agent_name, input)
        self._p = publisher

    def emit(self, *events: Event) -> List[int]:
        seqs = self._p.publish(self.run_id, events)
        self.seqs.extend(seqs)
        return seqs

    def thinking(self, thought: str, step: Optional[int] = None) -> None:
        self.emit(thinking(thought, step))

    def message(self, delta: str, message_id: Optional[str] = None) -> None:
        """A piece of the streamed answer: sent without waiting for its answer.
        Deltas share the run's ``message_id`` unless one is given."""
        self._p.publish(self.run_id, [self._delta(delta, message_id)], wait=False)

    def tool(self, name: str, args: Json = None) -> ToolCall:
        return ToolCall(self, name, args)

    def _wait(self, request_id: str, event: Event) -> Answer:
        self.emit(event)
        while True:
            answer = _answer(self._p.wait_input(self.run_id, request_id), request_id)
            if answer is not None:
                return answer

    def ask(
        self, prompt: str, *, options: Optional[List[str]] = None, default: Json = None, timeout: Optional[float] = None
    ) -> Answer:
        """Asks the user for a line of text, or one of ``options``, and waits for the
        answer (the ``default`` once ``timeout`` seconds pass; the server's when unset)."""
        kind = "text" if options is None else "choice"
        request_id, event = _question(prompt, kind, options=options, default=default, timeout=timeout)
        return self._wait(request_id, event)

    def approve(
        self, tool_name: str, arguments: Json = None, *, prompt: Optional[str] = None, timeout: Optional[float] = None
    ) -> bool:
        """Asks the user whether to run ``tool_name`` with ``arguments``; a request
        nobody answers in time is a denial."""
        text = prompt or f"May I run {tool_name}?"
        request_id, event = _question(text, "approval", timeout=timeout, tool_name=tool_name, arguments=arguments)
        return self._wait(request_id, event).approved

    def __enter__(self) -> "Run":
        self.run_id = self._p.create_run(self.thread_id, self.user_id, self.agent_name)
        self.emit(self._start())
        return self

    def __exit__(self, exc_type: Any, exc: Optional[BaseException], tb: Any) -> None:
        if isinstance(exc, RunEnded):
            return  # ended from outside: it has its terminal event
        self.emit(_terminal(self._started, self.result, exc))


# ---- asyncio ----------------------------------------------------------------------------------


class AsyncPublisher:
    """The asyncio twin of `Publisher`."""

    def __init__(
        self,
        base_url: str,
        publish_key: str,
        *,
        retries: int = 5,
        backoff: float = 0.2,
        max_backoff: float = 5.0,
        timeout: float = 10.0,
        stream: bool = True,
    ) -> None:
        self._s = _Settings(base_url, publish_key, retries, backoff, max_backoff)
        self._http = httpx.AsyncClient(timeout=timeout, limits=_POOL)
        self._stream = AsyncStream(self._s.base_url, self._s.headers, retries, backoff) if stream else None

    async def aclose(self) -> None:
        if self._stream is not None:
            await self._stream.aclose()
        await self._http.aclose()

    async def __aenter__(self) -> "AsyncPublisher":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _request(
        self, method: str, path: str, body: Optional[Mapping[str, Json]] = None, timeout: Optional[float] = None
    ) -> Json:
        patience: Any = httpx.USE_CLIENT_DEFAULT if timeout is None else timeout
        for attempt in range(self._s.retries + 1):
            try:
                resp = await self._http.request(
                    method, self._s.base_url + path, json=body, headers=self._s.headers, timeout=patience
                )
            except httpx.TransportError:
                if attempt == self._s.retries:
                    raise
                await asyncio.sleep(_backoff(attempt, self._s.backoff, self._s.max_backoff))
                continue
            if resp.is_success:
                return resp.json()
            if _retryable(resp.status_code) and attempt < self._s.retries:
                await asyncio.sleep(_backoff(attempt, self._s.backoff, self._s.max_backoff))
                continue
            raise _error(resp)
        raise AssertionError("unreachable")

    async def create_run(self, thread_id: str, user_id: str, agent_name: str, run_id: Optional[str] = None) -> str:
        body = _run_body(thread_id, user_id, agent_name, run_id)
        if self._stream is not None:
            return (await self._stream.register(body))["run_id"]
        return (await self._request("POST", "/v1/runs", body))["run_id"]

    async def publish(self, run_id: str, events: Iterable[Event], wait: bool = True) -> List[int]:
        bodies = [e.body() for e in events]
        if self._stream is not None:
            return await self._stream.send(run_id, bodies, wait)
        return (await self._request("POST", f"/v1/runs/{run_id}/events", {"events": bodies}))["seqs"]

    async def flush(self) -> None:
        if self._stream is not None:
            await self._stream.flush()

    async def get_run(self, run_id: str) -> Dict[str, Json]:
        return await self._request("GET", f"/v1/runs/{run_id}")

    async def wait_input(self, run_id: str, request_id: str, wait: float = _POLL) -> Dict[str, Json]:
        path = f"/v1/runs/{run_id}/inputs/{request_id}?wait={wait}"
        return await self._request("GET", path, timeout=wait + 10.0)

    async def cancel(self, run_id: str) -> None:
        await self._request("POST", f"/v1/runs/{run_id}/cancel", {})

    def run(self, thread_id: str, user_id: str, agent_name: str, input: Json = None) -> "AsyncRun":
        return AsyncRun(self, thread_id, user_id, agent_name, input)


class AsyncToolCall(_ToolCallState):
    """The asyncio twin of `ToolCall`."""

    def __init__(self, run: "AsyncRun", name: str, args: Json) -> None:
        super().__init__(name, args)
        self._run = run

    async def __aenter__(self) -> "AsyncToolCall":
        self._started = time.monotonic()
        await self._run.emit(_tool_started(self.id, self.name, self.args))
        return self

    async def __aexit__(self, exc_type: Any, exc: Optional[BaseException], tb: Any) -> None:
        await self._run.emit(_tool_finished(self.id, self._started, self.result, _describe(exc)))


class AsyncRun(_RunState):
    """The asyncio twin of `Run`."""

    def __init__(self, publisher: AsyncPublisher, thread_id: str, user_id: str, agent_name: str, input: Json) -> None:
        super().__init__(thread_id, user_id, agent_name, input)
        self._p = publisher

    async def emit(self, *events: Event) -> List[int]:
        seqs = await self._p.publish(self.run_id, events)
        self.seqs.extend(seqs)
        return seqs

    async def thinking(self, thought: str, step: Optional[int] = None) -> None:
        await self.emit(thinking(thought, step))

    async def message(self, delta: str, message_id: Optional[str] = None) -> None:
        """A piece of the streamed answer: sent without waiting for its answer.
        Deltas share the run's ``message_id`` unless one is given."""
        await self._p.publish(self.run_id, [self._delta(delta, message_id)], wait=False)

    def tool(self, name: str, args: Json = None) -> AsyncToolCall:
        return AsyncToolCall(self, name, args)

    async def _wait(self, request_id: str, event: Event) -> Answer:
        await self.emit(event)
        while True:
            answer = _answer(await self._p.wait_input(self.run_id, request_id), request_id)
            if answer is not None:
                return answer

    async def ask(
        self, prompt: str, *, options: Optional[List[str]] = None, default: Json = None, timeout: Optional[float] = None
    ) -> Answer:
        kind = "text" if options is None else "choice"
        request_id, event = _question(prompt, kind, options=options, default=default, timeout=timeout)
        return await self._wait(request_id, event)

    async def approve(
        self, tool_name: str, arguments: Json = None, *, prompt: Optional[str] = None, timeout: Optional[float] = None
    ) -> bool:
        text = prompt or f"May I run {tool_name}?"
        request_id, event = _question(text, "approval", timeout=timeout, tool_name=tool_name, arguments=arguments)
        return (await self._wait(request_id, event)).approved

    async def __aenter__(self) -> "AsyncRun":
        self.run_id = await self._p.create_run(self.thread_id, self.user_id, self.agent_name)
        await self.emit(self._start())
        return self

    async def __aexit__(self, exc_type: Any, exc: Optional[BaseException], tb: Any) -> None:
        if isinstance(exc, RunEnded):
            return  # ended from outside: it has its terminal event
        await self.emit(_terminal(self._started, self.result, exc))
