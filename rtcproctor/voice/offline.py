"""Analyse a whole recording through the same detector as live, fed in chunks."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from rtcproctor.voice.alerts import Alert
from rtcproctor.voice.analyzer import Analyzer, Prepared
from rtcproctor.voice.audio import SAMPLE_RATE, load_audio
from rtcproctor.voice.detector import DetectorConfig


@dataclass
class Analysis:
    duration: float
    alerts: list[Alert]
    turns: list[tuple[float, float, str]]

    def to_dict(self) -> dict[str, object]:
        return {
            "duration": round(self.duration, 2),
            "alerts": [a.to_dict() for a in self.alerts],
            "turns": [{"start": s, "end": e, "speaker": spk} for s, e, spk in self.turns],
        }


# Windows per segmentation job: small enough for the two threads to share a chunk's
# segmentation evenly, large enough to batch well.
JOB_WINDOWS = 10


def analyze_samples(
    samples: np.ndarray,
    analyzer: Analyzer | None = None,
    stream: str = "file",
    chunk_seconds: float | None = None,
) -> Analysis:
    """Feed `samples` (16 kHz mono) as if live, `chunk_seconds` at a time (by default as
    much as the ring buffer allows), stepping the analyzer after each chunk (the chunk
    size only changes batching, not verdicts)."""
    if analyzer is None:
        analyzer = Analyzer(replace(DetectorConfig(), keep_turns=True))
    det = analyzer.detector(stream)
    c = analyzer.config
    # Two stages hold two chunks at once, and a window's evidence reaches back a few
    # seconds before it: all of that must still be in the ring buffer.
    most = max(c.hop, (c.buffer_seconds - c.window - 2 * c.evidence_pad) / 2)
    chunk_seconds = min(chunk_seconds or most, most)
    chunk = max(1, int(chunk_seconds * SAMPLE_RATE))
    parts = [samples[i : i + chunk] for i in range(0, samples.size, chunk)]
    if _overlapping(analyzer):
        _two_stages(analyzer, stream, parts)
    else:
        for part in parts:
            analyzer.submit(stream, part)
            analyzer.step()
        analyzer.close(stream)
        analyzer.step()
    alerts = sorted({a.id: a for a in det.alerts}.values(), key=lambda a: a.start)
    return Analysis(samples.size / SAMPLE_RATE, alerts, det.speaker_turns())


def _overlapping(analyzer: Analyzer) -> bool:
    """Segment the next chunk while the last one is decided: with two cores or more, at
    full pace (a thinned pace chooses its next window from the last verdict)."""
    import torch

    return torch.get_num_threads() > 1 and analyzer.stride == 1 and analyzer.pacer is None


def _two_stages(analyzer: Analyzer, stream: str, parts: list[np.ndarray]) -> None:
    """Chunk k+1 is segmented on one core while chunk k is decided on the other, which
    then helps with what segmentation is left.

    Both stages are sequences of small operations that two intra-op threads speed up by
    only 1.4x; two single-threaded workers side by side use both cores fully."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(1, initializer=torch.set_num_threads, initargs=(1,)) as pool:
            pending: Prepared | None = None
            for part in [*parts, None]:
                if part is None:
                    analyzer.close(stream)
                else:
                    analyzer.submit(stream, part)
                taken = analyzer.take()
                jobs = _Jobs(analyzer.segmentation_jobs(taken, JOB_WINDOWS))
                helper = pool.submit(jobs.run)
                if pending is not None:
                    analyzer.decide(pending)
                jobs.run()
                helper.result()
                pending = taken
            analyzer.decide(pending)
    finally:
        torch.set_num_threads(threads)


class _Jobs:
    """Calls that any of several threads may take, each once."""

    def __init__(self, jobs: list[Callable[[], None]]) -> None:
        self._jobs = iter(jobs)
        self._lock = threading.Lock()

    def run(self) -> None:
        while True:
            with self._lock:
                job = next(self._jobs, None)
            if job is None:
                return
            job()


def analyze_file(path: str | Path, analyzer: Analyzer | None = None, pace: int = 1) -> Analysis:
    """`pace` N: 1 window in N, as a live server under load (ignored with `analyzer`).
    The file is decoded while the models load."""
    with ThreadPoolExecutor(1) as pool:
        audio = pool.submit(load_audio, path)
        if analyzer is None:
            analyzer = Analyzer(replace(DetectorConfig(), keep_turns=True), stride=pace)
        samples = audio.result()
    return analyze_samples(samples, analyzer, stream=Path(path).stem)
