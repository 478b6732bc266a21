"""All shadow peers of this process and the analysis worker they feed.

Inference runs in worker processes of their own (voice.worker): the event loop that
relays signaling and receives the students' audio never shares a GIL with them, and
one batched step in each serves its share of the students.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rtcproctor.shadow.peer import ShadowPeer
from rtcproctor.voice.alerts import Alert
from rtcproctor.voice.audio import SAMPLE_RATE
from rtcproctor.voice.detector import DetectorConfig
from rtcproctor.voice.worker import AnalysisWorker, serving_processes

if TYPE_CHECKING:
    from rtcproctor.metrics import Metrics

log = logging.getLogger(__name__)

# A step starts every STEP_INTERVAL. While the worker keeps up with every window (no
# thinning), it starts as soon as some stream completes a window instead, STEP_GAP after
# the last step so that windows completed together share one: a window's alert then
# waits for no clock (10 students: alert median 2.28 -> 1.96 s, p95 4.39 -> 3.89 s).
# Under load it keeps the clock: smaller steps batch fewer embeddings (39 vs 32-35 ms
# per window with 50 students).
STEP_INTERVAL = 0.5
STEP_GAP = 0.05


@dataclass(frozen=True)
class ShadowAlert:
    """An alert with its student and wall-clock times, ready to store and push."""

    student_id: int
    alert: Alert
    started_at: float
    ended_at: float
    updated_at: float  # when the last sample of the window that raised or grew it arrived


@dataclass
class _Stream:
    student_id: int
    key: str
    t0: float | None = None
    samples: int = 0  # received so far: windows end at whole hops of them


def live_worker(processes: int | None = None) -> AnalysisWorker:
    """Paced (stays in real time under load), on the cores a server can spare."""
    return AnalysisWorker(threads=1, processes=serving_processes(processes))


class ShadowProctor:
    def __init__(
        self,
        on_alert: Callable[[ShadowAlert], Awaitable[None]],
        on_peer_failed: Callable[[str], Awaitable[None]],
        worker_factory: Callable[[], AnalysisWorker] | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self._on_alert = on_alert
        self.metrics = metrics
        self._on_peer_failed = on_peer_failed
        self._factory = worker_factory or live_worker
        self.analyzer: AnalysisWorker | None = None
        self.peers: dict[str, ShadowPeer] = {}
        self._streams: dict[str, _Stream] = {}
        self._by_key: dict[str, _Stream] = {}
        self._loop_task: asyncio.Task[None] | None = None
        self._frames_of_closed = 0
        self._seconds_of_closed = 0.0
        # A stream completed a window (or the window of an early second look, which the
        # last step asked for: voice.detector's second_look) since the last step.
        self._window_due = asyncio.Event()
        self._hop = int(DetectorConfig().hop * SAMPLE_RATE)
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

    @property
    def audio_seconds(self) -> float:
        """Audio ever received, closed peers included (a counter)."""
        return self._seconds_of_closed + sum(p.seconds for p in self.peers.values())

    async def start(self) -> None:
        """Start the worker processes (they load the models), then run the analysis loop."""
        if await self._start_worker():
            self._loop_task = asyncio.create_task(self._analyse())

    async def _start_worker(self) -> bool:
        worker = self._factory()
        try:
            await worker.start()
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}"
            log.exception("voice detection unavailable: the models did not load")
            return False
        self.analyzer, self.error = worker, None
        return True

    async def stop(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
        for peer_id in list(self.peers):
            await self.close_peer(peer_id)
        if self.analyzer is not None:
            await self.analyzer.stop()

    async def _restart(self) -> bool:
        """A worker process died (killed, out of memory): new ones, and new peers for
        everyone, since students' enrolled voices and open windows died with it."""
        log.error("a voice worker process died: starting the workers again")
        dead, self.analyzer = self.analyzer, None
        if dead is not None:
            await dead.stop()
        if not await self._start_worker():
            return False
        for peer_id in list(self.peers):
            await self._on_peer_failed(peer_id)
        return True

    async def _analyse(self) -> None:
        while self.analyzer is not None:
            began = time.monotonic()
            self._window_due.clear()
            try:
                async for alerts in self.analyzer.steps():
                    await self._deliver(alerts)
                if self.metrics is not None:
                    last = self.analyzer.last
                    self.metrics.step(last.seconds, last.windows, last.skipped)
                self._look_now()
            except BrokenProcessPool:
                if not await self._restart():
                    return
            except Exception:
                log.exception("voice analysis step failed")
            await self._pause(began)

    def _look_now(self) -> None:
        """Step again at once if a second look's audio came in during the step."""
        looks = self.analyzer.looks if self.analyzer is not None else {}
        if any(
            (stream := self._by_key.get(key)) is not None and stream.samples >= due * SAMPLE_RATE
            for key, due in looks.items()
        ):
            self._window_due.set()

    async def _deliver(self, alerts: list[Alert]) -> None:
        for alert in alerts:
            stream = self._by_key.get(alert.stream)
            if stream is None or stream.t0 is None:
                continue
            shadow = ShadowAlert(
                stream.student_id,
                alert,
                stream.t0 + alert.start,
                stream.t0 + alert.end,
                stream.t0 + alert.updated_at,
            )
            try:
                await self._on_alert(shadow)
            except Exception:
                log.exception("handling alert %s failed", alert)

    async def _pause(self, began: float) -> None:
        await asyncio.sleep(STEP_GAP)
        rest = STEP_INTERVAL - (time.monotonic() - began)
        if rest <= 0:
            return
        if self.analyzer is None or self.analyzer.pacer.stride > 1:
            await asyncio.sleep(rest)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._window_due.wait(), rest)

    async def offer(
        self, peer_id: str, student_id: int, description: dict[str, Any], rtc: dict[str, Any]
    ) -> dict[str, str]:
        """Answer a student's offer; a new offer on a known peer replaces that peer."""
        if self.analyzer is None:
            raise RuntimeError("voice detection is not running")
        if peer_id in self.peers:
            await self.close_peer(peer_id)
        stream = _Stream(student_id=student_id, key=f"{student_id}:{peer_id}")

        def sink(samples: Any) -> None:
            if stream.t0 is None:
                stream.t0 = time.time()
            if self.analyzer is not None:  # None while a dead worker is replaced
                self.analyzer.submit(stream.key, samples)
            before, stream.samples = stream.samples, stream.samples + len(samples)
            look = self.analyzer.looks.get(stream.key) if self.analyzer is not None else None
            if stream.samples // self._hop > before // self._hop or (
                look is not None and before < look * SAMPLE_RATE <= stream.samples
            ):
                self._window_due.set()

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
        if peer is not None:  # first, so that no sample of it follows the stream's end
            self._frames_of_closed += peer.frames
            self._seconds_of_closed += peer.seconds
            await peer.close()
        if stream is not None and self.analyzer is not None:
            self.analyzer.close(stream.key)
            # Alerts of the last window may still arrive: keep the key until they have.
            asyncio.get_running_loop().call_later(30, self._by_key.pop, stream.key, None)

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
