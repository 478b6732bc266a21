"""A minimal Engine.IO v4 / Socket.IO v5 client over one aiohttp websocket.

Thousands of python-socketio `AsyncClient`s would cost the 2-core machine more than
the server being measured; this speaks only what the benchmark needs: the handshake,
pong, JSON events and acks on namespace `/` (no polling, no binary packets).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

log = logging.getLogger(__name__)

EventHandler = Callable[[str, Any, float], None]  # event, payload, perf_counter at receipt
AckHandler = Callable[[Any], None]

_DUMPS = json.JSONEncoder(separators=(",", ":")).encode


class HandshakeError(Exception):
    pass


@dataclass
class SioConnection:
    ws: aiohttp.ClientWebSocketResponse
    on_event: EventHandler | None = None
    sid: str = ""
    pings: int = 0
    closed: bool = False
    _acks: dict[int, AckHandler] = field(default_factory=dict)
    _next_id: int = 0
    _reader: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        try:
            async for msg in self.ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    break
                data: str = msg.data
                if data == "2":  # Engine.IO ping: the server drops us without a pong
                    self.pings += 1
                    await self.ws.send_str("3")
                elif data.startswith("4"):
                    self._packet(data[1:], time.perf_counter())
                elif data.startswith("1"):
                    break
        except (aiohttp.ClientError, ConnectionError):
            pass
        finally:
            self.closed = True

    def _packet(self, data: str, at: float) -> None:
        kind, rest = data[:1], data[1:]
        if rest.startswith("/"):  # another namespace: not ours
            return
        digits = 0
        while digits < len(rest) and rest[digits].isdigit():
            digits += 1
        ident = int(rest[:digits]) if digits else None
        body = json.loads(rest[digits:]) if rest[digits:] else None
        if kind == "2" and isinstance(body, list) and body and self.on_event is not None:
            self.on_event(body[0], body[1] if len(body) > 1 else None, at)
        elif kind == "3" and ident is not None:
            handler = self._acks.pop(ident, None)
            if handler is not None:
                handler(body[0] if isinstance(body, list) and body else None)
        elif kind == "1":
            self.closed = True

    async def emit(self, event: str, data: Any, on_ack: AckHandler | None = None) -> None:
        """Send an event; with `on_ack` it asks for an acknowledgement, as every page event does."""
        ident = ""
        if on_ack is not None:
            self._next_id += 1
            self._acks[self._next_id] = on_ack
            ident = str(self._next_id)
        await self.ws.send_str("42" + ident + _DUMPS([event, data]))

    async def call(self, event: str, data: Any, wait: float = 5.0) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        def done(ack: Any) -> None:
            if not future.done():
                future.set_result(ack)

        await self.emit(event, data, done)
        return await asyncio.wait_for(future, wait)

    async def close(self) -> None:
        if not self.ws.closed:
            with contextlib.suppress(aiohttp.ClientError, ConnectionError, RuntimeError):
                await self.ws.send_str("41")
            await self.ws.close()
        if self._reader is not None:
            self._reader.cancel()
        self.closed = True


async def connect(
    session: aiohttp.ClientSession,
    url: str,
    on_event: EventHandler | None = None,
    wait: float = 10.0,
) -> SioConnection:
    """Open the websocket, read the Engine.IO open packet, join namespace `/`."""
    ws = await session.ws_connect(
        url.rstrip("/") + "/socket.io/?EIO=4&transport=websocket",
        autoping=True,
        heartbeat=None,
        timeout=aiohttp.ClientWSTimeout(ws_close=wait),
    )
    try:
        opened = await ws.receive(wait)
        if opened.type != aiohttp.WSMsgType.TEXT or not opened.data.startswith("0"):
            raise HandshakeError(f"expected an Engine.IO open packet, got {opened.data!r}")
        await ws.send_str("40")
        joined = await ws.receive(wait)
        if joined.type != aiohttp.WSMsgType.TEXT or not joined.data.startswith("40"):
            raise HandshakeError(f"namespace / refused: {joined.data!r}")
    except BaseException:
        await ws.close()
        raise
    conn = SioConnection(ws, on_event, sid=json.loads(joined.data[2:] or "{}").get("sid", ""))
    conn.start()
    return conn
