"""Who is connected, who is live, who watches whom, and the peer connections between them.

`Presence` is the state every server process must agree on. `MemoryPresence` keeps it
in this process (one server, the default); `rtcproctor.signaling.redis_presence` keeps
it in Redis so that several processes share it. Both follow the same rules, tested
once for both: one live device per code (compare-and-set on the student's socket id),
one peer per student-watcher pair, and `since` moving only when the visible state does.
"""

from __future__ import annotations

import os
import secrets
import socket
import time
from dataclasses import dataclass, field, replace
from typing import Protocol

from rtcproctor.signaling.ratelimit import KeyedLimiter

OFFLINE = "offline"
CONNECTED = "connected"
LIVE = "live"


def process_id() -> str:
    """A name for this server process, unique across machines and restarts."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


@dataclass(frozen=True)
class Peer:
    id: str
    student_id: int
    student_sid: str
    watcher_sid: str
    audio_only: bool = False
    code: str = ""


@dataclass(frozen=True)
class StudentState:
    """A snapshot of one student's presence; change it only through `Presence`."""

    id: int
    exam_id: str
    code: str
    sid: str | None = None
    owner: str | None = None
    live: bool = False
    background: bool = False
    since: float = field(default_factory=time.time)

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


@dataclass(frozen=True)
class Watched:
    """What a proctor connection knows of a student it watches."""

    code: str
    exam_id: str


@dataclass
class Client:
    """One Socket.IO connection of this process: its address and the role it took.

    Connection-scoped, so it lives and dies with the socket on the process that holds it.
    """

    sid: str
    address: str
    student_id: int | None = None
    watching: dict[int, Watched] = field(default_factory=dict)
    authorized_exams: set[str] = field(default_factory=set)

    @property
    def role(self) -> str | None:
        if self.student_id is not None:
            return "student"
        return "proctor" if self.watching else None


@dataclass(frozen=True)
class Orphans:
    """What a dead process left behind: its students' sessions and its watchers."""

    process: str
    students: list[StudentState]
    watchers: list[tuple[int, str]]


class PresenceUnavailable(RuntimeError):
    """Shared presence is configured but cannot be reached (e.g. Redis is down)."""


class Limiter(Protocol):
    async def wait(self, key: str) -> float:
        """Seconds until one token is there (0 when allowed), without spending."""
        ...

    async def spend(self, key: str, cost: float = 1.0) -> float:
        """Spend tokens; 0 when allowed, else seconds until it would be."""
        ...


class Presence(Protocol):
    process: str

    async def start(self) -> None: ...
    async def close(self) -> None: ...

    async def student(self, student_id: int) -> StudentState | None: ...

    async def update(
        self,
        student_id: int,
        expect_sid: str | None,
        *,
        exam_id: str | None = None,
        code: str | None = None,
        sid: str | type[...] | None = ...,
        live: bool | None = None,
        background: bool | None = None,
    ) -> StudentState | None:
        """Change a student if their socket id is still `expect_sid` (None: offline or
        unknown); returns the new state, or None when another device got there first.
        A new entry needs `exam_id` and `code`."""
        ...

    async def forget_if_idle(self, student_id: int) -> None: ...

    async def watch(self, student_id: int, watcher_sid: str) -> bool:
        """Add a watcher; returns whether it is new."""
        ...

    async def unwatch(self, student_id: int, watcher_sid: str) -> None: ...
    async def watchers(self, student_id: int) -> list[str]: ...

    async def open_peer(
        self, state: StudentState, watcher_sid: str, audio_only: bool = False
    ) -> Peer: ...

    async def close_peer(self, peer_id: str) -> Peer | None:
        """Remove a peer; returns it to exactly one caller, None to the others."""
        ...

    async def peer(self, peer_id: str) -> Peer | None: ...
    async def peers_of(self, sid: str) -> list[Peer]: ...
    async def peers_between(self, student_id: int, watcher_sid: str) -> list[Peer]: ...

    async def live_here(self) -> list[StudentState]:
        """Live students whose device is connected to this process."""
        ...

    async def orphans(self) -> list[Orphans]:
        """Claim what dead processes left (each one for exactly one survivor)."""
        ...

    async def take_reaped(self) -> bool:
        """Whether others took this process for dead since the last call."""
        ...

    def limiter(self, name: str, rate: float, burst: float) -> Limiter: ...


class MemoryLimiter:
    def __init__(self, rate: float, burst: float) -> None:
        self._limiter = KeyedLimiter(rate, burst)

    async def wait(self, key: str) -> float:
        return self._limiter.blocked_for(key)

    async def spend(self, key: str, cost: float = 1.0) -> float:
        return self._limiter.spend(key, cost)


class MemoryPresence:
    """Presence for one server process: plain dictionaries, no I/O."""

    def __init__(self) -> None:
        self.process = process_id()
        self.students: dict[int, StudentState] = {}
        self._watchers: dict[int, set[str]] = {}
        self.peers: dict[str, Peer] = {}
        self._peers_by_sid: dict[str, set[str]] = {}

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def student(self, student_id: int) -> StudentState | None:
        return self.students.get(student_id)

    async def update(
        self,
        student_id: int,
        expect_sid: str | None,
        *,
        exam_id: str | None = None,
        code: str | None = None,
        sid: str | type[...] | None = ...,
        live: bool | None = None,
        background: bool | None = None,
    ) -> StudentState | None:
        current = self.students.get(student_id)
        if current is None:
            if expect_sid is not None or exam_id is None or code is None:
                return None
            current = StudentState(id=student_id, exam_id=exam_id, code=code)
        elif current.sid != expect_sid:
            return None
        new = apply_change(current, self.process, code, sid, live, background)
        self.students[student_id] = new
        return new

    async def forget_if_idle(self, student_id: int) -> None:
        state = self.students.get(student_id)
        if state is not None and state.sid is None and not self._watchers.get(student_id):
            del self.students[student_id]
            self._watchers.pop(student_id, None)

    async def watch(self, student_id: int, watcher_sid: str) -> bool:
        watchers = self._watchers.setdefault(student_id, set())
        if watcher_sid in watchers:
            return False
        watchers.add(watcher_sid)
        return True

    async def unwatch(self, student_id: int, watcher_sid: str) -> None:
        watchers = self._watchers.get(student_id)
        if watchers is not None:
            watchers.discard(watcher_sid)
            if not watchers:
                del self._watchers[student_id]

    async def watchers(self, student_id: int) -> list[str]:
        return sorted(self._watchers.get(student_id, ()))

    async def open_peer(
        self, state: StudentState, watcher_sid: str, audio_only: bool = False
    ) -> Peer:
        assert state.sid is not None
        peer = Peer(
            secrets.token_urlsafe(9), state.id, state.sid, watcher_sid, audio_only, state.code
        )
        self.peers[peer.id] = peer
        self._peers_by_sid.setdefault(peer.student_sid, set()).add(peer.id)
        self._peers_by_sid.setdefault(peer.watcher_sid, set()).add(peer.id)
        return peer

    async def close_peer(self, peer_id: str) -> Peer | None:
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

    async def peer(self, peer_id: str) -> Peer | None:
        return self.peers.get(peer_id)

    async def peers_of(self, sid: str) -> list[Peer]:
        return [self.peers[p] for p in self._peers_by_sid.get(sid, ())]

    async def peers_between(self, student_id: int, watcher_sid: str) -> list[Peer]:
        return [p for p in await self.peers_of(watcher_sid) if p.student_id == student_id]

    async def live_here(self) -> list[StudentState]:
        return [s for s in self.students.values() if s.live]

    async def orphans(self) -> list[Orphans]:
        return []

    async def take_reaped(self) -> bool:
        return False

    def limiter(self, name: str, rate: float, burst: float) -> Limiter:
        return MemoryLimiter(rate, burst)


def apply_change(
    current: StudentState,
    process: str,
    code: str | None,
    sid: str | type[...] | None,
    live: bool | None,
    background: bool | None,
) -> StudentState:
    """The one rule for a change: going offline clears live and background; `since`
    moves with the visible state."""
    new = current
    if code is not None:
        new = replace(new, code=code)
    if sid is not ...:
        assert sid is None or isinstance(sid, str)
        new = replace(new, sid=sid, owner=process if sid is not None else None)
        if sid is None:
            new = replace(new, live=False, background=False)
    if live is not None and new.sid is not None:
        new = replace(new, live=live)
    if background is not None and new.sid is not None:
        new = replace(new, background=background)
    if new.state != current.state:
        new = replace(new, since=time.time())
    return new
