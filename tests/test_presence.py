"""The presence rules, once in memory and once in a real Redis shared by two "processes"."""

from __future__ import annotations

import asyncio
import secrets

import pytest

from rtcproctor.signaling.presence import MemoryPresence, Presence


@pytest.fixture(params=["memory", "redis"])
async def presence(request):
    if request.param == "memory":
        yield MemoryPresence()
        return
    from rtcproctor.signaling.redis_presence import RedisPresence

    redis_server = request.getfixturevalue("redis_server")
    shared = RedisPresence(redis_server.url, prefix=f"t{secrets.token_hex(4)}:")
    await shared.start()
    yield shared
    await shared.close()


async def test_one_device_per_code_and_since_moves_with_the_state(presence: Presence):
    assert await presence.student(1) is None
    assert await presence.update(1, None, sid="s1") is None, "a new entry needs exam and code"
    offline = await presence.update(1, None, exam_id="e", code="CODE")
    assert offline is not None and offline.state == "offline" and offline.code == "CODE"
    connected = await presence.update(1, None, sid="s1", live=False)
    assert connected is not None and connected.state == "connected"
    assert connected.owner == presence.process
    assert await presence.update(1, None, sid="s2") is None, "s1 holds the code"
    assert await presence.update(1, "s2", live=True) is None
    live = await presence.update(1, "s1", live=True)
    assert live is not None and live.state == "live" and live.since >= connected.since
    hidden = await presence.update(1, "s1", background=True)
    assert hidden is not None and hidden.background and hidden.since == live.since
    gone = await presence.update(1, "s1", sid=None)
    assert gone is not None and gone.state == "offline"
    assert not gone.live and not gone.background and gone.owner is None
    assert await presence.update(1, None, live=True) == gone, "offline cannot be live"
    await presence.forget_if_idle(1)
    assert await presence.student(1) is None


async def test_watchers_keep_a_student_and_peers_close_once(presence: Presence):
    await presence.update(7, None, exam_id="e", code="C7")
    assert await presence.watch(7, "w1") is True
    assert await presence.watch(7, "w1") is False
    assert await presence.watch(7, "w2") is True
    assert await presence.watchers(7) == ["w1", "w2"]
    await presence.forget_if_idle(7)
    assert await presence.student(7) is not None, "watched students are remembered"
    state = await presence.update(7, None, sid="s7", live=True)
    assert state is not None
    peer = await presence.open_peer(state, "w1")
    audio = await presence.open_peer(state, "shadow:7", audio_only=True)
    assert await presence.peer(peer.id) == peer
    assert {p.id for p in await presence.peers_of("s7")} == {peer.id, audio.id}
    assert await presence.peers_between(7, "w1") == [peer]
    assert await presence.peers_between(8, "w1") == []
    closed = await asyncio.gather(*(presence.close_peer(peer.id) for _ in range(5)))
    assert closed.count(peer) == 1 and closed.count(None) == 4
    assert await presence.peers_of("w1") == [] and await presence.peer(peer.id) is None
    assert (await presence.peer(audio.id)).audio_only  # type: ignore[union-attr]
    await presence.unwatch(7, "w1")
    await presence.unwatch(7, "w2")
    assert await presence.watchers(7) == []
    assert [s.id for s in await presence.live_here()] == [7]


async def test_guess_limits_hold_per_address(presence: Presence):
    limiter = presence.limiter("guess", rate=0.5, burst=3)
    assert await limiter.wait("10.0.0.1") == 0
    for _ in range(3):
        assert await limiter.spend("10.0.0.1") == 0
    assert await limiter.spend("10.0.0.1") > 0
    assert await limiter.wait("10.0.0.1") > 0
    assert await limiter.wait("10.0.0.2") == 0


async def test_processes_share_state_and_a_dead_one_is_reaped_once(redis_server, monkeypatch):
    from rtcproctor.signaling import redis_presence
    from rtcproctor.signaling.redis_presence import RedisPresence

    monkeypatch.setattr(redis_presence, "HEARTBEAT", 0.1)
    prefix = f"t{secrets.token_hex(4)}:"
    a, b, c = (RedisPresence(redis_server.url, prefix=prefix) for _ in range(3))
    for p in (a, b, c):
        await p.start()
    try:
        await a.update(1, None, exam_id="e", code="C1", sid="sa", live=True)
        await a.watch(2, "wa")
        await b.update(2, None, exam_id="e", code="C2", sid="sb", live=True)
        assert (await b.student(1)).owner == a.process  # type: ignore[union-attr]
        assert await b.watchers(2) == ["wa"]
        limit_a = a.limiter("guess", rate=0.1, burst=2)
        limit_b = b.limiter("guess", rate=0.1, burst=2)
        await limit_a.spend("198.51.100.7", 2)
        assert await limit_b.wait("198.51.100.7") > 0, "guesses count on every process"
        assert await b.orphans() == [] and await c.orphans() == []

        a._stopping.set()  # a dies without cleaning up
        await a.redis.delete(a._k("alive", a.process))
        await asyncio.sleep(0.5)
        assert await b.watchers(2) == [], "a dead process's watchers are not offered peers"
        found = await asyncio.gather(b.orphans(), c.orphans())
        claimed = [o for group in found for o in group]
        assert len(claimed) == 1 and claimed[0].process == a.process
        assert [s.id for s in claimed[0].students] == [1]
        assert claimed[0].watchers == [(2, "wa")]
        assert await b.orphans() == [] and await c.orphans() == []
        assert [s.id for s in await b.live_here()] == [2]
    finally:
        for p in (b, c):
            await p.close()
        await a.redis.aclose()
        await a._heartbeat_redis.aclose()


async def test_a_living_process_taken_for_dead_finds_out(redis_server, monkeypatch):
    from rtcproctor.signaling import redis_presence
    from rtcproctor.signaling.redis_presence import RedisPresence

    monkeypatch.setattr(redis_presence, "HEARTBEAT", 0.1)
    prefix = f"t{secrets.token_hex(4)}:"
    a, b = (RedisPresence(redis_server.url, prefix=prefix) for _ in range(2))
    for p in (a, b):
        await p.start()
    try:
        await a.update(1, None, exam_id="e", code="C1", sid="sa", live=True)
        await b.redis.delete(b._k("alive", a.process))  # as if a stalled past DEAD_AFTER
        (orphans,) = await b.orphans()
        assert orphans.process == a.process
        await asyncio.sleep(0.5)
        assert await a.take_reaped() is True, "a learns it was reaped"
        assert await a.take_reaped() is False
        assert a.process in await b.redis.smembers(b._k("procs")), "and counts as alive again"
        assert await b.orphans() == []
    finally:
        for p in (a, b):
            await p.close()
