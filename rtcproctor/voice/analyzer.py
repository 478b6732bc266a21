"""Batching scheduler: one segmentation forward pass (and one embedding pass) for every
student's ready windows at once.

`submit()` is cheap (appends to a ring buffer under a lock); `step()` does the inference.
Offline (`rtcproctor analyze`) both run in the caller; live, the analyzer lives in the
voice worker process (voice.worker) with a pacer, and takes only the newest windows.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import numpy as np

from rtcproctor.voice.alerts import Alert
from rtcproctor.voice.detector import Detector, DetectorConfig, Window
from rtcproctor.voice.embedding import Embedder
from rtcproctor.voice.models import Models, load_models
from rtcproctor.voice.pacing import Pacer
from rtcproctor.voice.segmentation import Activity, Segmenter

# Live, a stream gives at most this many windows to a step; older ones are skipped.
LIVE_LIMIT = 2


@dataclass
class StepStats:
    """What the last step did (benchmarks and logs)."""

    windows: int = 0
    segmented: int = 0
    embeddings: int = 0
    seconds: float = 0.0
    skipped: int = 0  # windows left out to catch up (live only)


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
    ) -> None:
        self.config = config or DetectorConfig()
        self.models = models or load_models()
        self.segmenter = Segmenter(self.models)
        self.embedder = Embedder(self.models)
        self.max_windows_per_stream = max_windows_per_stream
        self.pacer = pacer  # live only: offline analysis takes every window
        self.stride = stride  # fixed pace when there is no pacer (`analyze --pace`)
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
            return entry

    # ------------------------------------------------------------ worker side
    def step(self) -> list[Alert]:
        """Analyse every ready window of every stream; new or extended alerts out."""
        with self._step_lock:
            t0 = time.perf_counter()
            with self._lock:
                entries = list(self._streams.items())
                closing = set(self._closing)
            batches: list[tuple[_Stream, list[Window]]] = []
            alerts: list[Alert] = []
            stride = self.pacer.stride if self.pacer is not None else self.stride
            skipped_now = 0
            for name, entry in entries:
                with entry.lock:
                    det = entry.detector
                    det.stride = stride
                    skipped = det.windows_skipped
                    if name in closing:
                        wins = det.finish()
                    elif self.pacer is not None:  # live: the present matters, not the backlog
                        wins = det.ready_windows(self.max_windows_per_stream or LIVE_LIMIT, True)
                    else:
                        wins = det.ready_windows(self.max_windows_per_stream)
                    skipped_now += det.windows_skipped - skipped
                    alerts += det.poll_silence() if name not in closing else []
                if wins:
                    entry.taken = wins[-1].end
                    batches.append((entry, wins))
            stats = StepStats(windows=sum(len(w) for _, w in batches))
            activities = self._segment([w for _, wins in batches for w in wins])
            stats.segmented = len(activities)
            # Decisions depend on the previous window's outcome: process each stream's
            # windows in order, in rounds, batching embeddings across streams per round.
            rounds = max((len(w) for _, w in batches), default=0)
            for r in range(rounds):
                todo: list[tuple[_Stream, Window, list[np.ndarray]]] = []
                for entry, wins in batches:
                    if r < len(wins):
                        win = wins[r]
                        with entry.lock:
                            requests = entry.detector.assess(win, activities.get(id(win)))
                        todo.append((entry, win, requests))
                segments = [s for _, _, reqs in todo for s in reqs]
                vectors = self.embedder(segments) if segments else np.zeros((0, 192))
                stats.embeddings += len(segments)
                i = 0
                for entry, win, reqs in todo:
                    with entry.lock:
                        alerts += entry.detector.conclude(win, vectors[i : i + len(reqs)])
                        entry.analysed = max(entry.analysed, win.end)
                    i += len(reqs)
            if closing:
                with self._lock:
                    for name in closing:
                        self._streams.pop(name, None)
                    self._closing -= closing
            stats.seconds = time.perf_counter() - t0
            stats.skipped = skipped_now
            if self.pacer is not None:
                self.pacer.record(stats.seconds, time.monotonic())
            self.last = stats
            return alerts

    def _segment(self, windows: list[Window]) -> dict[int, Activity]:
        """Segmentation for every non-silent window, batched by window length."""
        todo = [w for w in windows if not w.silent]
        out: dict[int, Activity] = {}
        if not todo:
            return out
        by_len: dict[int, list[Window]] = {}
        for w in todo:
            by_len.setdefault(w.samples.size, []).append(w)
        for group in by_len.values():
            acts = self.segmenter(np.stack([w.samples for w in group]))
            for w, a in zip(group, acts, strict=True):
                out[id(w)] = a
        return out
