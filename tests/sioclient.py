"""A real python-socketio client that records every event it receives, for protocol tests."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Any

import socketio


class Peer:
    def __init__(self, url: str) -> None:
        self.url = url
        self.sio = socketio.AsyncClient(reconnection=False)
        self.events: dict[str, list[Any]] = defaultdict(list)
        self._arrived = asyncio.Event()
        self.sio.on("*", self._record)

    async def _record(self, event: str, data: Any = None) -> None:
        self.events[event].append(data)
        self._arrived.set()

    async def connect(self) -> Peer:
        await self.sio.connect(self.url, transports=["websocket"], wait_timeout=10)
        return self

    async def call(self, event: str, data: Any = None, within: float = 10) -> dict[str, Any]:
        return await self.sio.call(event, data, timeout=within)

    async def wait_for(self, event: str, predicate=lambda d: True, within: float = 10) -> Any:
        """The first event of this name matching the predicate (already seen or to come)."""
        async with asyncio.timeout(within):
            seen = 0
            while True:
                items = self.events[event]
                for item in items[seen:]:
                    if predicate(item):
                        return item
                seen = len(items)
                self._arrived.clear()
                await self._arrived.wait()

    async def close(self) -> None:
        await self.sio.disconnect()
