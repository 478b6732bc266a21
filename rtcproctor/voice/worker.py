"""The live analyzer in processes of its own, at a lower CPU priority.

In a thread of the server, inference shared the GIL with the event loop: pyannote and
CAM++ run thousands of small Python-level module calls per step, so with 50 students
the loop answered /healthz in 0.6 s, STUN consent checks timed out and shadow peers
died (bench capacity). In its own process, niced, the analysis only takes the CPU the
WebRTC receive path leaves, and the pacer (voice.pacing) thins windows when that is not
enough. The event loop only collects samples and ships them once per step.

With more than 2 cores, streams are shared out among several such processes (one per
core but one): each analyses its students with one torch thread. Two threads in one
process did worse than one (a window took 44 instead of 30 ms with 50 students):
whichever holds the GIL when the event loop preempts it stalls the other.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from itertools import count
from multiprocessing.connection import Connection

import numpy as np

from rtcproctor.cores import usable_cores
from rtcproctor.voice.alerts import Alert
from rtcproctor.voice.analyzer import Analyzer, StepStats
from rtcproctor.voice.audio import SAMPLE_RATE

log = logging.getLogger(__name__)

NICE = 5  # below the server's event loop: the receive path is real time, analysis is not
# Each process holds its own torch and models (about 0.55 GiB of private memory); past
# a few, run several servers (README, "Scaling past one process").
MAX_PROCESSES = 4


def serving_processes(wanted: int | None = None) -> int:
    """Worker processes for a server: by default one per usable core (rtcproctor.cores)
    but one, which the event loop and the receive path keep, up to MAX_PROCESSES; each
    with one torch thread (RTCPROCTOR_TORCH_THREADS overrides), as a second intra-op
    thread made a window three times slower (bench capacity). On 2 cores a second
    worker analysed more (0.9 instead of 0.67 of a core with 50 students) but in steps
    as long as one's, each sharing the core left: 1 window in 2 in 5 runs of 12, and
    p95 alert delays of 3.4-7.1 s against 4.7 s for one worker at the same hour."""
    return wanted or max(1, min(usable_cores() - 1, MAX_PROCESSES))


@dataclass(frozen=True)
class Batch:
    """What the event loop hands over at a step: new samples, ended and re-enrolled streams."""

    audio: dict[str, np.ndarray]
    closed: tuple[str, ...] = ()
    re_enroll: tuple[str, ...] = ()


@dataclass(frozen=True)
class Result:
    """What a step did, once it is over (its alerts went out through the pipe)."""

    stats: StepStats
    backlog: dict[str, tuple[float, float]]
    stride: int = 1
    busy: float = 0.0
    looks: dict[str, float] = field(default_factory=dict)  # as `Analyzer.looks`


@dataclass
class _Process:
    """The worker process's own analyzer (each worker process holds exactly one)."""

    analyzer: Analyzer | None = None
    alerts: Connection | None = None  # a step's alerts go out here as they are concluded


_here = _Process()


def _keep(alerts: Connection) -> None:
    """Runs in the worker as it starts: where its steps send their alerts."""
    _here.alerts = alerts


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


def _step(batch: Batch, step: int) -> Result:
    """Runs in the worker: take the batch in and analyse the ready windows, sending
    `(step, alerts)` through the pipe as each group of streams is concluded
    (`Analyzer.live_step`), then `(step, None)` once no more will come."""
    analyzer, out = _here.analyzer, _here.alerts
    assert analyzer is not None and out is not None, "models not loaded"
    try:
        for stream, samples in batch.audio.items():
            analyzer.submit(stream, samples)
        for stream in batch.re_enroll:
            analyzer.re_enroll(stream)
        for stream in batch.closed:
            analyzer.close(stream)
        stats = analyzer.live_step(lambda alerts: out.send((step, alerts)))
    finally:
        out.send((step, None))
    pacer = analyzer.pacer
    return Result(
        stats,
        analyzer.backlog(),
        pacer.stride if pacer else 1,
        pacer.busy_fraction if pacer else 0.0,
        analyzer.looks(),
    )


@dataclass
class Pace:
    """The worker's pace as last reported (read by /metrics)."""

    stride: int = 1
    busy_fraction: float = 0.0


@dataclass
class _Lane:
    """One worker process and what it last reported (its students: `AnalysisWorker._home`)."""

    pool: ProcessPoolExecutor
    alerts: Connection  # the reading end of the process's alert pipe
    pace: Pace = field(default_factory=Pace)
    backlog: dict[str, tuple[float, float]] = field(default_factory=dict)


@dataclass
class AnalysisWorker:
    """Event-loop side: collects samples per stream; `step()` ships them to the worker
    processes (each stream always to the same one) and brings their alerts back. Not
    thread-safe: use it from the event loop."""

    threads: int = 1  # torch threads in each process
    processes: int = 1
    nice: int = NICE
    last: StepStats = field(default_factory=StepStats)
    description: str = ""
    # Streams awaiting an early second look, as of the last step: the stream time (s) at
    # which its window is complete, so that a step starts then (shadow.proctor).
    looks: dict[str, float] = field(default_factory=dict)
    _lanes: list[_Lane] = field(default_factory=list)
    _home: dict[str, int] = field(default_factory=dict)  # stream -> its process
    _audio: dict[str, list[np.ndarray]] = field(default_factory=dict)
    _closed: list[str] = field(default_factory=list)
    _re_enroll: list[str] = field(default_factory=list)
    _inbox: asyncio.Queue[tuple[int, int, list[Alert] | None]] | None = None
    _pumps: list[threading.Thread] = field(default_factory=list)
    _steps: count[int] = field(default_factory=count)

    @property
    def pacer(self) -> Pace:
        """The thinnest pace and the busiest process (what /metrics and the step clock
        go by)."""
        if not self._lanes:
            return Pace()
        return Pace(
            max(lane.pace.stride for lane in self._lanes),
            max(lane.pace.busy_fraction for lane in self._lanes),
        )

    async def start(self) -> None:
        """Start the processes and load the models in each (raises what loading raised)."""
        # spawn: a fork of a server with threads and sockets open is not safe for torch.
        context = multiprocessing.get_context("spawn")
        loop = asyncio.get_running_loop()
        inbox: asyncio.Queue[tuple[int, int, list[Alert] | None]] = asyncio.Queue()
        writers: list[Connection] = []
        for _ in range(max(1, self.processes)):
            reader, writer = context.Pipe(duplex=False)
            pool = ProcessPoolExecutor(
                max_workers=1, mp_context=context, initializer=_keep, initargs=(writer,)
            )
            self._lanes.append(_Lane(pool, reader))
            writers.append(writer)
        pools = [lane.pool for lane in self._lanes]
        began = time.perf_counter()
        try:
            loaded = await asyncio.gather(
                *(
                    loop.run_in_executor(pool, _load, self.threads, self.nice, os.getpid())
                    for pool in pools
                )
            )
        except BaseException:
            await self.stop()
            raise
        finally:
            for writer in writers:  # each process holds its own end: EOF when it dies
                writer.close()
        self._inbox = inbox
        self._pumps = [
            threading.Thread(
                target=_pump,
                args=(index, lane.alerts, loop, inbox),
                name=f"voice-alerts-{index}",
                daemon=True,
            )
            for index, lane in enumerate(self._lanes)
        ]
        for pump in self._pumps:
            pump.start()
        self.description = loaded[0]
        log.info(
            "voice worker processes ready in %.1f s (%d of them, %s, %d torch thread(s) each)",
            time.perf_counter() - began,
            len(pools),
            self.description,
            self.threads,
        )

    async def stop(self) -> None:
        lanes, self._lanes = self._lanes, []
        pumps, self._pumps = self._pumps, []
        processes = [p for lane in lanes for p in getattr(lane.pool, "_processes", {}).values()]
        for lane in lanes:
            lane.pool.shutdown(wait=False, cancel_futures=True)
        for process in processes:  # a step may be running: do not wait for it
            with contextlib.suppress(Exception):
                process.terminate()

        def join() -> None:
            for process in processes:
                process.join(5)
            for pump in pumps:  # the pipes' writers died with the processes: EOF
                pump.join(5)
            for lane in lanes:
                lane.alerts.close()

        await asyncio.to_thread(join)

    def submit(self, stream: str, samples: np.ndarray) -> None:
        if stream not in self._home:  # a new stream goes to the process with the fewest
            counts = [0] * max(1, len(self._lanes))
            for home in self._home.values():
                counts[home] += 1
            self._home[stream] = counts.index(min(counts))
        self._audio.setdefault(stream, []).append(samples)

    def close(self, stream: str) -> None:
        self._closed.append(stream)

    def re_enroll(self, stream: str) -> None:
        self._re_enroll.append(stream)

    def backlog(self) -> dict[str, tuple[float, float]]:
        """Per stream, as `Analyzer.backlog`, counting the samples not yet shipped too."""
        out = {k: v for lane in self._lanes for k, v in lane.backlog.items()}
        for stream, chunks in self._audio.items():
            waiting = sum(c.size for c in chunks) / SAMPLE_RATE
            pending, lag = out.get(stream, (0.0, 0.0))
            out[stream] = (pending + waiting, lag + waiting)
        return out

    async def step(self) -> list[Alert]:
        """Every alert of one step (`steps`), at its end."""
        return [alert async for part in self.steps() for alert in part]

    async def steps(self) -> AsyncIterator[list[Alert]]:
        """One analysis step in every worker process at once, yielding alerts as the
        processes conclude them (`Analyzer.live_step`): the focused streams' first, one
        stream at a time, then the others in groups. Before, a step came back in two
        parts, all the focused streams' alerts then all the others': in bench delay,
        an alert waited 0.16 s for its part (the median, 0.33 s in the second part),
        mostly for other streams' windows and embeddings. Raises BrokenProcessPool if
        a process died (its students' voices died with it); another failure is logged,
        and the other processes' alerts still come out.

        The processes step together: on their own clocks (bench capacity, 50 students)
        they made twice as many smaller steps, which batched worse and kept the event
        loop busier, and analysed 1 window in 3 instead of 2."""
        if not self._lanes or self._inbox is None:
            raise RuntimeError("the voice worker is not running")
        inbox, lanes, step = self._inbox, list(self._lanes), next(self._steps)
        loop = asyncio.get_running_loop()
        futures = [
            loop.run_in_executor(lane.pool, _step, batch, step)
            for lane, batch in zip(lanes, self._batches(), strict=True)
        ]
        waiting = set(range(len(lanes)))  # lanes whose last alerts may still come
        message = asyncio.ensure_future(inbox.get())
        try:
            while waiting:
                running = [futures[i] for i in waiting if not futures[i].done()]
                await asyncio.wait([message, *running], return_when=asyncio.FIRST_COMPLETED)
                for i in list(waiting):
                    if futures[i].done() and (error := futures[i].exception()) is not None:
                        if isinstance(error, BrokenProcessPool):
                            raise error
                        waiting.discard(i)  # it failed before it could say so: logged below
                if not message.done():
                    continue
                lane, of, alerts = message.result()
                message = asyncio.ensure_future(inbox.get())
                if alerts is None:
                    if of == step:
                        waiting.discard(lane)
                elif alerts:  # a failed step's late alerts too: late beats never
                    yield alerts
        finally:
            message.cancel()
        outcomes = await asyncio.gather(*futures, return_exceptions=True)
        done: list[Result] = []
        for lane, outcome in zip(lanes, outcomes, strict=True):
            if isinstance(outcome, BrokenProcessPool):
                raise outcome
            if isinstance(outcome, BaseException):
                log.error("a voice worker's step failed", exc_info=outcome)
                continue
            lane.pace = Pace(outcome.stride, outcome.busy)
            lane.backlog = outcome.backlog
            done.append(outcome)
        self.looks = {k: v for result in done for k, v in result.looks.items()}
        if done:
            self.last = sum((r.stats for r in done), StepStats())
            self.last.seconds = max(r.stats.seconds for r in done)

    def _batches(self) -> list[Batch]:
        """What each process gets at a step: its streams' new samples, ends and
        re-enrolments, gathered since the last step."""
        audio: list[dict[str, np.ndarray]] = [{} for _ in self._lanes]
        closed: list[list[str]] = [[] for _ in self._lanes]
        re_enroll: list[list[str]] = [[] for _ in self._lanes]
        for stream, chunks in self._audio.items():
            if chunks:
                audio[self._home.get(stream, 0)][stream] = np.concatenate(chunks)
        for stream in self._re_enroll:
            re_enroll[self._home.get(stream, 0)].append(stream)
        for stream in self._closed:
            closed[self._home.pop(stream, 0)].append(stream)
        self._audio, self._closed, self._re_enroll = {}, [], []
        return [
            Batch(a, tuple(c), tuple(r)) for a, c, r in zip(audio, closed, re_enroll, strict=True)
        ]


def _pump(
    lane: int,
    alerts: Connection,
    loop: asyncio.AbstractEventLoop,
    inbox: asyncio.Queue[tuple[int, int, list[Alert] | None]],
) -> None:
    """A thread per process: hands what its steps send over to the event loop, until the
    process is gone (the pipe's end)."""
    while True:
        try:
            step, found = alerts.recv()
        except (EOFError, OSError):
            return
        try:
            loop.call_soon_threadsafe(inbox.put_nowait, (lane, step, found))
        except RuntimeError:  # the event loop closed
            return
