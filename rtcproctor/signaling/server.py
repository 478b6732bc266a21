"""Socket.IO handlers: thin checks over presence and the store, every error answered in the ack."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import socketio

from rtcproctor.codes import CodeError, check_external_code, normalize_code
from rtcproctor.config import Settings
from rtcproctor.signaling import validation as v
from rtcproctor.signaling.ice import IceServers
from rtcproctor.signaling.presence import (
    Client,
    MemoryPresence,
    Peer,
    Presence,
    StudentState,
    Watched,
)
from rtcproctor.signaling.ratelimit import TokenBucket
from rtcproctor.signaling.validation import Rejected
from rtcproctor.store import (
    AlertRecord,
    AttentionRecord,
    CodeInUse,
    MessageRecord,
    Store,
    StudentRecord,
)

if TYPE_CHECKING:
    from rtcproctor.metrics import Metrics
    from rtcproctor.shadow import ShadowAlert, ShadowProctor

log = logging.getLogger(__name__)

Handler = Callable[["SignalingServer", Client, dict[str, Any]], Awaitable[dict[str, Any] | None]]

EVENT_RATE, EVENT_BURST = 20.0, 60.0
CHAT_RATE, CHAT_BURST = 2.0, 10.0
# Ten wrong codes at once, then one every six seconds: guessing a 60-bit code is hopeless.
GUESS_RATE, GUESS_BURST = 1 / 6, 10.0
TYPO_COST = 0.2


SHADOW = "shadow:"
MAINTENANCE_INTERVAL = 2.0


def room(student_id: int) -> str:
    return f"s{student_id}"


def alert_room(student_id: int) -> str:
    """The watchers of a student who gave the exam's proctor key: only they get alerts."""
    return f"a{student_id}"


def shadow_watcher(student_id: int) -> str:
    """The shadow proctor's place among a student's watchers: not a socket, never shown."""
    return f"{SHADOW}{student_id}"


def alert_json(alert: AlertRecord, code: str) -> dict[str, Any]:
    return {
        "id": alert.id,
        "code": code,
        "type": alert.type,
        "start": alert.started_at,
        "end": alert.ended_at,
        "confidence": round(alert.confidence, 3),
        "status": alert.status,
        "evidence": f"/api/alerts/{alert.id}/evidence" if alert.evidence else None,
    }


def message_json(msg: MessageRecord, code: str) -> dict[str, Any]:
    return {"id": msg.id, "code": code, "from": msg.sender, "text": msg.text, "ts": msg.at}


def attention_json(att: AttentionRecord, code: str) -> dict[str, Any]:
    return {
        "id": att.id,
        "code": code,
        "from": att.sender,
        "ts": att.at,
        "resolved": att.resolved_at is not None,
    }


class SignalingServer:
    """Pairs each student with the proctors watching their code and relays between them.

    Connections (`Client`) belong to this process; everything other processes must see
    (who is live, who watches whom, the peers, guess limits) goes through `presence`.
    Messages reach sockets on any process through the Socket.IO manager (Redis when
    several processes run): `room(id)` holds a student's watchers, `alert_room(id)` only
    those who gave the exam's proctor key.
    """

    metrics: Metrics | None = None  # set by the app: counts events and alerts

    def __init__(
        self,
        sio: socketio.AsyncServer,
        store: Store,
        settings: Settings,
        shadow: ShadowProctor | None = None,
        presence: Presence | None = None,
    ) -> None:
        self.sio = sio
        self.store = store
        self.settings = settings
        self.shadow = shadow
        self.evidence_dir = settings.data_dir / "evidence"
        self._alert_ids: dict[tuple[str, int], int] = {}
        self.ice = IceServers.from_settings(settings)
        self.presence: Presence = presence or MemoryPresence()
        self.clients: dict[str, Client] = {}
        self.guesses = self.presence.limiter("guess", GUESS_RATE, GUESS_BURST)
        self._buckets: dict[str, tuple[TokenBucket, TokenBucket]] = {}
        self._live_here: set[int] = set()
        self._maintenance: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        sio.on("connect", self._connect)
        sio.on("disconnect", self._disconnect)
        sio.on("*", self._unknown_event)
        for event, fn in self._handlers().items():
            sio.on(event, self._wrap(event, fn))

    def _handlers(self) -> dict[str, Handler]:
        cls = type(self)
        return {
            "student:join": cls.student_join,
            "student:live": cls.student_live,
            "student:visibility": cls.student_visibility,
            "proctor:watch": cls.proctor_watch,
            "proctor:unwatch": cls.proctor_unwatch,
            "proctor:register": cls.proctor_register,
            "peer:renew": cls.peer_renew,
            "signal": cls.signal,
            "chat:send": cls.chat_send,
            "attention:raise": cls.attention_raise,
            "attention:resolve": cls.attention_resolve,
            "alert:review": cls.alert_review,
            "voice:reenroll": cls.voice_reenroll,
        }

    def _wrap(self, event: str, fn: Handler) -> Callable[..., Awaitable[dict[str, Any]]]:
        @functools.wraps(fn)
        async def handler(sid: str, *args: Any) -> dict[str, Any]:
            try:
                client = self.clients.get(sid)
                if client is None:
                    raise Rejected("not_joined", "this connection is closing")
                wait = self._buckets[sid][0].take()
                if wait:
                    raise Rejected("rate_limited", "too many messages", retry_after=round(wait, 2))
                if len(args) > 1:
                    raise v.invalid("send one object per event")
                result = await fn(self, client, v.payload(args[0] if args else None))
                ack = {"ok": True, **(result or {})}
            except Rejected as rejected:
                ack = rejected.as_ack()
            except Exception:
                log.exception("handler for %r failed", event)
                ack = {"ok": False, "error": {"code": "internal", "message": "server error"}}
            if self.metrics is not None:
                self.metrics.event(event, "ok" if ack["ok"] else ack["error"]["code"])
            return ack

        return handler

    async def _unknown_event(self, event: str, sid: str, *args: Any) -> dict[str, Any]:
        return Rejected("invalid", f"unknown event {str(event)[:40]!r}").as_ack()

    # Lifecycle

    async def start(self) -> None:
        await self.presence.start()
        self._maintenance = asyncio.create_task(self._maintain_forever())

    async def stop(self) -> None:
        if self._maintenance is not None:
            self._stopping.set()
            await self._maintenance
        await self.presence.close()

    async def _maintain_forever(self) -> None:
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), MAINTENANCE_INTERVAL)
                return
            try:
                await self.maintain()
            except Exception:
                log.exception("presence maintenance failed")

    async def maintain(self) -> None:
        """Take over what dead processes left, and drop hidden peers closed elsewhere."""
        if await self.presence.take_reaped():
            # Our sessions were ended for us: pages reconnect and join again, consistently.
            for sid in list(self.clients):
                await self.sio.disconnect(sid)
        for orphans in await self.presence.orphans():
            for state in orphans.students:
                await self._end_session(state, "server_lost", gone=state.sid)
            for student_id, sid in orphans.watchers:
                await self.presence.unwatch(student_id, sid)
                await self._close_peers(
                    await self.presence.peers_between(student_id, sid), gone=sid
                )
                await self.presence.forget_if_idle(student_id)
        if self.shadow is not None:
            for peer_id in list(self.shadow.peers):
                if await self.presence.peer(peer_id) is None:
                    await self.shadow.close_peer(peer_id)

    # Connections

    async def _connect(self, sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        self.clients[sid] = Client(sid=sid, address=self._address(environ))
        self._buckets[sid] = (
            TokenBucket(EVENT_RATE, EVENT_BURST),
            TokenBucket(CHAT_RATE, CHAT_BURST),
        )

    def _address(self, environ: dict[str, Any]) -> str:
        request = environ.get("aiohttp.request")
        if self.settings.trust_proxy:
            forwarded = environ.get("HTTP_X_FORWARDED_FOR", "")
            if forwarded:
                return forwarded.split(",")[0].strip()
        if request is not None and request.remote:
            return str(request.remote)
        return str(environ.get("REMOTE_ADDR", "unknown"))

    async def _disconnect(self, sid: str, *_reason: Any) -> None:
        client = self.clients.pop(sid, None)
        self._buckets.pop(sid, None)
        if client is None:
            return
        try:
            if client.student_id is not None:
                state = await self.presence.student(client.student_id)
                if state is not None and state.sid == sid:
                    await self._end_session(state, "disconnected", gone=sid)
            for student_id in list(client.watching):
                await self._stop_watching(client, student_id, gone=True)
        except Exception:
            log.exception("cleanup after %s failed", sid)

    # Shared steps

    async def _lookup(self, client: Client, raw: str) -> tuple[str, StudentRecord]:
        wait = await self.guesses.wait(client.address)
        if wait:
            raise self._limited(wait)
        try:
            code = normalize_code(raw)
        except CodeError as exc:
            await self.guesses.spend(client.address)
            raise Rejected("unknown_code", str(exc)) from exc
        record = await self.store.student_by_code(code)
        if record is None:
            await self.guesses.spend(client.address)
            raise Rejected("unknown_code", "no student has this code; check it and try again")
        return code, record

    @staticmethod
    def _limited(wait: float) -> Rejected:
        seconds = math.ceil(wait)
        return Rejected(
            "rate_limited",
            f"too many wrong codes from this address; try again in {seconds} s",
            retry_after=seconds,
        )

    async def _own_state(self, client: Client) -> StudentState:
        state = None
        if client.student_id is not None:
            state = await self.presence.student(client.student_id)
        if state is None or state.sid != client.sid:
            raise Rejected("not_joined", "join with a stream code first")
        return state

    def _watched_id(self, client: Client, data: dict[str, Any]) -> tuple[int, Watched]:
        raw = v.text(data, "code", max_len=64)
        assert raw is not None
        try:
            code = normalize_code(raw)
        except CodeError as exc:
            raise Rejected("not_watching", str(exc)) from exc
        for student_id, watched in client.watching.items():
            if watched.code == code:
                return student_id, watched
        raise Rejected("not_watching", "this page is not watching that student")

    async def _watched(self, client: Client, data: dict[str, Any]) -> StudentState:
        return await self._state_of(*self._watched_id(client, data))

    async def _state_of(self, student_id: int, watched: Watched) -> StudentState:
        state = await self.presence.student(student_id)
        if state is None:
            return StudentState(id=student_id, exam_id=watched.exam_id, code=watched.code)
        return state

    async def _status(self, state: StudentState) -> None:
        await self.sio.emit("student:status", state.status(), room=room(state.id))

    async def _close_peers(self, peers: list[Peer], gone: str | None = None) -> None:
        for peer in peers:
            if await self.presence.close_peer(peer.id) is None:
                continue
            if peer.student_sid != gone:
                await self.sio.emit("peer:close", {"peer": peer.id}, to=peer.student_sid)
            if peer.watcher_sid.startswith(SHADOW):
                # A hidden peer held by another process is dropped by that process's
                # maintenance once it sees the peer gone from presence.
                if self.shadow is not None and peer.id in self.shadow.peers:
                    await self.shadow.close_peer(peer.id)
            elif peer.watcher_sid != gone:
                await self.sio.emit(
                    "peer:close", {"code": peer.code, "peer": peer.id}, to=peer.watcher_sid
                )

    async def _request_peer(
        self, state: StudentState, watcher_sid: str, audio_only: bool = False
    ) -> None:
        """Ask the live student for a fresh peer connection to this watcher."""
        await self._close_peers(await self.presence.peers_between(state.id, watcher_sid))
        peer = await self.presence.open_peer(state, watcher_sid, audio_only=audio_only)
        await self.sio.emit(
            "peer:request",
            {"peer": peer.id, **self.ice.rtc_configuration(), "audioOnly": peer.audio_only},
            to=state.sid,
        )

    async def _end_session(self, state: StudentState, reason: str, gone: str | None = None) -> None:
        """The student's current device stops streaming (left, replaced or disconnected)."""
        assert state.sid is not None
        await self._close_peers(await self.presence.peers_of(state.sid), gone=gone)
        ended = await self.presence.update(state.id, state.sid, sid=None)
        if ended is None:
            return
        self._live_here.discard(state.id)
        await self.store.record_event(state.id, "offline", reason)
        await self._status(ended)
        await self.presence.forget_if_idle(state.id)

    async def _stop_watching(self, client: Client, student_id: int, gone: bool = False) -> None:
        client.watching.pop(student_id, None)
        await self.presence.unwatch(student_id, client.sid)
        await self._close_peers(
            await self.presence.peers_between(student_id, client.sid),
            gone=client.sid if gone else None,
        )
        if not gone:
            await self.sio.leave_room(client.sid, room(student_id))
            await self.sio.leave_room(client.sid, alert_room(student_id))
        await self.presence.forget_if_idle(student_id)

    # Student events

    async def student_join(self, client: Client, data: dict[str, Any]) -> dict[str, Any]:
        raw = v.text(data, "code", max_len=64)
        assert raw is not None
        if client.watching:
            raise v.invalid("this connection is watching students; a student page needs its own")
        code, record = await self._lookup(client, raw)
        if client.student_id is not None and client.student_id != record.id:
            previous = await self.presence.student(client.student_id)
            if previous is not None and previous.sid == client.sid:
                await self._end_session(previous, "left")
        state = await self._claim(client, record, code)
        client.student_id = record.id
        chat = await self.store.messages(record.id)
        return {
            "student": {"name": record.name},
            "code": code,
            **self.ice.rtc_configuration(),
            "chat": [message_json(m, code) for m in chat],
            "video": self.settings.video.as_json(),
            "state": state.state,
        }

    async def _claim(self, client: Client, record: StudentRecord, code: str) -> StudentState:
        """Make this connection the student's device, replacing any other one."""
        for _ in range(10):
            current = await self.presence.student(record.id)
            if current is not None and current.sid == client.sid:
                return current
            if current is not None and current.sid is not None:
                old_sid = current.sid
                await self._end_session(current, "replaced")
                old = self.clients.get(old_sid)
                if old is not None:
                    old.student_id = None
                await self.sio.emit("student:replaced", {}, to=old_sid)
                continue
            state = await self.presence.update(
                record.id, None, exam_id=record.exam_id, code=code, sid=client.sid, live=False
            )
            if state is not None:
                await self.store.record_event(record.id, "connected")
                await self._status(state)
                return state
        raise Rejected("busy", "another device is taking this code right now; try again")

    async def student_live(self, client: Client, data: dict[str, Any]) -> None:
        state = await self._own_state(client)
        live = v.boolean(data, "live")
        if state.live == live:
            return
        changed = await self.presence.update(state.id, client.sid, live=live)
        if changed is None:
            raise Rejected("not_joined", "another device took this code")
        if live:
            self._live_here.add(state.id)
        else:
            self._live_here.discard(state.id)
        await self.store.record_event(state.id, "live" if live else "stopped")
        await self._status(changed)
        if live:
            for watcher in await self.presence.watchers(state.id):
                if not watcher.startswith(SHADOW):
                    await self._request_peer(changed, watcher)
            if self.shadow is not None and self.shadow.ready:
                await self._request_peer(changed, shadow_watcher(state.id), audio_only=True)
        else:
            await self._close_peers(await self.presence.peers_of(client.sid))

    async def student_visibility(self, client: Client, data: dict[str, Any]) -> None:
        state = await self._own_state(client)
        hidden = v.boolean(data, "hidden")
        if state.background == hidden:
            return
        changed = await self.presence.update(state.id, client.sid, background=hidden)
        if changed is None:
            raise Rejected("not_joined", "another device took this code")
        await self.store.record_event(state.id, "background" if hidden else "foreground")
        await self._status(changed)

    # Proctor events

    async def proctor_watch(self, client: Client, data: dict[str, Any]) -> dict[str, Any]:
        raws = v.text_list(data, "codes", max_items=v.MAX_CODES, max_len=64)
        key = v.text(data, "key", max_len=128, required=False)
        if client.student_id is not None:
            raise v.invalid("this connection streams as a student; a monitor page needs its own")
        if key:
            await self._authorize(client, key)
        errors: list[dict[str, Any]] = []
        wanted: list[tuple[str, str]] = []
        for raw in raws:
            try:
                wanted.append((raw, normalize_code(raw)))
            except CodeError as exc:
                errors.append({"code": raw, "error": {"code": "invalid", "message": str(exc)}})
        wait = await self.guesses.wait(client.address)
        if wait:
            raise self._limited(wait)
        found = await self.store.students_by_codes(code for _, code in wanted)
        students: list[dict[str, Any]] = []
        authorized: dict[str, StudentRecord] = {}
        limited = False
        for raw, code in wanted:
            record = found.get(code)
            if record is None or limited:
                # A proctor with a valid key mistyping a code is not guessing: it costs less.
                cost = TYPO_COST if client.authorized_exams else 1.0
                if not limited and await self.guesses.spend(client.address, cost) == 0:
                    error = Rejected("unknown_code", "no student has this code")
                else:
                    limited = True
                    error = self._limited(await self.guesses.wait(client.address) or 1)
                errors.append({"code": raw, "error": error.as_error()})
                continue
            state = await self._watch(client, record, code)
            students.append({**state.status(), "name": record.name})
            if record.exam_id in client.authorized_exams:
                authorized[code] = record
        answer: dict[str, Any] = {
            "students": students,
            "errors": errors,
            **self.ice.rtc_configuration(),
        }
        if key:
            answer["history"] = await self._histories(authorized)
        return answer

    async def _watch(self, client: Client, record: StudentRecord, code: str) -> StudentState:
        state = await self.presence.student(record.id)
        if state is None:
            state = await self.presence.update(
                record.id, None, exam_id=record.exam_id, code=code
            ) or await self.presence.student(record.id)
        assert state is not None
        if record.id not in client.watching:
            client.watching[record.id] = Watched(code=code, exam_id=record.exam_id)
            await self.presence.watch(record.id, client.sid)
            await self.sio.enter_room(client.sid, room(record.id))
            if record.exam_id in client.authorized_exams:
                await self.sio.enter_room(client.sid, alert_room(record.id))
            if state.live:
                await self._request_peer(state, client.sid)
        elif record.exam_id in client.authorized_exams:
            await self.sio.enter_room(client.sid, alert_room(record.id))
        return state

    async def _authorize(self, client: Client, key: str) -> str:
        exam = await self.store.exam_by_key(key)
        if exam is None:
            wait = await self.guesses.spend(client.address)
            if wait:
                raise self._limited(wait)
            raise Rejected("unauthorized", "this proctor key is not valid")
        client.authorized_exams.add(exam.id)
        return exam.id

    async def _histories(self, records: dict[str, StudentRecord]) -> dict[str, Any]:
        """Chat, attention and alerts of every watched student, three queries in all."""
        ids = [record.id for record in records.values()]
        chat = await self.store.messages_of(ids)
        attention = await self.store.attention_of(ids)
        alerts = await self.store.alerts_of(ids)
        return {
            code: {
                "chat": [message_json(m, code) for m in chat[record.id]],
                "attention": [attention_json(a, code) for a in attention[record.id]],
                "alerts": [alert_json(a, code) for a in alerts[record.id]],
            }
            for code, record in records.items()
        }

    async def proctor_unwatch(self, client: Client, data: dict[str, Any]) -> None:
        raws = v.text_list(data, "codes", max_items=v.MAX_CODES, max_len=64)
        for raw in raws:
            try:
                student_id, _ = self._watched_id(client, {"code": raw})
            except Rejected:
                continue
            await self._stop_watching(client, student_id)

    async def proctor_register(self, client: Client, data: dict[str, Any]) -> dict[str, Any]:
        key = v.text(data, "key", max_len=128)
        entries = data.get("students")
        if not isinstance(entries, list):
            raise v.invalid("'students' must be a list of {name, code}")
        if len(entries) > v.MAX_CODES:
            raise Rejected("too_large", f"at most {v.MAX_CODES} students at once")
        assert key is not None
        exam_id = await self._authorize(client, key)
        registered: list[dict[str, str]] = []
        errors: list[dict[str, Any]] = []
        for entry in entries:
            try:
                if not isinstance(entry, dict):
                    raise v.invalid("each student must be {name, code}")
                name = v.text(entry, "name", max_len=v.MAX_NAME)
                raw = v.text(entry, "code", max_len=64)
                assert name is not None and raw is not None
                try:
                    code = check_external_code(raw)
                except CodeError as exc:
                    raise Rejected("weak_code", str(exc)) from exc
                try:
                    await self.store.register_student(exam_id, name, code)
                except CodeInUse as exc:
                    raise Rejected("code_in_use", str(exc)) from exc
                registered.append({"name": name, "code": code})
            except Rejected as rejected:
                raw_code = entry.get("code") if isinstance(entry, dict) else None
                errors.append(
                    {
                        "code": raw_code if isinstance(raw_code, str) else None,
                        "error": rejected.as_error(),
                    }
                )
        return {"exam": exam_id, "registered": registered, "errors": errors}

    async def peer_renew(self, client: Client, data: dict[str, Any]) -> None:
        state = await self._watched(client, data)
        if not state.live:
            raise Rejected("not_live", "that student is not live")
        await self._request_peer(state, client.sid)

    # Both sides

    async def signal(self, client: Client, data: dict[str, Any]) -> None:
        peer_id = v.text(data, "peer", max_len=64)
        peer = await self.presence.peer(peer_id or "")
        if peer is None or client.sid not in (peer.student_sid, peer.watcher_sid):
            raise Rejected("unknown_peer", "that peer connection is closed")
        from_student = client.sid == peer.student_sid
        description = v.description(data, "offer" if from_student else "answer")
        has_candidate, candidate = v.candidate(data)
        if description is None and not has_candidate:
            raise v.invalid("a signal carries a description or a candidate")
        out: dict[str, Any] = {"peer": peer.id}
        if description is not None:
            out["description"] = description
        if has_candidate:
            out["candidate"] = candidate
        if from_student and peer.watcher_sid.startswith(SHADOW):
            await self._signal_shadow(peer, description, has_candidate, candidate)
        elif from_student:
            out["code"] = peer.code
            await self.sio.emit("signal", out, to=peer.watcher_sid)
        else:
            await self.sio.emit("signal", out, to=peer.student_sid)

    async def _signal_shadow(
        self,
        peer: Peer,
        description: dict[str, str] | None,
        has_candidate: bool,
        candidate: dict[str, Any] | None,
    ) -> None:
        if self.shadow is None:
            raise Rejected("unknown_peer", "that peer connection is closed")
        if description is not None:
            try:
                answer = await self.shadow.offer(
                    peer.id, peer.student_id, description, self.ice.rtc_configuration("shadow")
                )
            except Exception as exc:
                log.warning("shadow peer %s could not answer: %s", peer.id, exc)
                await self._close_peers([peer])
                raise Rejected("invalid", "the offer could not be answered") from exc
            await self.sio.emit(
                "signal", {"peer": peer.id, "description": answer}, to=peer.student_sid
            )
        if has_candidate:
            await self.shadow.candidate(peer.id, candidate)

    async def attach_shadow_to_live_students(self) -> None:
        """Once the detector is ready, students who went live before it get a hidden peer."""
        for state in await self.presence.live_here():
            await self._request_peer(state, shadow_watcher(state.id), audio_only=True)

    async def shadow_peer_failed(self, peer_id: str) -> None:
        """The hidden peer lost the student: ask the student for a new one if still live."""
        peer = await self.presence.peer(peer_id)
        if peer is None:
            if self.shadow is not None and peer_id in self.shadow.peers:
                await self.shadow.close_peer(peer_id)
            return
        await self._close_peers([peer])
        state = await self.presence.student(peer.student_id)
        if (
            state is not None
            and state.live
            and state.sid == peer.student_sid
            and state.sid in self.clients
            and self.shadow is not None
        ):
            await self._request_peer(state, peer.watcher_sid, audio_only=True)

    async def _conversation(self, client: Client, data: dict[str, Any]) -> tuple[StudentState, str]:
        if client.student_id is not None:
            return await self._own_state(client), "student"
        return await self._watched(client, data), "proctor"

    async def chat_send(self, client: Client, data: dict[str, Any]) -> dict[str, Any]:
        body = v.text(data, "text", max_len=v.MAX_CHAT)
        assert body is not None
        state, sender = await self._conversation(client, data)
        wait = self._buckets[client.sid][1].take()
        if wait:
            raise Rejected(
                "rate_limited", "you are sending messages too fast", retry_after=round(wait, 2)
            )
        message = message_json(await self.store.add_message(state.id, sender, body), state.code)
        event = {"code": state.code, "message": message}
        await self.sio.emit("chat:message", event, room=room(state.id))
        if state.sid is not None:
            await self.sio.emit("chat:message", event, to=state.sid)
        return {"message": message}

    async def attention_raise(self, client: Client, data: dict[str, Any]) -> dict[str, Any]:
        state, sender = await self._conversation(client, data)
        wait = self._buckets[client.sid][1].take()
        if wait:
            raise Rejected(
                "rate_limited", "please wait before asking again", retry_after=round(wait, 2)
            )
        attention = attention_json(await self.store.add_attention(state.id, sender), state.code)
        event = {"code": state.code, "attention": attention}
        await self.sio.emit("attention", event, room=room(state.id), skip_sid=client.sid)
        if sender == "proctor" and state.sid is not None:
            await self.sio.emit("attention", event, to=state.sid)
        return {"attention": attention}

    async def attention_resolve(self, client: Client, data: dict[str, Any]) -> None:
        if client.student_id is not None:
            raise Rejected("invalid", "only a proctor resolves attention requests")
        state = await self._watched(client, data)
        attention_id = v.integer(data, "id")
        if not await self.store.resolve_attention(state.id, attention_id):
            raise Rejected("invalid", "no open attention request with that id")
        await self.sio.emit(
            "attention:resolved",
            {"code": state.code, "id": attention_id},
            room=room(state.id),
        )

    # Voice alerts (proctor key needed)

    async def _authorized(self, client: Client, data: dict[str, Any]) -> StudentState:
        student_id, watched = self._watched_id(client, data)
        if watched.exam_id not in client.authorized_exams:
            raise Rejected("unauthorized", "alerts need this exam's proctor key")
        return await self._state_of(student_id, watched)

    async def alert_review(self, client: Client, data: dict[str, Any]) -> dict[str, Any]:
        state = await self._authorized(client, data)
        alert_id = v.integer(data, "id")
        status = v.text(data, "status", max_len=16)
        if status not in ("open", "reviewed", "dismissed"):
            raise v.invalid("'status' must be open, reviewed or dismissed")
        record = await self.store.set_alert_status(state.id, alert_id, status)
        if record is None:
            raise v.invalid("no alert with that id for that student")
        alert = alert_json(record, state.code)
        await self._push_alert(state, alert, skip=client.sid)
        return {"alert": alert}

    async def voice_reenroll(self, client: Client, data: dict[str, Any]) -> dict[str, Any]:
        state = await self._authorized(client, data)
        if state.sid is not None and state.owner not in (None, self.presence.process):
            raise Rejected(
                "not_live", "that student is connected to another server process; try again"
            )
        if self.shadow is None or not self.shadow.ready:
            raise Rejected("not_live", "voice detection is not running on this server")
        if not self.shadow.re_enroll(state.id):
            raise Rejected("not_live", "that student's audio is not being analysed now")
        await self.store.record_event(state.id, "voice_reenrolled")
        return {}

    async def _push_alert(
        self, state: StudentState, alert: dict[str, Any], skip: str | None = None
    ) -> None:
        await self.sio.emit(
            "alert", {"code": state.code, "alert": alert}, room=alert_room(state.id), skip_sid=skip
        )

    async def on_shadow_alert(self, found: ShadowAlert) -> None:
        """Store first (with its evidence), then push to the proctors holding the key."""
        alert = found.alert
        key = (alert.stream, alert.id)
        directory = self.evidence_dir / str(found.student_id)
        path = await asyncio.to_thread(_write_evidence, alert, directory)
        relative = str(path.relative_to(self.settings.data_dir)) if path else None
        known = self._alert_ids.get(key)
        record = None
        if known is not None:
            record = await self.store.extend_alert(
                known, found.ended_at, float(alert.confidence), relative
            )
        if record is None:
            record = await self.store.add_alert(
                found.student_id,
                str(alert.type),
                found.started_at,
                found.ended_at,
                float(alert.confidence),
                relative,
            )
            self._alert_ids[key] = record.id
            if self.metrics is not None:
                self.metrics.alert(record.type)
        log.info("alert %s for student %s: %s", record.id, found.student_id, record.type)
        state = await self.presence.student(found.student_id)
        if state is not None:
            await self._push_alert(state, alert_json(record, state.code))
        if self.metrics is not None:
            self.metrics.alert_delivered(time.time() - found.updated_at)

    def gauges(self) -> dict[str, float]:
        """This process's share: its connections, its students, its watching pages."""
        return {
            "connections": len(self.clients),
            "students_connected": sum(1 for c in self.clients.values() if c.student_id is not None),
            "students_live": len(self._live_here),
            "watchers": sum(1 for c in self.clients.values() if c.watching),
        }


def _write_evidence(alert: Any, directory: Path) -> Path | None:
    from rtcproctor.voice.alerts import write_evidence

    if alert.evidence is None or len(alert.evidence) == 0:
        return None
    directory.mkdir(parents=True, exist_ok=True)
    return write_evidence(alert, directory, f"{alert.stream.replace(':', '-')}-{alert.id}.wav")
