"""The open RTCPeerConnections of one simulator, keyed by the server's peer id.

python-socketio runs each incoming event in its own task, so an answer and the
candidates after it could be applied out of order; every step on one peer takes that
peer's lock first (asyncio locks are FIFO), which keeps the server's order.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

from aiortc import RTCPeerConnection

from rtcproctor.rtc.ice import candidate_from_init, description_from_json

log = logging.getLogger(__name__)


@dataclass
class Peer:
    id: str
    pc: RTCPeerConnection
    code: str = ""
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    closed: bool = False
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def apply_remote(self, data: dict[str, Any]) -> None:
        """Apply a remote description and/or candidate from a `signal` event."""
        if data.get("description"):
            await self.pc.setRemoteDescription(description_from_json(data["description"]))
        if "candidate" in data:
            await self.pc.addIceCandidate(candidate_from_init(data["candidate"]))


class Peers:
    def __init__(self) -> None:
        self._peers: dict[str, Peer] = {}

    def __len__(self) -> int:
        return len(self._peers)

    def get(self, peer_id: Any) -> Peer | None:
        return self._peers.get(peer_id) if isinstance(peer_id, str) else None

    def add(self, peer: Peer) -> None:
        self._peers[peer.id] = peer

    def current(self, peer: Peer) -> bool:
        return not peer.closed and self._peers.get(peer.id) is peer

    async def close(self, peer_id: Any) -> None:
        peer = self._peers.pop(peer_id, None) if isinstance(peer_id, str) else None
        if peer is None:
            return
        peer.closed = True
        for task in list(peer.tasks):
            task.cancel()
        try:
            await peer.pc.close()
        except Exception:
            log.debug("closing peer %s failed", peer.id, exc_info=True)

    async def close_all(self) -> None:
        for peer_id in list(self._peers):
            await self.close(peer_id)
