"""A headless student: joins with a code, goes live and answers every `peer:request` with an offer.

It follows the student page step by step (docs/protocol.md): join, `student:live`,
one sendonly peer per watcher with a complete offer (aiortc gathers every candidate
in setLocalDescription, so none are trickled), and a fresh join + live after every
reconnect. aiortc has no `restartIce()`, so a failed peer is left to the proctor's
`peer:renew`, which makes the server ask for a new peer.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiortc import RTCPeerConnection

from rtcproctor.rtc.ice import configuration, description_json
from rtcproctor.sim.media import MediaSource, PatternTrack
from rtcproctor.sim.peers import Peer, Peers
from rtcproctor.sim.socket import AckError, Signaling, log_disconnect, spawn

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_REJECTED = 2
EXIT_REPLACED = 3


@dataclass
class SimStudent:
    server: str
    code: str
    media: MediaSource
    label: str = ""
    on_live_sent: Callable[[float], None] | None = None  # benchmarks time Go Live from here
    signaling: Signaling = field(init=False)
    peers: Peers = field(default_factory=Peers)
    exit_code: int | None = None
    name: str | None = None
    _done: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.signaling = Signaling(self.server)
        on = self.signaling.on
        on("connect", self._on_connect)
        on("disconnect", self._on_disconnect)
        on("peer:request", self._on_peer_request)
        on("peer:close", self._on_peer_close)
        on("signal", self._on_signal)
        on("chat:message", self._on_chat)
        on("attention", self._on_attention)
        on("student:replaced", self._on_replaced)

    @property
    def who(self) -> str:
        return self.name or self.label or self.code

    async def run(self, stop: asyncio.Event) -> int:
        """Stream until `stop` is set or the session ends (replaced, rejected); the exit code."""
        log.info("student %s: %s", self.label or self.code, self.media.description)
        connecting = asyncio.ensure_future(self.signaling.connect())
        stopping = asyncio.ensure_future(stop.wait())
        done = asyncio.ensure_future(self._done.wait())
        try:
            await asyncio.wait({stopping, done}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (connecting, stopping, done):
                task.cancel()
            await self._shutdown(tell_server=self.exit_code is None)
        return self.exit_code or EXIT_OK

    def _finish(self, code: int) -> None:
        if self.exit_code is None:
            self.exit_code = code
        self._done.set()

    def _spawn(self, coro: Any) -> None:
        spawn(self._tasks, coro)

    async def _shutdown(self, tell_server: bool) -> None:
        for task in list(self._tasks):
            task.cancel()
        if tell_server and self.signaling.connected:
            try:
                await self.signaling.call("student:live", {"live": False}, wait=2)
            except AckError as exc:
                log.debug("student:live false: %s", exc)
        await self.peers.close_all()
        self.media.stop()
        await self.signaling.close()

    # Session

    async def _on_connect(self) -> None:
        log.info("connected to %s", self.server)
        self._spawn(self._join_and_go_live())

    async def _on_disconnect(self, *reason: Any) -> None:
        log_disconnect(log, reason)
        # The server closed every peer of the old connection; the new one gets fresh requests.
        await self.peers.close_all()

    async def _join_and_go_live(self) -> None:
        while self.signaling.connected and self.exit_code is None:
            try:
                ack = await self.signaling.call("student:join", {"code": self.code})
                self.name = str(ack.get("student", {}).get("name") or "") or None
                log.info("joined as %s", self.who)
                if not self.label and self.name and isinstance(self.media.video, PatternTrack):
                    self.media.video.label = self.name  # the synthetic picture shows who it is
                if self.on_live_sent is not None:
                    self.on_live_sent(time.time())
                await self.signaling.call("student:live", {"live": True})
                log.info("%s is live", self.who)
                return
            except AckError as exc:
                if exc.code == "offline":
                    return  # joins again on the next connect
                if exc.code in ("timeout", "rate_limited", "internal"):
                    wait = exc.retry_after or 1.0
                    log.warning("join failed (%s); again in %.1f s", exc, wait)
                    await asyncio.sleep(wait)
                    continue
                print(
                    f"rtcproctor simulate student: the server refused code {self.code}: "
                    f"{exc.message} ({exc.code})",
                    file=sys.stderr,
                )
                self._finish(EXIT_REJECTED)
                return

    async def _on_replaced(self, _data: Any = None) -> None:
        print(
            f"rtcproctor simulate student: replaced: another device went live with code "
            f"{self.code}; this one stopped",
            file=sys.stderr,
        )
        await self.peers.close_all()
        self._finish(EXIT_REPLACED)

    # Peers

    async def _on_peer_request(self, data: Any) -> None:
        if not isinstance(data, dict) or not isinstance(data.get("peer"), str):
            log.warning("malformed peer:request %r", data)
            return
        peer_id = data["peer"]
        await self.peers.close(peer_id)
        config = configuration(data.get("iceServers"), data.get("iceTransportPolicy"))
        pc = RTCPeerConnection(config)
        peer = Peer(peer_id, pc)
        self.peers.add(peer)

        @pc.on("connectionstatechange")
        def _state() -> None:
            log.info("peer %s: %s", peer_id, pc.connectionState)

        async with peer.lock:
            for track in self.media.tracks(bool(data.get("audioOnly"))):
                pc.addTransceiver(track, direction="sendonly")
            await pc.setLocalDescription(await pc.createOffer())
            if not self.peers.current(peer):
                return
            try:
                offer = description_json(pc.localDescription)
                await self.signaling.call("signal", {"peer": peer_id, "description": offer})
            except AckError as exc:
                log.warning("offer for peer %s not delivered: %s", peer_id, exc)

    async def _on_peer_close(self, data: Any) -> None:
        if isinstance(data, dict):
            log.info("peer %s closed by the server", data.get("peer"))
            await self.peers.close(data.get("peer"))

    async def _on_signal(self, data: Any) -> None:
        peer = self.peers.get(data.get("peer")) if isinstance(data, dict) else None
        if peer is None:
            log.debug("signal for an unknown peer: %r", data)
            return
        async with peer.lock:
            if not self.peers.current(peer):
                return
            try:
                await peer.apply_remote(data)
            except Exception:
                log.exception("peer %s: could not apply %s", peer.id, sorted(data))

    # Conversation

    async def _on_chat(self, data: Any) -> None:
        message = data.get("message", {}) if isinstance(data, dict) else {}
        log.info("chat from %s: %s", message.get("from"), message.get("text"))

    async def _on_attention(self, data: Any) -> None:
        log.info("the proctor asks for attention: %r", data)
