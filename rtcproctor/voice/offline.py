"""Analyse a whole recording through the same detector as live, fed in chunks."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from rtcproctor.voice.alerts import Alert
from rtcproctor.voice.analyzer import Analyzer
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


def analyze_samples(
    samples: np.ndarray,
    analyzer: Analyzer | None = None,
    stream: str = "file",
    chunk_seconds: float = 20.0,
) -> Analysis:
    """Feed `samples` (16 kHz mono) as if live, `chunk_seconds` at a time, stepping the
    analyzer after each chunk (the chunk size only changes batching, not verdicts)."""
    if analyzer is None:
        analyzer = Analyzer(replace(DetectorConfig(), keep_turns=True))
    det = analyzer.detector(stream)
    chunk = max(1, int(chunk_seconds * SAMPLE_RATE))
    for i in range(0, samples.size, chunk):
        analyzer.submit(stream, samples[i : i + chunk])
        analyzer.step()
    analyzer.close(stream)
    analyzer.step()
    alerts = sorted({a.id: a for a in det.alerts}.values(), key=lambda a: a.start)
    return Analysis(samples.size / SAMPLE_RATE, alerts, det.speaker_turns())


def analyze_file(path: str | Path, analyzer: Analyzer | None = None, pace: int = 1) -> Analysis:
    """`pace` N: 1 window in N, as a live server under load (ignored with `analyzer`)."""
    if analyzer is None:
        analyzer = Analyzer(replace(DetectorConfig(), keep_turns=True), stride=pace)
    return analyze_samples(load_audio(path), analyzer, stream=Path(path).stem)
