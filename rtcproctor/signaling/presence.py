"""Who is connected, who is live, who watches whom, and the peer connections between them.

Pure bookkeeping with no I/O, so the rules (one live device per code, one peer per
student-watcher pair) are testable without sockets.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field

from rtcproctor.store import StudentRecord

OFFLINE = "offline"
CONNECTED = "connected"
LIVE = "live"


@dataclass
class Peer:
    id: str
    student_id: int
    student_sid: str
    watcher_sid: str
    audio_only: bool = False


@dataclass
class StudentState:
    record: StudentRecord
    code: str
    sid: str | None = None
    live: bool = False
    background: bool = False
    since: float = field(default_factory=time.time)
    watchers: set[str] = field(default_factory=set)

    @property
    def state(self) -> str:
        if self.sid is None:
            return OFFLINE
        return LIVE if self.live else CONNECTED

    def status(self) -> dict[str, object]:
        return {
            "code": self.code,
            "state": self.state,
            "since": self.since,
            "background": self.background,
        }


@dataclass
class Client:
    """One Socket.IO connection: its address and the role it took."""

    sid: str
    address: str
    student_id: int | None = None
    watching: set[int] = field(default_factory=set)
    authorized_exams: set[str] = field(default_factory=set)

    @property
    def role(self) -> str | None:
        if self.student_id is not None:
            return "student"
        return "proctor" if self.watching else None


class Presence:
    def __init__(self) -> None:
        self.clients: dict[str, Client] = {}
        self.students: dict[int, StudentState] = {}
        self.peers: dict[str, Peer] = {}
        self._peers_by_sid: dict[str, set[str]] = {}

    def student(self, record: StudentRecord, code: str) -> StudentState:
        state = self.students.get(record.id)
        if state is None:
            state = StudentState(record=record, code=code)
            self.students[record.id] = state
        return state

    def forget_if_idle(self, student_id: int) -> None:
        state = self.students.get(student_id)
        if state is not None and state.sid is None and not state.watchers:
            del self.students[student_id]

    def set_state(
        self,
        state: StudentState,
        *,
        sid: str | type[...] | None = ...,
        live: bool | None = None,
    ) -> bool:
        """Apply a change; returns whether the visible state moved (and `since` with it)."""
        before = state.state
        if sid is not ...:
            state.sid = sid  # type: ignore[assignment]
            if sid is None:
                state.live = False
                state.background = False
        if live is not None:
            state.live = live
        if state.state != before:
            state.since = time.time()
            return True
        return False

    # Peers

    def open_peer(self, state: StudentState, watcher_sid: str, audio_only: bool = False) -> Peer:
        assert state.sid is not None
        peer = Peer(
            id=secrets.token_urlsafe(9),
            student_id=state.record.id,
            student_sid=state.sid,
            watcher_sid=watcher_sid,
            audio_only=audio_only,
        )
        self.peers[peer.id] = peer
        self._peers_by_sid.setdefault(peer.student_sid, set()).add(peer.id)
        self._peers_by_sid.setdefault(peer.watcher_sid, set()).add(peer.id)
        return peer

    def close_peer(self, peer_id: str) -> Peer | None:
        peer = self.peers.pop(peer_id, None)
        if peer is None:
            return None
        for sid in (peer.student_sid, peer.watcher_sid):
            ids = self._peers_by_sid.get(sid)
            if ids is not None:
                ids.discard(peer_id)
                if not ids:
                    del self._peers_by_sid[sid]
        return peer

    def peers_of(self, sid: str) -> list[Peer]:
        return [self.peers[p] for p in self._peers_by_sid.get(sid, ())]

    def peers_between(self, student_id: int, watcher_sid: str) -> list[Peer]:
        return [p for p in self.peers_of(watcher_sid) if p.student_id == student_id]
