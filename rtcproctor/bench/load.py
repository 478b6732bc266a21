"""Clients held and relay latency, measured with lightweight Socket.IO connections.

Idle clients are student pages that joined with their own code and wait (answering
pings). Relay pairs are a proctor watching a live student; the student sends
`signal {peer, candidate}` to that peer at a steady rate and the proctor timestamps
each arrival. One socket's messages stay in order, so each pair keeps a FIFO of send
times; the sequence number in the candidate line shows any message that was lost.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import time
from collections import deque
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
    student: SioConnection | None = None
    proctor: SioConnection | None = None
    peer: str | None = None
    next_seq: int = 0
    in_flight: deque[tuple[int, float]] = field(default_factory=deque)
    got_peer: asyncio.Event = field(default_factory=asyncio.Event)


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
    rate_target: float = 0.0
    sent: int = 0
    received: int = 0
    lost: int = 0
    ack_ok: int = 0
    ack_rate_limited: int = 0
    ack_other: int = 0
    elapsed: float = 0.0
    server_cpu: float | None = None  # CPU seconds the server process used in the period
    load_cpu: float = 0.0  # CPU seconds this load generator used in the period
    load_lag_max: float = 0.0  # worst event-loop stall of the load generator in the period
    server_queued: float | None = None  # server's loop thread runnable but not running
    load_queued: float | None = None  # the same for this load generator
    load_average: tuple[float, float, float] = (0.0, 0.0, 0.0)  # at the end of the period
    latencies: list[float] = field(default_factory=list)

    @property
    def rate_achieved(self) -> float:
        return self.received / self.elapsed if self.elapsed > 0 else 0.0


def relay_pairs(clients: int, rate: float) -> int:
    """Pairs needed to reach `rate` at PER_SOCKET_RATE each, within the client budget."""
    wanted = max(1, int(-(-rate // PER_SOCKET_RATE)))
    return max(1, min(wanted, clients // 2))


class LoadRun:
    def __init__(
        self,
        url: str,
        clients: int,
        rate: float,
        seconds: float,
        server_cpu: Callable[[], float | None] = lambda: None,
        server_queued: Callable[[], float | None] = lambda: None,
    ) -> None:
        self.url = url
        self.server_cpu = server_cpu
        self.server_queued = server_queued
        self.seconds = seconds
        self.result = LoadResult(clients_wanted=clients, rate_target=rate)
        self.result.pairs = relay_pairs(clients, rate)
        self.idle_count = max(0, clients - 2 * self.result.pairs)
        self.connections: list[SioConnection] = []
        self.pairs: list[Pair] = []
        self._by_peer: dict[str, Pair] = {}
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
        self.pairs = [Pair(code) for code in pair_codes]

        async def idle(code: str) -> None:
            async with gate:
                conn = await self._open(session)
                if conn is not None:
                    await self._expect_ok(conn, "student:join", {"code": code})

        async def pair(p: Pair) -> None:
            async with gate:
                p.proctor = await self._open(session, self._on_proctor_event)
                p.student = await self._open(session, self._student_handler(p))
                if p.proctor is None or p.student is None:
                    return
                await self._expect_ok(p.proctor, "proctor:watch", {"codes": [p.code]})
                await self._expect_ok(p.student, "student:join", {"code": p.code})
                await self._expect_ok(p.student, "student:live", {"live": True})

        started = time.perf_counter()
        await asyncio.gather(*(pair(p) for p in self.pairs), *(idle(c) for c in idle_codes))
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
        self, session: aiohttp.ClientSession, handler: Any = None
    ) -> SioConnection | None:
        try:
            conn = await connect(session, self.url, handler)
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
            if event == "peer:request" and isinstance(data, dict):
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
        while pair.in_flight and pair.in_flight[0][0] < seq:
            pair.in_flight.popleft()
            self.result.lost += 1
        if pair.in_flight and pair.in_flight[0][0] == seq:
            _, sent_at = pair.in_flight.popleft()
            self.result.latencies.append(at - sent_at)
            self.result.received += 1
            self._last_received = at
        self._check_drained()

    def _check_drained(self) -> None:
        if not self._sending and not any(p.in_flight for p in self.pairs):
            self._drained.set()

    # Measuring

    def _on_ack(self, ack: Any) -> None:
        if isinstance(ack, dict) and ack.get("ok"):
            self.result.ack_ok += 1
        elif isinstance(ack, dict) and (ack.get("error") or {}).get("code") == "rate_limited":
            self.result.ack_rate_limited += 1
        else:
            self.result.ack_other += 1

    async def _watch_lag(self) -> None:
        """Our own loop's stalls: a latency figure means little if the generator stalled."""
        while True:
            before = time.perf_counter()
            await asyncio.sleep(0.005)
            lag = time.perf_counter() - before - 0.005
            self.result.load_lag_max = max(self.result.load_lag_max, lag)

    async def _measure(self) -> None:
        # Connections live until the end: keep the collector from walking them again and again.
        gc.collect()
        gc.freeze()
        lag = asyncio.ensure_future(self._watch_lag())
        try:
            await self._relay()
        finally:
            lag.cancel()
            gc.unfreeze()

    async def _relay(self) -> None:
        ready = [p for p in self.pairs if p.peer and p.student is not None]
        pings_before = sum(c.pings for c in self.connections)
        cpu_before, load_before = self.server_cpu(), time.process_time()
        queued_before = (self.server_queued(), run_queue_seconds())
        total = int(self.result.rate_target * self.seconds) if ready else 0
        start = time.perf_counter()
        self._last_received = start
        sent = 0
        while sent < total:
            due = min(total, int((time.perf_counter() - start) * self.result.rate_target) + 1)
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
        self.result.sent = sent
        self.result.lost += sum(len(p.in_flight) for p in ready)
        self.result.elapsed = max(self._last_received, start + self.seconds) - start
        cpu_after = self.server_cpu()
        if cpu_before is not None and cpu_after is not None:
            self.result.server_cpu = cpu_after - cpu_before
        self.result.load_cpu = time.process_time() - load_before
        self.result.load_average = os.getloadavg()
        queued_after = (self.server_queued(), run_queue_seconds())
        if queued_before[0] is not None and queued_after[0] is not None:
            self.result.server_queued = queued_after[0] - queued_before[0]
        if queued_before[1] is not None and queued_after[1] is not None:
            self.result.load_queued = queued_after[1] - queued_before[1]
        self.result.clients_held = sum(not c.closed for c in self.connections)
        self.result.pings_answered = sum(c.pings for c in self.connections) - pings_before

    async def _send(self, pair: Pair) -> None:
        assert pair.student is not None
        seq = pair.next_seq
        pair.next_seq += 1
        candidate = {
            "candidate": f"candidate:{seq} 1 udp 2122260223 127.0.0.1 9 typ host",
            "sdpMid": "0",
            "sdpMLineIndex": 0,
        }
        pair.in_flight.append((seq, time.perf_counter()))
        try:
            await pair.student.emit(
                "signal", {"peer": pair.peer, "candidate": candidate}, self._on_ack
            )
        except (aiohttp.ClientError, ConnectionError, RuntimeError):
            pair.in_flight.pop()
