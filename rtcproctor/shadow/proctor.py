"""All shadow peers of this process and the one analyzer they feed.

Inference runs in one dedicated worker thread (torch releases the GIL), so the event
loop that relays signaling never waits for it; one batched step serves every student.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rtcproctor.shadow.peer import ShadowPeer
from rtcproctor.voice.alerts import Alert
from rtcproctor.voice.analyzer import Analyzer

if TYPE_CHECKING:
    from rtcproctor.metrics import Metrics

log = logging.getLogger(__name__)

STEP_INTERVAL = 0.5


@dataclass(frozen=True)
class ShadowAlert:
    """An alert with its student and wall-clock times, ready to store and push."""

    student_id: int
    alert: Alert
    started_at: float
    ended_at: float


@dataclass
class _Stream:
    student_id: int
    key: str
    t0: float | None = None


class ShadowProctor:
    def __init__(
        self,
        on_alert: Callable[[ShadowAlert], Awaitable[None]],
        on_peer_failed: Callable[[str], Awaitable[None]],
        analyzer_factory: Callable[[], Analyzer] = Analyzer,
        metrics: Metrics | None = None,
    ) -> None:
        self._on_alert = on_alert
        self.metrics = metrics
        self._on_peer_failed = on_peer_failed
        self._factory = analyzer_factory
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="voice")
        self.analyzer: Analyzer | None = None
        self.peers: dict[str, ShadowPeer] = {}
        self._streams: dict[str, _Stream] = {}
        self._by_key: dict[str, _Stream] = {}
        self._loop_task: asyncio.Task[None] | None = None
        self._frames_of_closed = 0
        self.error: str | None = None

    @property
    def ready(self) -> bool:
        return self.analyzer is not None

    @property
    def state(self) -> str:
        if self.ready:
            return "ready"
        return "unavailable" if self.error else "loading"

    @property
    def audio_frames(self) -> int:
        """Frames ever received, closed peers included, so it only grows (a counter)."""
        return self._frames_of_closed + sum(p.frames for p in self.peers.values())

    async def start(self) -> None:
        """Load the models off the event loop, then run the analysis loop."""
        loop = asyncio.get_running_loop()
        began = time.perf_counter()
        try:
            self.analyzer = await loop.run_in_executor(self._executor, self._factory)
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}"
            log.exception("voice detection unavailable: the models did not load")
            return
        log.info("voice detector ready in %.1f s", time.perf_counter() - began)
        self._loop_task = asyncio.create_task(self._analyse())

    async def stop(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
        for peer_id in list(self.peers):
            await self.close_peer(peer_id)
        self._executor.shutdown(wait=True, cancel_futures=True)

    async def _analyse(self) -> None:
        loop = asyncio.get_running_loop()
        assert self.analyzer is not None
        while True:
            began = time.monotonic()
            try:
                alerts = await loop.run_in_executor(self._executor, self.analyzer.step)
                if self.metrics is not None:
                    self.metrics.step(self.analyzer.last.seconds, self.analyzer.last.windows)
            except Exception:
                log.exception("voice analysis step failed")
                alerts = []
            for alert in alerts:
                stream = self._by_key.get(alert.stream)
                if stream is None or stream.t0 is None:
                    continue
                shadow = ShadowAlert(
                    stream.student_id, alert, stream.t0 + alert.start, stream.t0 + alert.end
                )
                try:
                    await self._on_alert(shadow)
                except Exception:
                    log.exception("handling alert %s failed", alert)
            await asyncio.sleep(max(0.05, STEP_INTERVAL - (time.monotonic() - began)))

    async def offer(
        self, peer_id: str, student_id: int, description: dict[str, Any], rtc: dict[str, Any]
    ) -> dict[str, str]:
        """Answer a student's offer; a new offer on a known peer replaces that peer."""
        if self.analyzer is None:
            raise RuntimeError("voice detection is not running")
        if peer_id in self.peers:
            await self.close_peer(peer_id)
        stream = _Stream(student_id=student_id, key=f"{student_id}:{peer_id}")
        analyzer = self.analyzer

        def sink(samples: Any) -> None:
            if stream.t0 is None:
                stream.t0 = time.time()
            analyzer.submit(stream.key, samples)

        peer = ShadowPeer(peer_id, sink, rtc, self._on_peer_failed)
        self.peers[peer_id] = peer
        self._streams[peer_id] = stream
        self._by_key[stream.key] = stream
        return await peer.answer(description)

    async def candidate(self, peer_id: str, init: dict[str, Any] | None) -> None:
        peer = self.peers.get(peer_id)
        if peer is not None:
            await peer.add_candidate(init)

    async def close_peer(self, peer_id: str) -> None:
        peer = self.peers.pop(peer_id, None)
        stream = self._streams.pop(peer_id, None)
        if stream is not None and self.analyzer is not None:
            self.analyzer.close(stream.key)
            # Alerts of the last window may still arrive: keep the key until they have.
            asyncio.get_running_loop().call_later(30, self._by_key.pop, stream.key, None)
        if peer is not None:
            self._frames_of_closed += peer.frames
            await peer.close()

    def re_enroll(self, student_id: int) -> bool:
        if self.analyzer is None:
            return False
        keys = [s.key for s in self._streams.values() if s.student_id == student_id]
        for key in keys:
            self.analyzer.re_enroll(key)
        return bool(keys)

    def stats(self) -> dict[str, Any]:
        return {
            "ready": self.ready,
            "error": self.error,
            "peers": len(self.peers),
            "streams": len(self._streams),
        }
