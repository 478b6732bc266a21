"""A headless proctor: watches codes, answers each student's offer (recvonly), prints events.

Like the monitor page it re-sends `proctor:watch` after every reconnect and asks for a
new peer with `peer:renew` when one fails. Media is consumed frame by frame; the first
audio and the first video frame of each peer are printed as `media` events.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiortc import MediaStreamTrack, RTCPeerConnection
from aiortc.mediastreams import MediaStreamError

from rtcproctor.codes import CodeError, normalize_code
from rtcproctor.rtc.ice import configuration, description_json
from rtcproctor.sim.events import FORWARDED, EventSink
from rtcproctor.sim.peers import Peer, Peers
from rtcproctor.sim.socket import AckError, Signaling, log_disconnect, spawn

log = logging.getLogger(__name__)

STATES = ("offline", "connected", "live")
ICE_REFRESH = 3600.0  # seconds; TURN credentials expire (the server says when, with a ttl)

# stdin command -> (server event, payload fields taken from the command)
COMMANDS: dict[str, tuple[str, tuple[str, ...]]] = {
    "chat": ("chat:send", ("code", "text")),
    "attention": ("attention:raise", ("code",)),
    "resolve": ("attention:resolve", ("code", "id")),
    "renew": ("peer:renew", ("code",)),
}


def _normal(code: Any) -> Any:
    try:
        return normalize_code(code)
    except CodeError:
        return code


@dataclass
class SimProctor:
    server: str
    codes: list[str]
    sink: EventSink
    key: str | None = None
    signaling: Signaling = field(init=False)
    peers: Peers = field(default_factory=Peers)
    ice_servers: list[dict[str, Any]] = field(default_factory=list)
    ice_policy: str = "all"
    ice_ttl: float = ICE_REFRESH
    ice_at: float = 0.0
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.signaling = Signaling(self.server)
        on = self.signaling.on
        on("connect", self._on_connect)
        on("disconnect", self._on_disconnect)
        on("student:status", self._on_status)
        on("signal", self._on_signal)
        on("peer:close", self._on_peer_close)
        for event, (kind, key) in FORWARDED.items():
            on(event, self._forward(kind, key))

    async def run(self, stop: asyncio.Event, commands: asyncio.Queue[Any] | None = None) -> int:
        self.ice_at = time.monotonic()
        connecting = asyncio.ensure_future(self.signaling.connect())
        refreshing = asyncio.ensure_future(self._refresh_ice())
        reading = asyncio.ensure_future(self._serve(commands)) if commands else None
        try:
            await stop.wait()
        finally:
            for task in (connecting, refreshing, reading, *self._tasks):
                if task is not None:
                    task.cancel()
            await self.peers.close_all()
            await self.signaling.close()
        return 0

    def _spawn(self, coro: Any) -> None:
        spawn(self._tasks, coro)

    # Watching

    async def _on_connect(self) -> None:
        log.info("connected to %s", self.server)
        self._spawn(self._watch())

    async def _on_disconnect(self, *reason: Any) -> None:
        log_disconnect(log, reason)
        await self.peers.close_all()

    async def _watch(self) -> None:
        payload: dict[str, Any] = {"codes": self.codes}
        if self.key:
            payload["key"] = self.key
        while self.signaling.connected:
            try:
                ack = await self.signaling.call("proctor:watch", payload)
            except AckError as exc:
                if exc.code == "offline":
                    return
                if exc.code in ("timeout", "rate_limited", "internal"):
                    wait = exc.retry_after or 1.0
                    log.warning("proctor:watch failed (%s); again in %.1f s", exc, wait)
                    await asyncio.sleep(wait)
                    continue
                for code in self.codes:
                    self.sink.event("error", code, error=exc.as_error())
                return
            self._keep_ice(ack)
            for student in ack.get("students", []):
                self._status(student, name=student.get("name"))
            for error in ack.get("errors", []):
                self.sink.event("error", error.get("code"), error=error.get("error"))
            for code, history in (ack.get("history") or {}).items():
                for alert in history.get("alerts", []):
                    self.sink.event("alert", code, alert=alert, history=True)
            return

    def _keep_ice(self, data: dict[str, Any]) -> None:
        servers = data.get("iceServers")
        self.ice_servers = servers if isinstance(servers, list) else []
        self.ice_policy = str(data.get("iceTransportPolicy") or "all")
        ttl = data.get("ttl")
        self.ice_ttl = float(ttl) if isinstance(ttl, int | float) and ttl > 0 else ICE_REFRESH
        self.ice_at = time.monotonic()

    async def _refresh_ice(self) -> None:
        """TURN credentials expire: fetch them again (`GET /ice-servers`) at half their life."""
        url = self.server.rstrip("/") + "/ice-servers"
        while True:
            await asyncio.sleep(max(30.0, self.ice_at + self.ice_ttl / 2 - time.monotonic()))
            try:
                timeout = aiohttp.ClientTimeout(total=5)
                async with (
                    aiohttp.ClientSession(timeout=timeout) as session,
                    session.get(url) as response,
                ):
                    response.raise_for_status()
                    self._keep_ice(await response.json())
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                log.warning("could not refresh the ICE servers: %s", exc)

    def _status(self, data: dict[str, Any], **extra: Any) -> None:
        state = data.get("state")
        if state in STATES:
            self.sink.event(
                state,
                data.get("code"),
                since=data.get("since"),
                background=data.get("background"),
                **extra,
            )

    async def _on_status(self, data: Any) -> None:
        if isinstance(data, dict):
            self._status(data)

    def _forward(self, kind: str, key: str) -> Any:
        async def handler(data: Any) -> None:
            if isinstance(data, dict):
                self.sink.event(kind, data.get("code"), **{key: data.get(key)})

        return handler

    # Peers

    def _new_peer(self, peer_id: str, code: str) -> Peer:
        pc = RTCPeerConnection(configuration(self.ice_servers, self.ice_policy))
        peer = Peer(peer_id, pc, code)

        @pc.on("track")
        def _track(track: MediaStreamTrack) -> None:
            peer.spawn(self._consume(peer, track))

        @pc.on("connectionstatechange")
        def _state() -> None:
            log.info("peer %s (%s): %s", peer_id, code, pc.connectionState)
            if pc.connectionState == "failed" and self.peers.current(peer):
                self._spawn(self._renew(peer))

        self.peers.add(peer)
        return peer

    async def _on_signal(self, data: Any) -> None:
        if not isinstance(data, dict) or not isinstance(data.get("peer"), str):
            log.warning("malformed signal %r", data)
            return
        description = data.get("description")
        offer = isinstance(description, dict) and description.get("type") == "offer"
        peer = self.peers.get(data["peer"])
        if peer is None:
            if not offer:
                log.debug("signal for an unknown peer: %r", data)
                return
            peer = self._new_peer(data["peer"], str(data.get("code", "")))
        async with peer.lock:
            if not self.peers.current(peer):
                return
            try:
                await peer.apply_remote(data)
                if offer:
                    await peer.pc.setLocalDescription(await peer.pc.createAnswer())
            except Exception:
                log.exception("peer %s: could not apply %s", peer.id, sorted(data))
                return
            if offer and self.peers.current(peer):
                try:
                    answer = description_json(peer.pc.localDescription)
                    await self.signaling.call("signal", {"peer": peer.id, "description": answer})
                except AckError as exc:
                    log.warning("answer for peer %s not delivered: %s", peer.id, exc)

    async def _on_peer_close(self, data: Any) -> None:
        if isinstance(data, dict):
            log.info("peer %s (%s) closed by the server", data.get("peer"), data.get("code"))
            await self.peers.close(data.get("peer"))

    async def _consume(self, peer: Peer, track: MediaStreamTrack) -> None:
        """Read every frame (an unread track buffers without end); report the first one."""
        first = True
        while True:
            try:
                await track.recv()
            except MediaStreamError:
                return
            if first and self.peers.current(peer):
                first = False
                self.sink.event("media", peer.code, kind=track.kind, peer=peer.id)

    async def _renew(self, peer: Peer) -> None:
        try:
            await self.signaling.call("peer:renew", {"code": peer.code})
            log.info("asked for a new peer for %s", peer.code)
        except AckError as exc:
            log.warning("peer:renew %s: %s", peer.code, exc)

    # Commands

    async def _serve(self, commands: asyncio.Queue[Any]) -> None:
        while True:
            command = await commands.get()
            if command is None:
                return
            self._spawn(self.command(command))

    async def command(self, command: Any) -> None:
        """Run one `{"chat": {...}}`-style command and print its ack."""
        single = isinstance(command, dict) and len(command) == 1
        name = next(iter(command)) if single else None
        args = command.get(name) if single else None
        if name not in COMMANDS or not isinstance(args, dict):
            self.sink.event(
                "ack",
                None,
                command=name,
                ok=False,
                error={"code": "invalid", "message": f"unknown command {command!r}"},
            )
            return
        event, keys = COMMANDS[name]
        payload = {k: args[k] for k in keys if k in args}
        code = _normal(args.get("code"))
        try:
            ack = await self.signaling.call(event, payload)
        except AckError as exc:
            extra = {"retry_after": exc.retry_after} if exc.retry_after is not None else {}
            self.sink.event("ack", code, command=name, ok=False, error=exc.as_error(), **extra)
            return
        fields = {k: v for k, v in ack.items() if k not in ("type", "code", "ts")}
        self.sink.event("ack", code, command=name, **fields)
