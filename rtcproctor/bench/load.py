"""Clients held and relay latency, measured with lightweight Socket.IO connections.

Idle clients are student pages that joined with their own code and wait (answering
pings). Relay pairs are a proctor watching a live student; the student sends
`signal {peer, candidate}` to that peer at a steady rate and the proctor timestamps
each arrival. The sequence number in the candidate line matches it to its send time;
a message that has not arrived when its period ends is lost, and one that arrives
after a later message of the same sender is counted as out of order (one socket's
messages should keep their order, as offers and candidates rely on).

With several servers, clients are spread over them round robin and each pair's proctor
is on the server after its student's, so every relayed message crosses processes
(through Redis). The relay runs at one rate or at several in turn (steps), on the same
connected clients.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from rtcproctor.bench.server import run_queue_seconds
from rtcproctor.bench.wsclient import SioConnection, connect

log = logging.getLogger(__name__)

PER_SOCKET_RATE = 10.0  # events/s per relay student: half the server's 20/s limit
CONNECT_CONCURRENCY = 50


@dataclass
class Pair:
    code: str
    student_url: str
    proctor_url: str
    student: SioConnection | None = None
    proctor: SioConnection | None = None
    peer: str | None = None
    next_seq: int = 0
    in_flight: dict[int, float] = field(default_factory=dict)  # seq -> perf_counter at send
    last_seq: int = -1  # highest sequence number received
    got_peer: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def cross(self) -> bool:
        return self.student_url != self.proctor_url


@dataclass
class Probes:
    """Readings of the servers under measurement (None where they cannot be read)."""

    server_cpu: Callable[[], list[float | None]] = list  # CPU seconds of each server
    server_queued: Callable[[], list[float | None]] = list  # run-queue delay of each loop
    redis_cpu: Callable[[], float | None] = lambda: None
    redis_commands: Callable[[], dict[str, int]] = dict  # calls so far, by command


def _delta(before: float | None, after: float | None) -> float | None:
    return None if before is None or after is None else after - before


def _total(values: list[float | None]) -> float | None:
    return None if not values or None in values else sum(v for v in values if v is not None)


@dataclass
class RelayStep:
    """One relay period at one target rate."""

    rate_target: float
    sent: int = 0
    received: int = 0
    received_cross: int = 0  # of those, student and proctor on different servers
    lost: int = 0
    out_of_order: int = 0  # received after a later message of the same student
    late: int = 0  # arrived after its period had ended (counted lost there)
    ack_ok: int = 0
    ack_rate_limited: int = 0
    ack_other: int = 0
    elapsed: float = 0.0
    server_cpu_each: list[float | None] = field(default_factory=list)  # CPU s per server
    redis_cpu: float | None = None
    redis_commands: dict[str, int] = field(default_factory=dict)  # calls in the period
    load_cpu: float = 0.0  # CPU seconds this load generator used in the period
    load_lag_max: float = 0.0  # worst event-loop stall of the load generator in the period
    server_queued: float | None = None  # servers' loop threads runnable but not running
    load_queued: float | None = None  # the same for this load generator
    load_average: tuple[float, float, float] = (0.0, 0.0, 0.0)  # at the end of the period
    latencies: list[float] = field(default_factory=list)

    @property
    def rate_achieved(self) -> float:
        return self.received / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def server_cpu(self) -> float | None:
        """CPU seconds of all servers together in the period."""
        return _total(self.server_cpu_each)

    @property
    def loss(self) -> float:
        return self.lost / self.sent if self.sent else 0.0


@dataclass
class LoadResult:
    clients_wanted: int
    clients_connected: int = 0
    idle_students: int = 0
    connect_seconds: float = 0.0  # to connect every client and join/watch/go live
    clients_held: int = 0
    connect_failures: int = 0
    pings_answered: int = 0
    pairs: int = 0
    cross_pairs: int = 0  # pairs whose student and proctor are on different servers
    steps: list[RelayStep] = field(default_factory=list)


def relay_pairs(clients: int, rate: float) -> int:
    """Pairs needed to reach `rate` at PER_SOCKET_RATE each, within the client budget."""
    wanted = max(1, int(-(-rate // PER_SOCKET_RATE)))
    return max(1, min(wanted, clients // 2))


class LoadRun:
    """`clients` connections over `urls`, then a relay period per rate in `rates`."""

    def __init__(
        self,
        urls: list[str],
        clients: int,
        rates: list[float],
        seconds: float,
        probes: Probes | None = None,
        keep_going: Callable[[RelayStep], bool] = lambda _: True,
    ) -> None:
        self.urls = urls
        self.rates = rates
        self.probes = probes or Probes()
        self.keep_going = keep_going
        self.seconds = seconds
        self.result = LoadResult(clients_wanted=clients)
        self.result.pairs = relay_pairs(clients, max(rates))
        self.idle_count = max(0, clients - 2 * self.result.pairs)
        self.connections: list[SioConnection] = []
        self.pairs: list[Pair] = []
        self._by_peer: dict[str, Pair] = {}
        self._step = RelayStep(0.0)
        self._last_received = 0.0
        self._sending = True
        self._drained = asyncio.Event()

    @property
    def codes_needed(self) -> int:
        return self.idle_count + self.result.pairs

    async def run(self, codes: list[str]) -> LoadResult:
        connector = aiohttp.TCPConnector(limit=0, force_close=True)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            try:
                await self._connect_all(session, codes)
                await self._measure()
            finally:
                await asyncio.gather(*(c.close() for c in self.connections), return_exceptions=True)
        return self.result

    # Setting up

    async def _connect_all(self, session: aiohttp.ClientSession, codes: list[str]) -> None:
        gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
        pair_codes, idle_codes = codes[: self.result.pairs], codes[self.result.pairs :]
        n = len(self.urls)
        self.pairs = [
            Pair(code, self.urls[i % n], self.urls[(i + 1) % n])
            for i, code in enumerate(pair_codes)
        ]
        self.result.cross_pairs = sum(p.cross for p in self.pairs)

        async def idle(url: str, code: str) -> None:
            async with gate:
                conn = await self._open(session, url)
                if conn is not None:
                    await self._expect_ok(conn, "student:join", {"code": code})

        async def pair(p: Pair) -> None:
            async with gate:
                p.proctor = await self._open(session, p.proctor_url, self._on_proctor_event)
                p.student = await self._open(session, p.student_url, self._student_handler(p))
                if p.proctor is None or p.student is None:
                    return
                await self._expect_ok(p.proctor, "proctor:watch", {"codes": [p.code]})
                await self._expect_ok(p.student, "student:join", {"code": p.code})
                await self._expect_ok(p.student, "student:live", {"live": True})

        started = time.perf_counter()
        await asyncio.gather(
            *(pair(p) for p in self.pairs),
            *(idle(self.urls[i % n], c) for i, c in enumerate(idle_codes)),
        )
        await asyncio.gather(
            *(asyncio.wait_for(p.got_peer.wait(), 10) for p in self.pairs if p.student is not None),
            return_exceptions=True,
        )
        self.result.clients_connected = sum(not c.closed for c in self.connections)
        self.result.idle_students = len(idle_codes)
        self.result.connect_seconds = time.perf_counter() - started
        log.info(
            "%d clients connected in %.1f s",
            self.result.clients_connected,
            self.result.connect_seconds,
        )

    async def _open(
        self, session: aiohttp.ClientSession, url: str, handler: Any = None
    ) -> SioConnection | None:
        try:
            conn = await connect(session, url, handler)
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
            self.result.connect_failures += 1
            log.debug("connect failed: %s", exc)
            return None
        self.connections.append(conn)
        return conn

    async def _expect_ok(self, conn: SioConnection, event: str, data: Any) -> bool:
        try:
            ack = await conn.call(event, data, wait=15)
        except (TimeoutError, aiohttp.ClientError, ConnectionError) as exc:
            log.warning("%s: no answer (%s)", event, exc)
            return False
        if not (isinstance(ack, dict) and ack.get("ok")):
            log.warning("%s refused: %r", event, ack)
            return False
        return True

    def _student_handler(self, pair: Pair) -> Any:
        def handler(event: str, data: Any, _at: float) -> None:
            # An audio-only request is the server's hidden voice peer, not the proctor.
            if event == "peer:request" and isinstance(data, dict) and not data.get("audioOnly"):
                pair.peer = data.get("peer")
                self._by_peer[str(pair.peer)] = pair
                pair.got_peer.set()

        return handler

    def _on_proctor_event(self, event: str, data: Any, at: float) -> None:
        if event != "signal" or not isinstance(data, dict):
            return
        pair = self._by_peer.get(data.get("peer", ""))
        candidate = data.get("candidate") or {}
        if pair is None or "candidate" not in candidate:
            return
        seq = int(candidate["candidate"].split(":", 1)[1].split(" ", 1)[0])
        step = self._step
        sent_at = pair.in_flight.pop(seq, None)
        if sent_at is None:
            step.late += 1
            return
        step.latencies.append(at - sent_at)
        step.received += 1
        step.received_cross += pair.cross
        if seq < pair.last_seq:
            step.out_of_order += 1
        pair.last_seq = max(pair.last_seq, seq)
        self._last_received = at
        self._check_drained()

    def _check_drained(self) -> None:
        if not self._sending and not any(p.in_flight for p in self.pairs):
            self._drained.set()

    # Measuring

    def _on_ack(self, ack: Any) -> None:
        step = self._step
        if isinstance(ack, dict) and ack.get("ok"):
            step.ack_ok += 1
        elif isinstance(ack, dict) and (ack.get("error") or {}).get("code") == "rate_limited":
            step.ack_rate_limited += 1
        else:
            step.ack_other += 1

    async def _watch_lag(self) -> None:
        """Our own loop's stalls: a latency figure means little if the generator stalled."""
        while True:
            before = time.perf_counter()
            await asyncio.sleep(0.005)
            lag = time.perf_counter() - before - 0.005
            self._step.load_lag_max = max(self._step.load_lag_max, lag)

    async def _measure(self) -> None:
        # Connections live until the end: keep the collector from walking them again and again.
        gc.collect()
        gc.freeze()
        lag = asyncio.ensure_future(self._watch_lag())
        pings_before = sum(c.pings for c in self.connections)
        try:
            for rate in self.rates:
                step = await self._relay(rate)
                self.result.steps.append(step)
                if not self.keep_going(step):
                    break
        finally:
            self.result.clients_held = sum(not c.closed for c in self.connections)
            self.result.pings_answered = sum(c.pings for c in self.connections) - pings_before
            lag.cancel()
            gc.unfreeze()

    async def _relay(self, rate: float) -> RelayStep:
        step = self._step = RelayStep(rate)
        self._sending = True
        self._drained.clear()
        ready = [p for p in self.pairs if p.peer and p.student is not None]
        cpu_before, redis_before = self.probes.server_cpu(), self.probes.redis_cpu()
        commands_before = self.probes.redis_commands()
        load_before = time.process_time()
        queued_before = (_total(self.probes.server_queued()), run_queue_seconds())
        total = int(rate * self.seconds) if ready else 0
        start = time.perf_counter()
        self._last_received = start
        sent = 0
        while sent < total:
            due = min(total, int((time.perf_counter() - start) * rate) + 1)
            while sent < due:
                pair = ready[sent % len(ready)]
                await self._send(pair)
                sent += 1
            await asyncio.sleep(0.002)
        # Hold for the whole period even when there is nothing to relay.
        await asyncio.sleep(max(0.0, start + self.seconds - time.perf_counter()))
        self._sending = False
        self._check_drained()
        try:
            await asyncio.wait_for(self._drained.wait(), 5)
        except TimeoutError:
            log.warning("some relayed messages never arrived")
        step.sent = sent
        for pair in ready:
            step.lost += len(pair.in_flight)
            pair.in_flight.clear()
        step.elapsed = max(self._last_received, start + self.seconds) - start
        cpu_after = self.probes.server_cpu()
        step.server_cpu_each = [_delta(b, a) for b, a in zip(cpu_before, cpu_after, strict=True)]
        step.redis_cpu = _delta(redis_before, self.probes.redis_cpu())
        commands = self.probes.redis_commands()
        step.redis_commands = {
            name: calls - commands_before.get(name, 0)
            for name, calls in commands.items()
            if calls > commands_before.get(name, 0)
        }
        step.load_cpu = time.process_time() - load_before
        step.load_average = os.getloadavg()
        step.server_queued = _delta(queued_before[0], _total(self.probes.server_queued()))
        step.load_queued = _delta(queued_before[1], run_queue_seconds())
        log.info(
            "relay at %g msg/s: %d sent, %d received, %d lost",
            rate,
            step.sent,
            step.received,
            step.lost,
        )
        return step

    async def _send(self, pair: Pair) -> None:
        assert pair.student is not None
        seq = pair.next_seq
        pair.next_seq += 1
        candidate = {
            "candidate": f"candidate:{seq} 1 udp 2122260223 127.0.0.1 9 typ host",
            "sdpMid": "0",
            "sdpMLineIndex": 0,
        }
        pair.in_flight[seq] = time.perf_counter()
        try:
            await pair.student.emit(
                "signal", {"peer": pair.peer, "candidate": candidate}, self._on_ack
            )
        except (aiohttp.ClientError, ConnectionError, RuntimeError):
            pair.in_flight.pop(seq, None)
