"""agentwire: publish agent run events to an agentwire server, sync or async.

See `agentwire.client` for `Publisher` and `AsyncPublisher`, and `agentwire.seed`
for the drop-in replacement of the seed system's ``notify_*`` bridge.
"""

from .client import (
    AgentwireError,
    Answer,
    AsyncPublisher,
    AsyncRun,
    AsyncToolCall,
    Event,
    Publisher,
    Run,
    RunEnded,
    ToolCall,
    thinking,
)

__all__ = [
    "AgentwireError",
    "Answer",
    "AsyncPublisher",
    "AsyncRun",
    "AsyncToolCall",
    "Event",
    "Publisher",
    "Run",
    "RunEnded",
    "ToolCall",
    "thinking",
]
