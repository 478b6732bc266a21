"""Who speaks when inside fixed-length windows, for many windows (many students) at once.

pyannote/segmentation-3.0 outputs, per ~17 ms frame, a powerset class (nobody, one of
three local speakers, or a pair of them). Local speakers are only consistent within a
window; linking them across windows is the detector's job.

Consecutive windows of one stream overlap by five sixths (6 s windows, 1 s hop), and the
model's first layer, SincNet's band-pass filterbank (a quarter of its cost), is a strided
convolution: over a stretch holding several windows it is computed once and each window
takes its slice. The waveform normalisation in front of it is per window, but affine, so
it is applied to the slice instead (conv(a(x - m) + b) = a(conv(x) - mK) + bK, with K
the filters' sums). Everything after it runs per window, batched across streams.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

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


@dataclass(frozen=True)
class Run:
    """Windows of `window` samples starting at `offsets` inside one stretch of audio."""

    audio: np.ndarray
    offsets: Sequence[int]
    window: int

    def slices(self) -> Iterator[np.ndarray]:
        for off in self.offsets:
            yield self.audio[off : off + self.window]


class _Staged:
    """PyanNet cut after SincNet's filterbank, so the filterbank can run over whole runs.
    None of it applies to other architectures (`Segmenter` then calls the model whole)."""

    def __init__(self, model: Any, autocast: Callable[[], Any]) -> None:
        import torch

        sincnet = model.sincnet
        encoder = sincnet.conv1d[0]
        self.model = model
        self.sincnet = sincnet
        self.autocast = autocast
        with torch.inference_mode():
            self.filters = encoder.get_filters().detach().clone()
        self.sums = self.filters.sum(dim=(1, 2)).view(1, -1, 1)
        self.stride = int(encoder.stride)
        self.kernel = int(self.filters.shape[-1])
        norm = sincnet.wav_norm1d
        self.eps = float(norm.eps)
        self.gain = float(norm.weight.detach()) if norm.affine else 1.0
        self.bias = float(norm.bias.detach()) if norm.affine else 0.0

    @staticmethod
    def supports(model: Any) -> bool:
        sincnet = getattr(model, "sincnet", None)
        hparams = getattr(model, "hparams", {})
        if sincnet is None or not hasattr(sincnet, "wav_norm1d"):
            return False
        encoder = sincnet.conv1d[0]
        return (
            type(getattr(encoder, "filterbank", None)).__name__ == "ParamSincFB"
            and int(getattr(encoder, "padding", -1)) == 0
            and not getattr(encoder, "is_pinv", False)
            and bool(hparams.get("lstm", {}).get("monolithic", False))
            and sincnet.wav_norm1d.weight is not None
            and sincnet.wav_norm1d.weight.numel() == 1
        )

    def filterbank(self, run: Run) -> Any:
        """SincNet's rectified filterbank output, (windows, 80, frames), for `run`."""
        import torch
        import torch.nn.functional as F

        frames = (run.window - self.kernel) // self.stride + 1
        offsets = list(run.offsets)
        waves = torch.from_numpy(np.stack(list(run.slices())))
        lo = min(offsets)
        steps = {b - a for a, b in itertools.pairwise(offsets)}
        if len(offsets) > 1 and len(steps) == 1 and all(off % self.stride == 0 for off in offsets):
            # A regular run: the filterbank once over the stretch, windows as strided views.
            span = np.ascontiguousarray(run.audio[lo : max(offsets) + run.window])
            wave = torch.from_numpy(span).view(1, 1, -1)
            shared = F.conv1d(wave, self.filters, stride=self.stride)
            channels, length = shared.shape[1:]
            raw = shared.as_strided(
                (len(offsets), channels, frames), (steps.pop() // self.stride, length, 1)
            )
        else:
            raw = F.conv1d(waves.unsqueeze(1), self.filters, stride=self.stride)
        var, mean = torch.var_mean(waves, dim=1, unbiased=False)
        scale = (self.gain / torch.sqrt(var + self.eps)).view(-1, 1, 1)
        shift = (self.bias - scale * mean.view(-1, 1, 1)) * self.sums
        return torch.addcmul(shift, raw, scale).abs_()  # SincNet rectifies its filterbank

    def rest(self, filtered: Any) -> Any:
        """(batch, 80, frames) rectified filterbank -> (batch, frames', classes) log-probs."""
        import torch.nn.functional as F

        s, m = self.sincnet, self.model
        out = F.leaky_relu(s.norm1d[0](s.pool1d[0](filtered)))
        for conv, pool, norm in zip(s.conv1d[1:], s.pool1d[1:], s.norm1d[1:], strict=True):
            out = F.leaky_relu(norm(pool(conv(out))))
        # Only the LSTM (half the cost) in bfloat16 where chosen: the whole model in
        # bfloat16 claimed overlapped speech in single-speaker audio (3 false alerts in
        # 3.55 h); the LSTM alone gave the float32 verdicts (0 in 5.55 h).
        with self.autocast():
            out, _ = m.lstm(out.transpose(1, 2))
        for linear in m.linear:
            out = F.leaky_relu(linear(out.float()))
        return m.activation(m.classifier(out))


class Segmenter:
    """Batched sliding-window segmentation; `max_batch` bounds memory per forward pass."""

    def __init__(self, models: Models, max_batch: int = 16) -> None:
        from pyannote.audio.utils.powerset import Powerset

        self.model = models.segmentation
        specs = self.model.specifications
        self.powerset = Powerset(len(specs.classes), specs.powerset_max_classes)
        self._pairs = (self.powerset.mapping.sum(dim=1) > 1).float()  # overlap classes
        self.max_batch = max_batch
        self._staged = (
            _Staged(self.model, models.autocast) if _Staged.supports(self.model) else None
        )

    def __call__(self, windows: np.ndarray) -> list[Activity]:
        """`windows`: (batch, samples) float32 at 16 kHz, all the same length."""
        if windows.ndim != 2:
            raise ValueError("windows must be (batch, samples)")
        runs = [Run(w, [0], windows.shape[1]) for w in windows]
        return [a for acts in self.runs(runs) for a in acts]

    def runs(self, runs: Sequence[Run]) -> list[list[Activity]]:
        """Activities of every window of every run (all runs' windows the same length)."""
        import torch

        if len({r.window for r in runs}) > 1:
            raise ValueError("all windows of one call must have the same length")
        counts = [len(r.offsets) for r in runs]
        flat: list[Activity] = []
        with torch.inference_mode():
            if self._staged is None:
                windows = [w for r in runs for w in r.slices()]
                for i in range(0, len(windows), self.max_batch):
                    batch = torch.from_numpy(np.stack(windows[i : i + self.max_batch]))
                    flat += self._activities(self.model(batch.unsqueeze(1)), runs[0].window)
            else:
                banks = (self._staged.filterbank(run) for run in runs)
                for bank in _rebatch(banks, self.max_batch):
                    flat += self._activities(self._staged.rest(bank), runs[0].window)
        out, i = [], 0
        for n in counts:
            out.append(flat[i : i + n])
            i += n
        return out

    def _activities(self, logits: Any, window: int) -> list[Activity]:
        multi = self.powerset.to_multilabel(logits, soft=False).numpy() > 0.5
        overlap = (logits.exp() @ self._pairs).numpy()
        frame_seconds = window / 16_000 / multi.shape[1]
        return [Activity(m, frame_seconds, o) for m, o in zip(multi, overlap, strict=True)]


def _rebatch(tensors: Iterable[Any], size: int) -> Iterator[Any]:
    """Tensors of any lengths (dim 0) in, tensors of `size` (the last one shorter) out."""
    import torch

    pending: list[Any] = []
    count = 0
    for t in tensors:
        pending.append(t)
        count += len(t)
        if count < size:
            continue
        joined = pending[0] if len(pending) == 1 else torch.cat(pending)
        full = count - count % size
        for i in range(0, full, size):
            yield joined[i : i + size]
        pending = [joined[full:]] if count % size else []
        count %= size
    if pending:
        yield pending[0] if len(pending) == 1 else torch.cat(pending)
