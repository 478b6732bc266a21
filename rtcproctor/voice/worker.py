"""The live analyzer in a process of its own, at a lower CPU priority.

In a thread of the server, inference shared the GIL with the event loop: pyannote and
CAM++ run thousands of small Python-level module calls per step, so with 50 students
the loop answered /healthz in 0.6 s, STUN consent checks timed out and shadow peers
died (bench capacity). In its own process, niced, the analysis only takes the CPU the
WebRTC receive path leaves, and the pacer (voice.pacing) thins windows when that is not
enough. The event loop only collects samples and ships them once per step.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import signal
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from rtcproctor.voice.alerts import Alert
from rtcproctor.voice.analyzer import Analyzer, StepStats
from rtcproctor.voice.audio import SAMPLE_RATE

log = logging.getLogger(__name__)

NICE = 5  # below the server's event loop: the receive path is real time, analysis is not


@dataclass(frozen=True)
class Batch:
    """What the event loop hands over at a step: new samples, ended and re-enrolled streams."""

    audio: dict[str, np.ndarray]
    closed: tuple[str, ...] = ()
    re_enroll: tuple[str, ...] = ()


@dataclass(frozen=True)
class Result:
    alerts: list[Alert]
    stats: StepStats
    backlog: dict[str, tuple[float, float]]
    stride: int = 1
    busy: float = 0.0


@dataclass
class _Process:
    """The worker process's own analyzer (each worker process holds exactly one)."""

    analyzer: Analyzer | None = None


_here = _Process()


def _die_with(server: int) -> None:
    """A server killed with -9 must not leave its worker behind holding a gigabyte."""
    if sys.platform != "linux":
        return
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() != server:  # it died before the line above
        os._exit(1)


def _load(threads: int, nice: int, server: int) -> str:
    """Runs in the worker: load the models once; what was loaded, for the log."""
    from rtcproctor.voice.models import load_models
    from rtcproctor.voice.pacing import Pacer

    _die_with(server)
    if nice:
        with contextlib.suppress(OSError):
            os.nice(nice)
    models = load_models(threads)
    _here.analyzer = Analyzer(models=models, pacer=Pacer())
    return f"{models.embedding_kind} models from {models.source} ({models.precision})"


def _step(batch: Batch) -> Result:
    """Runs in the worker: take the batch in, analyse every ready window."""
    analyzer = _here.analyzer
    assert analyzer is not None, "models not loaded"
    for stream, samples in batch.audio.items():
        analyzer.submit(stream, samples)
    for stream in batch.re_enroll:
        analyzer.re_enroll(stream)
    for stream in batch.closed:
        analyzer.close(stream)
    alerts = analyzer.step()
    pacer = analyzer.pacer
    return Result(
        alerts,
        analyzer.last,
        analyzer.backlog(),
        pacer.stride if pacer else 1,
        pacer.busy_fraction if pacer else 0.0,
    )


@dataclass
class Pace:
    """The worker's pace as last reported (read by /metrics)."""

    stride: int = 1
    busy_fraction: float = 0.0


@dataclass
class AnalysisWorker:
    """Event-loop side: collects samples per stream; `step()` ships them to the worker
    process and brings its alerts back. Not thread-safe: use it from the event loop."""

    threads: int = 1
    nice: int = NICE
    last: StepStats = field(default_factory=StepStats)
    pacer: Pace = field(default_factory=Pace)
    description: str = ""
    _pool: ProcessPoolExecutor | None = None
    _audio: dict[str, list[np.ndarray]] = field(default_factory=dict)
    _closed: list[str] = field(default_factory=list)
    _re_enroll: list[str] = field(default_factory=list)
    _backlog: dict[str, tuple[float, float]] = field(default_factory=dict)

    async def start(self) -> None:
        """Start the process and load the models in it (raises what loading raised)."""
        # spawn: a fork of a server with threads and sockets open is not safe for torch.
        context = multiprocessing.get_context("spawn")
        self._pool = ProcessPoolExecutor(max_workers=1, mp_context=context)
        loop = asyncio.get_running_loop()
        began = time.perf_counter()
        try:
            self.description = await loop.run_in_executor(
                self._pool, _load, self.threads, self.nice, os.getpid()
            )
        except BaseException:
            await self.stop()
            raise
        log.info(
            "voice worker process ready in %.1f s (%s, %d torch threads)",
            time.perf_counter() - began,
            self.description,
            self.threads,
        )

    async def stop(self) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        processes = list(getattr(pool, "_processes", {}).values())
        pool.shutdown(wait=False, cancel_futures=True)
        for process in processes:  # a step may be running: do not wait for it
            with contextlib.suppress(Exception):
                process.terminate()
        await asyncio.to_thread(lambda: [p.join(5) for p in processes])

    def submit(self, stream: str, samples: np.ndarray) -> None:
        self._audio.setdefault(stream, []).append(samples)

    def close(self, stream: str) -> None:
        self._closed.append(stream)

    def re_enroll(self, stream: str) -> None:
        self._re_enroll.append(stream)

    def backlog(self) -> dict[str, tuple[float, float]]:
        """Per stream, as `Analyzer.backlog`, counting the samples not yet shipped too."""
        out = dict(self._backlog)
        for stream, chunks in self._audio.items():
            waiting = sum(c.size for c in chunks) / SAMPLE_RATE
            pending, lag = out.get(stream, (0.0, 0.0))
            out[stream] = (pending + waiting, lag + waiting)
        return out

    async def step(self) -> list[Alert]:
        """One analysis step in the worker; raises BrokenProcessPool if it died."""
        if self._pool is None:
            raise RuntimeError("the voice worker is not running")
        batch = Batch(
            audio={s: np.concatenate(c) for s, c in self._audio.items() if c},
            closed=tuple(self._closed),
            re_enroll=tuple(self._re_enroll),
        )
        self._audio, self._closed, self._re_enroll = {}, [], []
        loop = asyncio.get_running_loop()
        result: Result = await loop.run_in_executor(self._pool, _step, batch)
        self.last = result.stats
        self.pacer = Pace(result.stride, result.busy)
        self._backlog = result.backlog
        return result.alerts
