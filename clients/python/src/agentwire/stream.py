"""One WebSocket per publisher for its events (PROTOCOL §3.1, ``GET /v1/publish``).

Each frame is a publish body with its ``run_id`` and a ``ref``; the server
decides frames in the order they arrive and answers each, in that order, once
it is stored. So a publisher can send token deltas without waiting for each
answer (``wait=False``) and still learn of any refusal: it is raised by the
next frame that waits, or by ``flush()``.

Frames not yet answered when the connection drops are sent again, in order, on
a new connection: every event carries an ``event_id``, so the server stores
each once whatever is repeated. At most ``MOST_UNANSWERED`` frames wait for
their answers: the next one waits for the oldest, so a publisher faster than
the server is slowed down instead of holding every frame it ever sent.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import OrderedDict
from typing import Any, Callable, Dict, List, Optional, Tuple

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection as SyncConnection
from websockets.sync.client import connect as sync_connect

Json = Any

# Frames sent and not yet answered, at most: what the server keeps waiting for
# the disk per connection (PROTOCOL §3.1), so the cap costs no throughput.
MOST_UNANSWERED = 1024

# The HTTP status each error code of PROTOCOL §3 goes with, for AgentwireError.
_STATUS = {
    "bad_request": 400,
    "unauthorized": 401,
    "forbidden": 403,
    "not_found": 404,
    "timeout": 408,
    "lifecycle_violation": 409,
    "conflict": 409,
    "too_large": 413,
    "rate_limited": 429,
    "internal": 500,
    "unsupported": 501,
    "unavailable": 503,
}


def _ws_url(base_url: str) -> str:
    if base_url.startswith("https://"):
        return "wss://" + base_url[len("https://") :] + "/v1/publish"
    return "ws://" + base_url[len("http://") :] + "/v1/publish"


def _frame(ref: int, run_id: str, events: List[Dict[str, Json]]) -> str:
    return json.dumps({"ref": ref, "run_id": run_id, "events": events}, separators=(",", ":"))


def _register_frame(ref: int, body: Dict[str, Json]) -> str:
    return json.dumps({"ref": ref, "register": body}, separators=(",", ":"))


def _answer(text: str) -> Tuple[Optional[int], Dict[str, Json], Optional[Dict[str, Json]]]:
    """An answer: its ref, the whole answer, its error."""
    ack = json.loads(text)
    return ack.get("ref"), ack, ack.get("error")


def _refusal(error: Dict[str, Json]) -> Exception:
    from .client import AgentwireError

    code = error.get("code", "unknown")
    return AgentwireError(_STATUS.get(code, 0), code, error.get("message", ""))


def _refused_at_handshake(e: InvalidStatus) -> Exception:
    status = e.response.status_code
    return _refusal({"code": "unauthorized" if status == 401 else "forbidden", "message": f"the server answered {status}"})


class _Stream:
    """What both streams keep: where to connect, how often to retry, the next ref, the first refusal."""

    def __init__(self, base_url: str, headers: Dict[str, str], retries: int, backoff: float) -> None:
        self._url = _ws_url(base_url)
        self._headers = headers
        self._retries = retries
        self._backoff = backoff
        self._next_ref = 0
        self._failed: Optional[Exception] = None

    def _retry_after(self, error: Exception, attempt: int) -> float:
        """How long to wait before connecting again after `error`, or raises:
        a refusal at the handshake at once, a failure to connect once the
        retries are spent."""
        if isinstance(error, InvalidStatus):
            raise _refused_at_handshake(error) from error
        if attempt >= self._retries:
            raise error
        return self._backoff * 2**attempt

    def _raise_failed(self) -> None:
        failed, self._failed = self._failed, None
        if failed is not None:
            raise failed


class AsyncStream(_Stream):
    """The asyncio stream of one `AsyncPublisher`."""

    def __init__(self, base_url: str, headers: Dict[str, str], retries: int, backoff: float) -> None:
        super().__init__(base_url, headers, retries, backoff)
        self._ws: Optional[ClientConnection] = None
        self._reader: Optional[asyncio.Task] = None
        # ref -> (frame, answer): frames sent and not yet answered, in order.
        self._pending: "OrderedDict[int, Tuple[str, asyncio.Future]]" = OrderedDict()
        self._lock = asyncio.Lock()

    async def _connect(self) -> ClientConnection:
        attempt = 0
        while True:
            try:
                ws = await connect(self._url, additional_headers=self._headers, max_size=None)
                break
            except (InvalidStatus, OSError) as e:
                await asyncio.sleep(self._retry_after(e, attempt))
                attempt += 1
        self._ws = ws
        self._reader = asyncio.ensure_future(self._read(ws))
        # What the last connection left unanswered goes again, in order.
        for frame, _ in list(self._pending.values()):
            await ws.send(frame)
        return ws

    async def _read(self, ws: ClientConnection) -> None:
        try:
            async for text in ws:
                ref, ack, error = _answer(text)
                if not self._pending:
                    continue
                oldest, (_, answer) = next(iter(self._pending.items()))
                if ref is not None and ref != oldest:
                    continue
                del self._pending[oldest]
                if answer.done():
                    continue
                if error is not None:
                    answer.set_exception(_refusal(error))
                else:
                    answer.set_result(ack)
        except ConnectionClosed:
            pass
        finally:
            if self._ws is ws:
                self._ws = None

    async def send(self, run_id: str, events: List[Dict[str, Json]], wait: bool = True) -> List[int]:
        """Sends one frame; with ``wait``, answers its seqs (raising any refusal so far)."""
        ack = await self._post(lambda ref: _frame(ref, run_id, events), wait)
        return (ack or {}).get("seqs") or []

    async def register(self, body: Dict[str, Json]) -> Dict[str, Json]:
        """Registers a run (the body of ``POST /v1/runs``); answers ``run_id`` and ``thread_id``."""
        return await self._post(lambda ref: _register_frame(ref, body), True) or {}

    async def _post(self, frame_for: Callable[[int], str], wait: bool) -> Optional[Dict[str, Json]]:
        async with self._lock:
            while len(self._pending) >= MOST_UNANSWERED:
                _, oldest = next(iter(self._pending.values()))
                await self._settle(oldest, locked=True)
            ws = self._ws or await self._connect()
            self._next_ref += 1
            ref = self._next_ref
            frame = frame_for(ref)
            answer: asyncio.Future = asyncio.get_running_loop().create_future()
            answer.add_done_callback(self._note)
            self._pending[ref] = (frame, answer)
            try:
                await ws.send(frame)
            except ConnectionClosed:
                # Sent again, with the rest, on the next connection.
                await self._connect()
        if not wait:
            return None
        return await self._wait(answer)

    def _note(self, answer: asyncio.Future) -> None:
        if not answer.cancelled() and answer.exception() is not None and self._failed is None:
            self._failed = answer.exception()

    async def _settle(self, answer: asyncio.Future, locked: bool) -> None:
        """Waits until `answer` is in, either way, connecting again (and so
        resending) when the connection drops first. `locked`: the caller holds
        the send lock already."""
        while not answer.done():
            reader = self._reader
            await asyncio.wait({answer, reader} if reader else {answer}, return_when=asyncio.FIRST_COMPLETED)
            if answer.done():
                return
            if locked:
                if self._ws is None:
                    await self._connect()
            else:
                async with self._lock:
                    if self._ws is None:
                        await self._connect()

    async def _wait(self, answer: asyncio.Future) -> Dict[str, Json]:
        await self._settle(answer, locked=False)
        refused = answer.exception()
        if refused is not None:
            # Raised here, so not again by a later frame.
            if self._failed is refused:
                self._failed = None
            raise refused
        self._raise_failed()
        return answer.result()

    async def flush(self) -> None:
        """Waits until every frame sent is answered; raises the first refusal."""
        while self._pending:
            _, answer = next(reversed(self._pending.values()))
            await self._settle(answer, locked=False)
        self._raise_failed()

    async def aclose(self) -> None:
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)


class SyncStream(_Stream):
    """The blocking stream of one `Publisher`: answers are read as frames are sent.
    Safe to share between threads (LangChain runs tools on a thread pool): one
    thread at a time sends and reads."""

    def __init__(self, base_url: str, headers: Dict[str, str], retries: int, backoff: float) -> None:
        super().__init__(base_url, headers, retries, backoff)
        self._lock = threading.Lock()
        self._ws: Optional[SyncConnection] = None
        self._pending: "OrderedDict[int, str]" = OrderedDict()
        # The frame whose answer `send` waits for, and that answer.
        self._want: Optional[int] = None
        self._answer: Dict[str, Json] = {}

    def _connect(self) -> SyncConnection:
        attempt = 0
        while True:
            try:
                ws = sync_connect(self._url, additional_headers=self._headers, max_size=None)
                break
            except (InvalidStatus, OSError) as e:
                time.sleep(self._retry_after(e, attempt))
                attempt += 1
        self._ws = ws
        for frame in list(self._pending.values()):
            ws.send(frame)
        return ws

    def _take(self, text: str) -> None:
        ref, ack, error = _answer(text)
        if not self._pending:
            return
        oldest = next(iter(self._pending))
        if ref is not None and ref != oldest:
            return
        del self._pending[oldest]
        if error is not None:
            if self._failed is None:
                self._failed = _refusal(error)
        elif oldest == self._want:
            self._answer = ack

    def _read(self, until: Optional[int]) -> None:
        """Reads answers: all that are there (``until`` None), or up to frame ``until``."""
        while self._pending and (until is None or until in self._pending):
            ws = self._ws or self._connect()
            try:
                self._take(ws.recv(timeout=0 if until is None else None))
            except TimeoutError:
                return
            except ConnectionClosed:
                self._ws = None

    def send(self, run_id: str, events: List[Dict[str, Json]], wait: bool = True) -> List[int]:
        with self._lock:
            return self._post(lambda ref: _frame(ref, run_id, events), wait).get("seqs") or []

    def register(self, body: Dict[str, Json]) -> Dict[str, Json]:
        """Registers a run (the body of ``POST /v1/runs``); answers ``run_id`` and ``thread_id``."""
        with self._lock:
            return self._post(lambda ref: _register_frame(ref, body), True)

    def _post(self, frame_for: Callable[[int], str], wait: bool) -> Dict[str, Json]:
        if len(self._pending) >= MOST_UNANSWERED:
            self._read(next(iter(self._pending)))
        ws = self._ws or self._connect()
        self._next_ref += 1
        ref = self._next_ref
        frame = frame_for(ref)
        self._pending[ref] = frame
        try:
            ws.send(frame)
        except ConnectionClosed:
            self._ws = None
            self._connect()
        # Answers are read as we go, so the server never waits on us to read.
        if not wait:
            self._read(None)
            return {}
        self._want, self._answer = ref, {}
        self._read(ref)
        self._want = None
        self._raise_failed()
        return self._answer

    def flush(self) -> None:
        with self._lock:
            if self._pending:
                self._read(next(reversed(self._pending)))
            self._raise_failed()

    def close(self) -> None:
        with self._lock:
            if self._ws is not None:
                self._ws.close()
                self._ws = None
