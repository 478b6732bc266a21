"""The proctor simulator's output: one JSON object per line, flushed, for tests and scripts.

Every line has `type`, `code` (normalised, as the server sends it) and `ts` (Unix seconds).
Server events that are printed as they come are listed in `FORWARDED`; a new one (the
coming `alert`) is one more entry there.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any, Protocol, TextIO

# server event -> (printed type, field of the payload copied into the line)
FORWARDED: dict[str, tuple[str, str]] = {
    "chat:message": ("chat", "message"),
    "attention": ("attention", "attention"),
    "attention:resolved": ("resolved", "id"),
    "alert": ("alert", "alert"),
}


class EventSink(Protocol):
    def event(self, type: str, code: str | None, **fields: Any) -> None: ...


class JsonLines:
    """Writes each event as one JSON line and flushes it at once."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stdout

    def event(self, type: str, code: str | None, **fields: Any) -> None:
        line = {"type": type, "code": code, "ts": time.time(), **fields}
        self.stream.write(json.dumps(line, separators=(",", ":")) + "\n")
        self.stream.flush()
