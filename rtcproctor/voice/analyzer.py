"""Batching scheduler: one segmentation forward pass (and one embedding pass) for every
student's ready windows at once.

`submit()` is cheap (appends to a ring buffer under a lock); `step()` does the inference.
Offline (`rtcproctor analyze`) both run in the caller; live, each voice worker process
holds one (voice.worker) with a pacer, which takes only the newest windows.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial

import numpy as np

from rtcproctor.voice.alerts import Alert
from rtcproctor.voice.audio import SAMPLE_RATE
from rtcproctor.voice.detector import Detector, DetectorConfig, Window
from rtcproctor.voice.embedding import Embedder
from rtcproctor.voice.models import Models, load_models
from rtcproctor.voice.pacing import Pacer
from rtcproctor.voice.segmentation import Activity, Run, Segmenter

# Live, a stream gives at most this many windows to a step; older ones are skipped.
LIVE_LIMIT = 2
# Live, a step concludes the streams in groups of about this many windows and hands
# each group's alerts out at once, instead of every alert at the step's end: an alert
# no longer waits for the other streams' windows. Segmentation in batches of 8 windows
# costs 12 ms a window, against 16 ms one at a time and 11.6 ms in batches of 24.
GROUP_WINDOWS = 8
# A stream with this many windows in one step has its embeddings computed ahead.
RUN_AHEAD_MIN = 3
# Forks run ahead up to this many times before the real pass, each with the embeddings
# the last ones asked for: a surprise (a voice that did not match, looked at again) then
# costs a place in the next batch, not an embedding alone and a fresh fork.
AHEAD_PASSES = 3


@dataclass
class StepStats:
    """What the last step did (benchmarks and logs)."""

    windows: int = 0
    segmented: int = 0
    embeddings: int = 0
    seconds: float = 0.0
    skipped: int = 0  # windows left out to catch up (live only)

    def __add__(self, other: StepStats) -> StepStats:
        return StepStats(
            self.windows + other.windows,
            self.segmented + other.segmented,
            self.embeddings + other.embeddings,
            self.seconds + other.seconds,
            self.skipped + other.skipped,
        )


@dataclass
class Prepared:
    """Windows taken and segmented by `Analyzer.prepare()`, for `Analyzer.decide()`."""

    closing: set[str]
    batches: list[tuple[_Stream, list[Window]]] = field(default_factory=list)
    activities: dict[int, Activity] = field(default_factory=dict)
    alerts: list[Alert] = field(default_factory=list)
    stats: StepStats = field(default_factory=StepStats)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


@dataclass
class _Stream:
    detector: Detector
    lock: threading.Lock = field(default_factory=threading.Lock)
    taken: float = 0.0  # seconds: end of the last window handed to a step
    analysed: float = 0.0  # seconds: end of the last window concluded


class Analyzer:
    """Many students' detectors, one batched inference per `step()`."""

    def __init__(
        self,
        config: DetectorConfig | None = None,
        models: Models | None = None,
        max_windows_per_stream: int | None = None,
        pacer: Pacer | None = None,
        stride: int = 1,
        speculate: bool = True,
        live: bool | None = None,
    ) -> None:
        self.config = config or DetectorConfig()
        self.models = models or load_models()
        self.segmenter = Segmenter(self.models)
        self.embedder = Embedder(self.models)
        self.max_windows_per_stream = max_windows_per_stream
        self.pacer = pacer  # live only: offline analysis takes every window
        self.stride = stride  # fixed pace when there is no pacer (`analyze --pace`)
        self.speculate = speculate  # embed ahead for streams with many windows a step
        # Windows taken as the audio comes, each concluded before the next is taken (a
        # server, or `bench voice` feeding it in chunks): early second looks are possible
        # (DetectorConfig.second_look). By default, live if paced.
        self.live = pacer is not None if live is None else live
        self._streams: dict[str, _Stream] = {}
        self._lock = threading.Lock()  # guards the dict, not the detectors
        self._step_lock = threading.Lock()  # one step at a time
        self._closing: set[str] = set()
        self.last = StepStats()

    # ------------------------------------------------------------ called by the peer
    def submit(self, stream: str, samples: np.ndarray) -> None:
        """Append 16 kHz mono float32 samples for `stream` (creates it on first use)."""
        entry = self._entry(stream)
        with entry.lock:
            entry.detector.push(samples)

    def re_enroll(self, stream: str) -> None:
        entry = self._entry(stream)
        with entry.lock:
            entry.detector.re_enroll()

    def close(self, stream: str) -> None:
        """The stream ended: its last partial window is analysed at the next step, then
        the stream is forgotten."""
        with self._lock:
            if stream in self._streams:
                self._closing.add(stream)

    def detector(self, stream: str) -> Detector:
        return self._entry(stream).detector

    def streams(self) -> list[str]:
        with self._lock:
            return list(self._streams)

    def looks(self) -> dict[str, float]:
        """Streams awaiting an early second look: the stream time its window completes."""
        with self._lock:
            entries = list(self._streams.items())
        return {name: due for name, e in entries if (due := e.detector.look_due) is not None}

    def backlog(self) -> dict[str, tuple[float, float]]:
        """Per stream: (seconds received but not yet taken by a step, seconds received
        after the end of the analysed audio). Read without the stream locks so a scrape
        never waits for a step."""
        with self._lock:
            entries = list(self._streams.items())
        out: dict[str, tuple[float, float]] = {}
        for name, entry in entries:
            now = entry.detector.now
            out[name] = (max(0.0, now - entry.taken), max(0.0, now - entry.analysed))
        return out

    def _entry(self, stream: str) -> _Stream:
        with self._lock:
            entry = self._streams.get(stream)
            if entry is None:
                entry = self._streams[stream] = _Stream(Detector(stream, self.config))
                entry.detector.live = self.live
            return entry

    # ------------------------------------------------------------ worker side
    def step(self, focused: bool = False) -> list[Alert]:
        """Analyse every ready window of every stream (`focused`: only of the streams
        where a second voice may be starting, `Detector.focused`); new or extended
        alerts out."""
        with self._step_lock:
            return self.decide(self.prepare(focused))

    def live_step(self, emit: Callable[[list[Alert]], None]) -> StepStats:
        """A live step, as `step()` but handing alerts to `emit` as they are concluded:
        first the windows of the focused streams (`Detector.focused`: a second voice may
        be starting), one stream at a time, then the other streams' windows in groups
        of about GROUP_WINDOWS. Returns what the whole step did (also in `last`)."""
        with self._step_lock:
            total = StepStats()
            for focused in (True, False):
                taken = self.take(focused)
                if not (taken.batches or taken.alerts or taken.closing):
                    total += taken.stats
                    continue
                for group in _groups(taken, 1 if focused else GROUP_WINDOWS):
                    for job in self.segmentation_jobs(group):
                        job()
                    alerts = self.decide(group)
                    total += group.stats
                    if alerts:
                        emit(alerts)
            self.last = total
            return total

    def prepare(self, focused: bool = False) -> Prepared:
        """The first half of a step: take the ready windows (as `step`) and segment them."""
        prepared = self.take(focused)
        for job in self.segmentation_jobs(prepared):
            job()
        return prepared

    def take(self, focused: bool = False) -> Prepared:
        """Every stream's ready windows (`focused`: only the focused streams', and none
        of a closing stream), not yet segmented. Offline analysis segments them
        (`segmentation_jobs`) on one core while `decide()` concludes the previous ones
        on the other (voice.offline); every other caller uses `step()`."""
        t0 = time.perf_counter()
        with self._lock:
            entries = list(self._streams.items())
            ending = set(self._closing)
        closing = set() if focused else ending
        out = Prepared(closing=closing)
        stride = self.pacer.stride if self.pacer is not None else self.stride
        for name, entry in entries:
            with entry.lock:
                det = entry.detector
                if focused and (name in ending or not det.focused):
                    continue
                det.stride = stride
                skipped = det.windows_skipped
                if name in closing:
                    wins = det.finish()
                elif self.pacer is not None:  # live: the present matters, not the backlog
                    wins = det.ready_windows(self.max_windows_per_stream or LIVE_LIMIT, True)
                else:
                    wins = det.ready_windows(self.max_windows_per_stream)
                out.stats.skipped += det.windows_skipped - skipped
                if not focused and name not in closing:  # in the main part of a step only
                    out.alerts += det.poll_silence()
            if wins:
                entry.taken = wins[-1].end
                out.batches.append((entry, wins))
        out.stats.windows = sum(len(w) for _, w in out.batches)
        out.stats.seconds = time.perf_counter() - t0
        return out

    def segmentation_jobs(
        self, prepared: Prepared, windows_per_job: int | None = None
    ) -> list[Callable[[], None]]:
        """Calls that segment the prepared windows (every non-silent one), each at most
        `windows_per_job` of them, batched by window length; each stream's overlapping
        windows go as runs (see voice.segmentation). Any thread may run any of them."""
        todo = [w for _, wins in prepared.batches for w in wins if not w.silent]
        by_len: dict[int, list[tuple[Run, list[Window]]]] = {}
        for run, wins in _runs(todo, windows_per_job):
            by_len.setdefault(run.window, []).append((run, wins))
        limit = windows_per_job or len(todo) or 1
        groups: list[list[tuple[Run, list[Window]]]] = []
        for runs in by_len.values():
            count = limit  # start a new group for each window length
            for run, wins in runs:
                if count + len(wins) > limit:
                    groups.append([])
                    count = 0
                groups[-1].append((run, wins))
                count += len(wins)

        def job(group: list[tuple[Run, list[Window]]]) -> None:
            t0 = time.perf_counter()
            results = self.segmenter.runs([run for run, _ in group])
            for (_, wins), acts in zip(group, results, strict=True):
                for w, a in zip(wins, acts, strict=True):
                    prepared.activities[id(w)] = a
            with prepared.lock:
                prepared.stats.segmented += sum(len(w) for _, w in group)
                prepared.stats.seconds += time.perf_counter() - t0

        return [partial(job, group) for group in groups]

    def decide(self, prepared: Prepared) -> list[Alert]:
        """The second half of a step: verdicts for the prepared windows, in order."""
        t0 = time.perf_counter()
        stats, activities, alerts = prepared.stats, prepared.activities, prepared.alerts
        # Decisions depend on the previous window's outcome, so each stream's windows
        # go in order. A stream with many windows in this step runs ahead on its own;
        # the others go in rounds, one window each, batching embeddings across them.
        short: list[tuple[_Stream, list[Window]]] = []
        for entry, wins in prepared.batches:
            if self.speculate and len(wins) >= RUN_AHEAD_MIN:
                alerts += self._run_ahead(entry, wins, activities, stats)
            else:
                short.append((entry, wins))
        rounds = max((len(w) for _, w in short), default=0)
        for r in range(rounds):
            todo: list[tuple[_Stream, Window, list[np.ndarray]]] = []
            for entry, wins in short:
                if r < len(wins):
                    win = wins[r]
                    with entry.lock:
                        requests = entry.detector.assess(win, activities.get(id(win)))
                    todo.append((entry, win, requests))
            segments = [s for _, _, reqs in todo for s in reqs]
            vectors = self._embed(segments)
            stats.embeddings += len(segments)
            i = 0
            for entry, win, reqs in todo:
                with entry.lock:
                    alerts += entry.detector.conclude(win, vectors[i : i + len(reqs)])
                    entry.analysed = max(entry.analysed, win.end)
                i += len(reqs)
        if prepared.closing:
            with self._lock:
                for name in prepared.closing:
                    self._streams.pop(name, None)
                self._closing -= prepared.closing
        stats.seconds += time.perf_counter() - t0
        if self.pacer is not None:
            self.pacer.record(stats.seconds, time.monotonic())
        self.last = stats
        return alerts

    def _run_ahead(
        self,
        entry: _Stream,
        wins: list[Window],
        activities: dict[int, Activity],
        stats: StepStats,
    ) -> list[Alert]:
        """Conclude a stream's many windows, embedding ahead in batches.

        Each window's decisions depend on the last one's, so a stream's identity checks
        come one at a time, and one embedding alone costs two to three times its share
        of a batch: offline, where a step holds 39 s of one stream, that was most of
        `analyze`'s time. So a fork of the detector runs the remaining windows ahead,
        assuming that every voice it embeds is the one it expects (the student: true but
        for a few windows an hour), and every segment it asks for is embedded in one
        batch. A new fork then runs with those embeddings, and whatever it asks for that
        the first did not (a second look at a voice that did not match) goes in a second
        batch, and so on (AHEAD_PASSES). The real pass takes its embeddings from there; at the
        first segment no fork foresaw, it embeds what it lacks and forks again from the
        real state. The decisions are those of the window-by-window pass (up to the
        last digits of batched arithmetic; a test compares them).
        """
        alerts: list[Alert] = []
        ready: dict[bytes, np.ndarray] = {}
        i = 0
        while i < len(wins):
            for _ in range(AHEAD_PASSES):
                wanted = self._fork_ahead(entry, wins[i:], activities, ready)
                if not wanted:
                    break
                ready.update(zip(wanted, self._embed(list(wanted.values())), strict=True))
                stats.embeddings += len(wanted)
            while i < len(wins):
                win = wins[i]
                i += 1
                with entry.lock:
                    det = entry.detector
                    segments = det.assess(win, activities.get(id(win)))
                    keys = [_key(seg) for seg in segments]
                    missing = [seg for seg, k in zip(segments, keys, strict=True) if k not in ready]
                    if missing:
                        ready.update(zip(map(_key, missing), self.embedder(missing), strict=True))
                        stats.embeddings += len(missing)
                    vectors = [ready[k] for k in keys]
                    alerts += det.conclude(win, np.stack(vectors) if keys else self._embed([]))
                    entry.analysed = max(entry.analysed, win.end)
                if missing:
                    break  # the fork went another way from here: fork again
        return alerts

    def _fork_ahead(
        self,
        entry: _Stream,
        wins: list[Window],
        activities: dict[int, Activity],
        ready: dict[bytes, np.ndarray],
    ) -> dict[bytes, np.ndarray]:
        """Run a fork over `wins` with the embeddings in `ready`, and the expected voice
        for the rest; returns the segments it asked for that `ready` lacks."""
        with entry.lock:
            ahead = entry.detector.fork()
        wanted: dict[bytes, np.ndarray] = {}
        for win in wins:
            trial = replace(win, speakers=[], links={}, requests=[], since={})
            segments = ahead.assess(trial, activities.get(id(win)))
            vectors = ahead.expected(len(segments), self.embedder.dim)
            for j, seg in enumerate(segments):
                if (key := _key(seg)) in ready:
                    vectors[j] = ready[key]
                else:
                    wanted.setdefault(key, seg)
            ahead.conclude(trial, vectors)
        return wanted

    def _embed(self, segments: list[np.ndarray]) -> np.ndarray:
        """Embeddings of `segments`; no model call for none."""
        if not segments:
            return np.zeros((0, self.embedder.dim), np.float32)
        return self.embedder(segments)


def _groups(prepared: Prepared, windows: int) -> list[Prepared]:
    """`prepared` cut into parts of whole streams, each of about `windows` windows (one
    stream at least), in order. The first part carries what was taken besides windows
    (silence alerts, the time taking took), the last the streams to forget once their
    windows are concluded."""
    parts: list[Prepared] = []
    count = windows
    for entry, wins in prepared.batches:
        if count + len(wins) > windows:
            parts.append(Prepared(closing=set()))
            count = 0
        parts[-1].batches.append((entry, wins))
        parts[-1].stats.windows += len(wins)
        count += len(wins)
    if not parts:
        parts.append(Prepared(closing=set()))
    first = parts[0]
    first.alerts += prepared.alerts
    first.stats.seconds += prepared.stats.seconds
    first.stats.skipped += prepared.stats.skipped
    parts[-1].closing = prepared.closing
    return parts


def _runs(windows: list[Window], limit: int | None = None) -> list[tuple[Run, list[Window]]]:
    """Consecutive windows of one stream that overlap (same length, samples that agree)
    joined into runs (of at most `limit` windows) over their common stretch of audio;
    any other window alone."""
    out: list[tuple[Run, list[Window]]] = []
    current: list[Window] = []
    parts: list[np.ndarray] = []
    offsets: list[int] = []

    def flush() -> None:
        if current:
            out.append(
                (
                    Run(np.concatenate(parts), offsets.copy(), current[0].samples.size),
                    current.copy(),
                )
            )
        current.clear()
        parts.clear()
        offsets.clear()

    for w in windows:
        if limit is not None and len(current) >= limit:
            flush()
        if current:
            prev = current[-1]
            shift = round((w.start - prev.start) * SAMPLE_RATE)
            size = w.samples.size
            if (
                w.stream != prev.stream
                or size != prev.samples.size
                or not 0 < shift < size
                or not np.array_equal(w.samples[: size - shift], prev.samples[shift:])
            ):
                flush()
            else:
                parts.append(w.samples[size - shift :])
                offsets.append(offsets[-1] + shift)
                current.append(w)
                continue
        current.append(w)
        parts.append(w.samples)
        offsets.append(0)
    flush()
    return out


def _key(segment: np.ndarray) -> bytes:
    """Identifies a segment's samples (the run-ahead and the real pass cut the same ones)."""
    return hashlib.blake2b(np.ascontiguousarray(segment).tobytes(), digest_size=16).digest()
