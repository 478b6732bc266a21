"""Presence shared by every server process through Redis.

Keys (all under one prefix):
- `student:<id>` hash: exam, code, sid ("" when offline), owner (the process holding
  the device's socket), live, bg, since; changed only by a compare-and-set script on sid;
- `watchers:<id>` hash: watcher socket id -> the process holding it;
- `peer:<id>` hash and `sidpeers:<sid>` set: the peer connections and who is in them;
- `procs` set and `alive:<proc>` (expiring): which processes are running;
- `proc:<proc>:students`, `proc:<proc>:watching` sets: what a process would leave behind;
- `limit:<name>:<key>` hash: shared token buckets (failed code guesses, API calls).

A process that stops refreshing `alive:<proc>` is dead after `DEAD_AFTER` seconds; the
first survivor to claim it ends its students' sessions and drops its watchers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from typing import Any

from redis.asyncio import BlockingConnectionPool, Redis
from redis.exceptions import RedisError

from rtcproctor.signaling.presence import (
    Limiter,
    Orphans,
    Peer,
    PresenceUnavailable,
    StudentState,
    process_id,
)

log = logging.getLogger(__name__)

HEARTBEAT = 2.0
DEAD_AFTER = 12
# Commands wait for a free connection instead of failing when a burst (a thousand pages
# disconnecting at once) wants more than the pool holds.
POOL_SIZE = 64
POOL_WAIT = 30.0

# ARGV: expect_sid, now, process, then field/value pairs; returns the hash or nil.
UPDATE = """
local h = KEYS[1]
local cur = redis.call('HGET', h, 'sid')
local exists = cur ~= false
if not exists then cur = '' end
if cur ~= ARGV[1] then return nil end
local changes = {}
for i = 4, #ARGV, 2 do changes[ARGV[i]] = ARGV[i + 1] end
if not exists and (changes['exam'] == nil or changes['code'] == nil) then return nil end
local function visible()
  local sid = redis.call('HGET', h, 'sid') or ''
  if sid == '' then return 'offline' end
  if redis.call('HGET', h, 'live') == '1' then return 'live' end
  return 'connected'
end
local before = visible()
if not exists then redis.call('HSET', h, 'sid', '', 'live', '0', 'bg', '0', 'owner', '') end
local sid = changes['sid']
if sid ~= nil then
  redis.call('HSET', h, 'sid', sid)
  if sid == '' then
    redis.call('HSET', h, 'owner', '', 'live', '0', 'bg', '0')
  else
    redis.call('HSET', h, 'owner', ARGV[3])
  end
end
for k, v in pairs(changes) do
  if k == 'sid' then
  elseif (k == 'live' or k == 'bg') then
    if (redis.call('HGET', h, 'sid') or '') ~= '' then redis.call('HSET', h, k, v) end
  else
    redis.call('HSET', h, k, v)
  end
end
if visible() ~= before or redis.call('HEXISTS', h, 'since') == 0 then
  redis.call('HSET', h, 'since', ARGV[2])
end
return redis.call('HGETALL', h)
"""

# ARGV: rate, burst, cost (0 = only look), now; returns the wait in seconds as a string.
BUCKET = """
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local cost, now = tonumber(ARGV[3]), tonumber(ARGV[4])
local tokens = tonumber(redis.call('HGET', KEYS[1], 't') or burst)
local stamp = tonumber(redis.call('HGET', KEYS[1], 's') or now)
tokens = math.min(burst, tokens + math.max(0, now - stamp) * rate)
local wait = 0
if cost > 0 then
  if tokens >= cost then tokens = tokens - cost else wait = (cost - tokens) / rate end
elseif tokens < 1 then
  wait = (1 - tokens) / rate
end
redis.call('HSET', KEYS[1], 't', tostring(tokens), 's', tostring(now))
redis.call('EXPIRE', KEYS[1], math.ceil(burst / rate) + 60)
return tostring(wait)
"""

# KEYS: peer hash, the two sidpeers sets; returns the peer hash once, then nil.
CLOSE_PEER = """
local peer = redis.call('HGETALL', KEYS[1])
if #peer == 0 then return nil end
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[2], ARGV[1])
redis.call('SREM', KEYS[3], ARGV[1])
return peer
"""


def _hash(items: list[Any] | dict[str, str] | None) -> dict[str, str]:
    if not items:
        return {}
    if isinstance(items, dict):
        return items
    return {items[i]: items[i + 1] for i in range(0, len(items), 2)}


class RedisLimiter:
    def __init__(self, presence: RedisPresence, name: str, rate: float, burst: float) -> None:
        self._presence = presence
        self._prefix = f"{presence.prefix}limit:{name}:"
        self.rate = rate
        self.burst = burst

    async def _run(self, key: str, cost: float) -> float:
        wait = await self._presence._bucket(
            keys=[self._prefix + key[:200]],
            args=[self.rate, self.burst, cost, time.time()],
        )
        return float(wait)

    async def wait(self, key: str) -> float:
        return await self._run(key, 0)

    async def spend(self, key: str, cost: float = 1.0) -> float:
        return await self._run(key, cost)


class RedisPresence:
    def __init__(self, url: str, prefix: str = "rtcproctor:") -> None:
        self.redis: Redis = Redis(
            connection_pool=BlockingConnectionPool.from_url(
                url, max_connections=POOL_SIZE, timeout=POOL_WAIT, decode_responses=True
            )
        )
        # The heartbeat has a connection of its own, so a busy pool never makes a
        # living process look dead.
        self._heartbeat_redis: Redis = Redis.from_url(url, decode_responses=True)
        self.reaped = False
        self._stopping = asyncio.Event()
        where = self.redis.connection_pool.connection_kwargs
        self.where = f"{where.get('host', where.get('path', '?'))}:{where.get('port', '')}"
        self.prefix = prefix
        self.process = process_id()
        self._update = self.redis.register_script(UPDATE)
        self._bucket = self.redis.register_script(BUCKET)
        self._close_peer = self.redis.register_script(CLOSE_PEER)
        self._alive: set[str] = {self.process}
        self._heartbeat: asyncio.Task[None] | None = None

    def _k(self, *parts: object) -> str:
        return self.prefix + ":".join(str(p) for p in parts)

    # Lifecycle

    async def start(self) -> None:
        try:
            await self.redis.sadd(self._k("procs"), self.process)
            await self._beat()
        except RedisError as exc:
            raise PresenceUnavailable(
                f"cannot reach Redis at {self.where} (RTCPROCTOR_REDIS_URL): {exc}"
            ) from exc
        self._heartbeat = asyncio.create_task(self._beat_forever())
        log.info("presence in Redis as process %s", self.process)

    async def _beat(self) -> None:
        """Say this process is alive, and learn which others are."""
        redis = self._heartbeat_redis
        await redis.set(self._k("alive", self.process), "1", ex=DEAD_AFTER)
        procs = await redis.smembers(self._k("procs"))
        if self.process not in procs:
            # Another process took this one for dead (it missed heartbeats) and ended
            # its sessions: rejoin, and let the server reconnect its pages.
            log.error("process %s was taken for dead by another process", self.process)
            await redis.sadd(self._k("procs"), self.process)
            self.reaped = True
        alive = {self.process}
        for proc in procs:
            if await redis.exists(self._k("alive", proc)):
                alive.add(proc)
        self._alive = alive

    async def take_reaped(self) -> bool:
        reaped, self.reaped = self.reaped, False
        return reaped

    async def _beat_forever(self) -> None:
        # Stopped by an event, never cancelled: redis-py can hang on a command that is
        # cancelled half-way.
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), HEARTBEAT)
                return
            try:
                await self._beat()
            except Exception as exc:  # Redis restarting: keep beating
                log.warning("presence heartbeat failed: %s", exc)

    async def close(self) -> None:
        if self._heartbeat is not None:
            self._stopping.set()
            await self._heartbeat
        # A clean stop lets the others reap at once instead of after DEAD_AFTER.
        with contextlib.suppress(Exception):
            await self._heartbeat_redis.delete(self._k("alive", self.process))
        await self._heartbeat_redis.aclose()
        await self.redis.aclose()
        await self.redis.connection_pool.disconnect()

    # Students

    def _state(self, student_id: int, h: dict[str, str]) -> StudentState | None:
        if not h:
            return None
        return StudentState(
            id=student_id,
            exam_id=h.get("exam", ""),
            code=h.get("code", ""),
            sid=h.get("sid") or None,
            owner=h.get("owner") or None,
            live=h.get("live") == "1",
            background=h.get("bg") == "1",
            since=float(h.get("since") or 0),
        )

    async def student(self, student_id: int) -> StudentState | None:
        return self._state(student_id, await self.redis.hgetall(self._k("student", student_id)))

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
        changes: list[str] = []
        if exam_id is not None:
            changes += ["exam", exam_id]
        if code is not None:
            changes += ["code", code]
        if sid is not ...:
            assert sid is None or isinstance(sid, str)
            changes += ["sid", sid or ""]
        if live is not None:
            changes += ["live", "1" if live else "0"]
        if background is not None:
            changes += ["bg", "1" if background else "0"]
        before = None
        if sid is not ... and expect_sid is not None:
            before = await self.student(student_id)
        result = await self._update(
            keys=[self._k("student", student_id)],
            args=[expect_sid or "", repr(time.time()), self.process, *changes],
        )
        state = self._state(student_id, _hash(result))
        if state is None:
            return None
        if sid is not ...:
            if before is not None and before.owner:
                await self.redis.srem(self._k("proc", before.owner, "students"), student_id)
            if state.sid is not None:
                await self.redis.sadd(self._k("proc", self.process, "students"), student_id)
        return state

    async def forget_if_idle(self, student_id: int) -> None:
        key = self._k("student", student_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            with contextlib.suppress(Exception):
                await pipe.watch(key, self._k("watchers", student_id))
                sid = await pipe.hget(key, "sid")
                watchers = await pipe.hlen(self._k("watchers", student_id))
                if sid or watchers:
                    return
                pipe.multi()
                pipe.delete(key)
                await pipe.execute()

    # Watchers

    async def watch(self, student_id: int, watcher_sid: str) -> bool:
        added = await self.redis.hset(self._k("watchers", student_id), watcher_sid, self.process)
        await self.redis.sadd(
            self._k("proc", self.process, "watching"), f"{student_id}|{watcher_sid}"
        )
        return bool(added)

    async def unwatch(self, student_id: int, watcher_sid: str) -> None:
        await self.redis.hdel(self._k("watchers", student_id), watcher_sid)
        await self.redis.srem(
            self._k("proc", self.process, "watching"), f"{student_id}|{watcher_sid}"
        )

    async def watchers(self, student_id: int) -> list[str]:
        entries = await self.redis.hgetall(self._k("watchers", student_id))
        for proc in set(entries.values()) - self._alive:
            # A process started since the last heartbeat: ask now, or its proctors would
            # miss a student going live in its first seconds (no peer ever requested).
            if await self.redis.exists(self._k("alive", proc)):
                self._alive.add(proc)
        return sorted(sid for sid, proc in entries.items() if proc in self._alive)

    # Peers

    async def open_peer(
        self, state: StudentState, watcher_sid: str, audio_only: bool = False
    ) -> Peer:
        assert state.sid is not None
        peer = Peer(
            secrets.token_urlsafe(9), state.id, state.sid, watcher_sid, audio_only, state.code
        )
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(
                self._k("peer", peer.id),
                mapping={
                    "student": str(peer.student_id),
                    "ssid": peer.student_sid,
                    "wsid": peer.watcher_sid,
                    "audio": "1" if audio_only else "0",
                    "code": peer.code,
                },
            )
            pipe.sadd(self._k("sidpeers", peer.student_sid), peer.id)
            pipe.sadd(self._k("sidpeers", peer.watcher_sid), peer.id)
            await pipe.execute()
        return peer

    @staticmethod
    def _peer(peer_id: str, h: dict[str, str]) -> Peer | None:
        if not h:
            return None
        return Peer(
            peer_id,
            int(h["student"]),
            h["ssid"],
            h["wsid"],
            h.get("audio") == "1",
            h.get("code", ""),
        )

    async def close_peer(self, peer_id: str) -> Peer | None:
        h = _hash(await self.redis.hgetall(self._k("peer", peer_id)))
        peer = self._peer(peer_id, h)
        if peer is None:
            return None
        closed = await self._close_peer(
            keys=[
                self._k("peer", peer_id),
                self._k("sidpeers", peer.student_sid),
                self._k("sidpeers", peer.watcher_sid),
            ],
            args=[peer_id],
        )
        return peer if closed else None

    async def peer(self, peer_id: str) -> Peer | None:
        return self._peer(peer_id, await self.redis.hgetall(self._k("peer", peer_id)))

    async def peers_of(self, sid: str) -> list[Peer]:
        ids = sorted(await self.redis.smembers(self._k("sidpeers", sid)))
        peers = []
        for peer_id in ids:
            peer = await self.peer(peer_id)
            if peer is None:
                await self.redis.srem(self._k("sidpeers", sid), peer_id)
            else:
                peers.append(peer)
        return peers

    async def peers_between(self, student_id: int, watcher_sid: str) -> list[Peer]:
        return [p for p in await self.peers_of(watcher_sid) if p.student_id == student_id]

    # Processes

    async def live_here(self) -> list[StudentState]:
        ids = await self.redis.smembers(self._k("proc", self.process, "students"))
        states = [await self.student(int(i)) for i in ids]
        return [s for s in states if s is not None and s.live and s.owner == self.process]

    async def orphans(self) -> list[Orphans]:
        found = []
        for proc in await self.redis.smembers(self._k("procs")):
            if proc == self.process or await self.redis.exists(self._k("alive", proc)):
                continue
            if not await self.redis.set(self._k("reaping", proc), self.process, nx=True, ex=60):
                continue
            ids = await self.redis.smembers(self._k("proc", proc, "students"))
            states = [await self.student(int(i)) for i in ids]
            watching = await self.redis.smembers(self._k("proc", proc, "watching"))
            watchers = []
            for entry in watching:
                student_id, _, sid = entry.partition("|")
                watchers.append((int(student_id), sid))
            found.append(
                Orphans(
                    proc,
                    [s for s in states if s is not None and s.owner == proc],
                    sorted(watchers),
                )
            )
            await self.redis.delete(
                self._k("proc", proc, "students"), self._k("proc", proc, "watching")
            )
            await self.redis.srem(self._k("procs"), proc)
            log.warning("process %s is gone: taking over its %d students", proc, len(states))
        return found

    def limiter(self, name: str, rate: float, burst: float) -> Limiter:
        return RedisLimiter(self, name, rate, burst)
