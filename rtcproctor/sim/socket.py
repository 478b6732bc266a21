"""The Socket.IO client both simulators use: websocket only, reconnecting, every call acked.

The protocol answers every client event with an ack `{ok, ...}` or `{ok: false, error}`;
`call` turns that into a payload or an `AckError`, with the 5 s timeout the pages use.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

import socketio

log = logging.getLogger(__name__)

ACK_TIMEOUT = 5.0


class AckError(Exception):
    """The server refused a call (`code` as in the protocol), or no ack (`timeout`, `offline`)."""

    def __init__(self, code: str, message: str, retry_after: float | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.retry_after = retry_after

    def as_error(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


def ack_error(ack: Any) -> AckError:
    error = ack.get("error") if isinstance(ack, dict) else None
    if not isinstance(error, dict):
        return AckError("internal", f"malformed acknowledgement {ack!r}")
    retry = ack.get("retry_after")
    return AckError(
        str(error.get("code", "internal")),
        str(error.get("message", "")),
        float(retry) if isinstance(retry, int | float) else None,
    )


@dataclass
class Signaling:
    """One connection to the server; handlers are registered with `on` before `connect`."""

    url: str
    sio: socketio.AsyncClient = field(
        default_factory=lambda: socketio.AsyncClient(
            reconnection=True,
            reconnection_delay=0.5,
            reconnection_delay_max=5,
            logger=False,
            engineio_logger=False,
        )
    )

    def on(self, event: str, handler: Any) -> None:
        self.sio.on(event, handler)

    @property
    def connected(self) -> bool:
        # `sio.connected` turns true only after the connect handler ran; the namespace is
        # registered before it, and that is what `emit` checks.
        return "/" in self.sio.namespaces

    async def connect(self) -> None:
        """Connect, retrying until the server answers; python-socketio handles later drops."""
        delay = 0.5
        while True:
            try:
                await self.sio.connect(self.url, transports=["websocket"])
                return
            except socketio.exceptions.ConnectionError as exc:
                log.warning("cannot reach %s (%s); trying again in %.1f s", self.url, exc, delay)
            await asyncio.sleep(delay)
            delay = min(2 * delay, 5.0)

    async def call(
        self, event: str, data: dict[str, Any], wait: float = ACK_TIMEOUT
    ) -> dict[str, Any]:
        """Emit with an ack and wait at most `wait` seconds; the ack's payload, or AckError."""
        if not self.connected:
            raise AckError("offline", "not connected to the server")
        try:
            ack = await self.sio.call(event, data, timeout=wait)
        except socketio.exceptions.TimeoutError:
            raise AckError("timeout", f"no answer to {event} within {wait:g} s") from None
        except socketio.exceptions.BadNamespaceError:
            raise AckError("offline", "not connected to the server") from None
        if isinstance(ack, dict) and ack.get("ok") is True:
            return ack
        raise ack_error(ack)

    async def close(self) -> None:
        try:
            await asyncio.wait_for(self.sio.shutdown(), 5)
        except Exception:  # closing is best effort
            log.debug("disconnect failed", exc_info=True)
        # A connection that never succeeded leaves Engine.IO's HTTP session open.
        http = getattr(self.sio.eio, "http", None)
        if http is not None and not http.closed:
            await http.close()


def spawn(tasks: set[asyncio.Task[Any]], coro: Any) -> None:
    """Run `coro` as a task that `tasks` holds until it ends (so it is not collected early)."""
    task = asyncio.ensure_future(coro)
    tasks.add(task)
    task.add_done_callback(tasks.discard)


def log_disconnect(logger: logging.Logger, reason: tuple[Any, ...]) -> None:
    """A disconnect we asked for is routine; any other is worth a warning."""
    why = str(reason[0]) if reason else "unknown reason"
    level = logging.INFO if why == "client disconnect" else logging.WARNING
    logger.log(level, "disconnected from the server (%s)", why)
