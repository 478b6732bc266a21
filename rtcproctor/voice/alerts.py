"""What the detector tells the proctor: an `Alert`, and its audio evidence as a WAV."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

import numpy as np

from rtcproctor.voice.audio import SAMPLE_RATE, write_wav


class AlertType(StrEnum):
    MULTIPLE_VOICES = "multiple_voices"
    UNKNOWN_VOICE = "unknown_voice"
    MIC_SILENT = "mic_silent"


_ids = itertools.count(1)


@dataclass
class Alert:
    """One episode of one kind for one stream; times are seconds on that stream's timeline.

    An open alert is extended (same `id`, higher `revision`) when the same kind repeats
    within the cooldown, so a consumer upserts by `id`.
    """

    type: AlertType
    stream: str
    start: float
    end: float
    confidence: float
    evidence: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0, np.float32))
    evidence_start: float = 0.0  # stream time of evidence[0]
    detected_at: float = 0.0  # stream time (audio received) when first raised
    updated_at: float = 0.0  # stream time when last raised or grown
    id: int = field(default_factory=lambda: next(_ids))
    revision: int = 0
    details: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        return {
            "type": str(self.type),
            "start": round(self.start, 2),
            "end": round(self.end, 2),
            "confidence": round(float(self.confidence), 3),
        }


def write_evidence(alert: Alert, directory: str | Path, name: str | None = None) -> Path:
    """Write the alert's audio to `directory/name` (default `<stream>-<type>-<id>.wav`)."""
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in alert.stream) or "stream"
    filename = name or f"{safe}-{alert.type}-{alert.id}.wav"
    return write_wav(Path(directory) / filename, alert.evidence, SAMPLE_RATE)
