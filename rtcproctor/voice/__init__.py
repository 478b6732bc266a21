"""Voice detector: who speaks in a student's microphone, and when to tell the proctor.

Pure computation (numpy + torch): no sockets, no database, no WebRTC. The same
`Detector` runs live (fed 16 kHz mono float32 chunks by the shadow peer through an
`Analyzer`) and offline (`rtcproctor analyze FILE`, which feeds a file in chunks as
if it were live). Heavy imports (torch, pyannote.audio) happen only when models load.
"""

from __future__ import annotations

from rtcproctor.voice.alerts import Alert, AlertType, write_evidence
from rtcproctor.voice.detector import Detector, DetectorConfig

SAMPLE_RATE = 16_000

__all__ = [
    "SAMPLE_RATE",
    "Alert",
    "AlertType",
    "Detector",
    "DetectorConfig",
    "write_evidence",
]
