"""Who speaks when inside fixed-length windows, for many windows (many students) at once.

pyannote/segmentation-3.0 outputs, per ~17 ms frame, a powerset class (nobody, one of
three local speakers, or a pair of them). Local speakers are only consistent within a
window; linking them across windows is the detector's job.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from rtcproctor.voice.models import Models


@dataclass(frozen=True)
class Activity:
    """Per-frame activity of the window's local speakers (frames x speakers, bool), and
    the model's probability that two of them speak at once (frames,)."""

    frames: np.ndarray
    frame_seconds: float
    overlap: np.ndarray | None = field(default=None, repr=False)

    @property
    def num_speakers(self) -> int:
        return int(self.frames.shape[1])

    def seconds(self) -> np.ndarray:
        """Active duration per local speaker."""
        return self.frames.sum(axis=0) * self.frame_seconds


class Segmenter:
    """Batched sliding-window segmentation; `max_batch` bounds memory per forward pass."""

    def __init__(self, models: Models, max_batch: int = 64) -> None:
        from pyannote.audio.utils.powerset import Powerset

        self.model = models.segmentation
        specs = self.model.specifications
        self.powerset = Powerset(len(specs.classes), specs.powerset_max_classes)
        self._pairs = (self.powerset.mapping.sum(dim=1) > 1).float()  # overlap classes
        self.max_batch = max_batch

    def __call__(self, windows: np.ndarray) -> list[Activity]:
        """`windows`: (batch, samples) float32 at 16 kHz, all the same length."""
        import torch

        if windows.ndim != 2:
            raise ValueError("windows must be (batch, samples)")
        out: list[Activity] = []
        seconds = windows.shape[1] / 16_000
        with torch.inference_mode():
            for i in range(0, windows.shape[0], self.max_batch):
                batch = torch.from_numpy(np.ascontiguousarray(windows[i : i + self.max_batch]))
                # float32 even where bfloat16 is native: at bfloat16 the model claimed
                # overlapped speech in single-speaker audio (3 false alerts in 3.55 h).
                logits = self.model(batch.unsqueeze(1))
                multi = self.powerset.to_multilabel(logits, soft=False).numpy() > 0.5
                overlap = (logits.exp() @ self._pairs).numpy()
                frame_seconds = seconds / multi.shape[1]
                out.extend(
                    Activity(m, frame_seconds, o) for m, o in zip(multi, overlap, strict=True)
                )
        return out
