"""Keep live analysis in real time when the machine cannot afford every window.

A server that falls behind is worse than one that looks less often: its alerts come
later and later, and after the ring buffer's length it skips audio without a trace.
So when the analysis worker is busy nearly all the time, every stream's windows are
thinned (the stride: every 2nd, 3rd, 4th hop) and identity checks spaced out alike;
when the load falls, full pace comes back. The stride applies to all streams at once,
because one batched step serves them all. Offline analysis never paces.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

# 1 window in 4 at most: with 6 s windows and a 1 s hop, consecutive windows still
# overlap by 2 s, which links one voice from window to window without an embedding.
MAX_STRIDE = 4


@dataclass
class Pacer:
    """Chooses the stride from the worker's busy fraction, measured over `period` seconds.

    high: busy above this fraction means the next window may not be done in time: thin.
    low: restore a finer stride only if the busy fraction it would bring (cost scales
        about as 1/stride) stays under this; the gap between the two avoids flapping.
    """

    max_stride: int = MAX_STRIDE
    high: float = 0.85
    low: float = 0.6
    period: float = 10.0
    stride: int = 1
    _began: float | None = field(default=None, repr=False)
    _busy: float = field(default=0.0, repr=False)
    busy_fraction: float = 0.0

    def record(self, busy: float, now: float) -> int:
        """One step took `busy` seconds and ended at `now` (monotonic); the stride out."""
        if self._began is None:
            self._began = now - busy
        self._busy += busy
        elapsed = now - self._began
        # One step as long as half a period is reason enough: the backlog grows meanwhile.
        if elapsed < self.period and busy < self.period / 2:
            return self.stride
        self.busy_fraction = min(1.0, self._busy / elapsed)
        self._began, self._busy = now, 0.0
        before = self.stride
        if self.busy_fraction > self.high and self.stride < self.max_stride:
            self.stride += 1
        elif self.stride > 1:
            finer = self.busy_fraction * self.stride / (self.stride - 1)
            if finer < self.low:
                self.stride -= 1
        if self.stride != before:
            level = logging.WARNING if self.stride > before else logging.INFO
            log.log(
                level,
                "voice analysis %s busy: every stream now analysed at 1 window in %d",
                f"{self.busy_fraction:.0%}",
                self.stride,
            )
        return self.stride
