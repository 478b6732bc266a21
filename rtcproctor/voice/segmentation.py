"""Who speaks when inside fixed-length windows, for many windows (many students) at once.

pyannote/segmentation-3.0 outputs, per ~17 ms frame, a powerset class (nobody, one of
three local speakers, or a pair of them). Local speakers are only consistent within a
window; linking them across windows is the detector's job.

Consecutive windows of one stream overlap by five sixths (6 s windows, 1 s hop), and the
model's first layer, SincNet's band-pass filterbank (a quarter of its cost), is a strided
convolution: over a stretch holding several windows it is computed once, and so is the
max-pooling behind it, and each window takes its slice. The waveform normalisation in
front of it is per window, but affine, so it is applied to the slice instead
(conv(a(x - m) + b) = a(conv(x) - mK) + bK, with K the filters' sums), with the window's
mean and variance from running sums. Everything after the first pooling runs per window,
batched across streams.
"""

from __future__ import annotations

import itertools
import math
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
        self.pool = int(sincnet.pool1d[0].kernel_size)
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
        pool = sincnet.pool1d[0]
        return (
            type(getattr(encoder, "filterbank", None)).__name__ == "ParamSincFB"
            and int(getattr(encoder, "padding", -1)) == 0
            and not getattr(encoder, "is_pinv", False)
            and bool(hparams.get("lstm", {}).get("monolithic", False))
            and sincnet.wav_norm1d.weight is not None
            and sincnet.wav_norm1d.weight.numel() == 1
            and type(pool).__name__ == "MaxPool1d"
            and _plain_pool(pool)
        )

    def front(self, run: Run) -> Any:
        """SincNet's filterbank, rectified and max-pooled, (windows, 80, frames), for `run`.

        A regular run filters and pools its stretch once. The per-window affine (the
        waveform normalisation carried through the filters) then comes after the
        pooling: |a*x + b| is largest over a pool at the pool's largest or smallest x,
        and rounding keeps that order, so it gives the values of pooling after the
        affine to the bit, from a third of the data."""
        import torch

        frames = (run.window - self.kernel) // self.stride + 1
        offsets = list(run.offsets)
        lo = min(offsets)
        steps = {b - a for a, b in itertools.pairwise(offsets)}
        if len(offsets) > 1 and len(steps) == 1 and all(off % self.stride == 0 for off in offsets):
            span = np.ascontiguousarray(run.audio[lo : max(offsets) + run.window])
            shared = self._filter(torch.from_numpy(span).view(1, 1, -1))
            step = steps.pop() // self.stride
            # Pooled at every phase the windows start on (all three at a 1 s hop).
            phase = math.gcd(step, self.pool)
            top, bottom = _extremes(shared, self.pool, phase)
            shape = (len(offsets), shared.shape[1], frames // self.pool)
            strides = (step // phase, top.shape[-1], self.pool // phase)
            top, bottom = top.as_strided(shape, strides), bottom.as_strided(shape, strides)
            scale, shift = self._affine(*_window_stats(span, [o - lo for o in offsets], run.window))
            out = torch.addcmul(shift, top, scale).abs_()
            return torch.maximum(out, torch.addcmul(shift, bottom, scale).abs_(), out=out)
        waves = torch.from_numpy(np.stack(list(run.slices())))
        var, mean = torch.var_mean(waves, dim=1, unbiased=False)
        scale, shift = self._affine(mean, var)
        raw = self._filter(waves.unsqueeze(1))
        return self.sincnet.pool1d[0](torch.addcmul(shift, raw, scale).abs_())

    def _affine(self, mean: Any, var: Any) -> tuple[Any, Any]:
        """Per window, the waveform normalisation as seen through the filters."""
        import torch

        scale = (self.gain / torch.sqrt(var + self.eps)).view(-1, 1, 1)
        return scale, (self.bias - scale * mean.view(-1, 1, 1)) * self.sums

    def _filter(self, waves: Any) -> Any:
        import torch.nn.functional as F

        return F.conv1d(waves, self.filters, stride=self.stride)

    def rest(self, front: Any) -> Any:
        """(batch, 80, frames) from `front` -> (batch, frames', classes) log-probs."""
        import torch.nn.functional as F

        s, m = self.sincnet, self.model
        out = F.leaky_relu(s.norm1d[0](front))
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
                banks = (self._staged.front(run) for run in runs)
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


def _plain_pool(pool: Any) -> bool:
    """A max pool whose windows tile the frames: kernel = stride, no padding or dilation."""

    def one(value: Any) -> int:
        return int(value[0] if isinstance(value, tuple) else value)

    return (
        one(pool.kernel_size) == one(pool.stride or pool.kernel_size)
        and one(pool.padding) == 0
        and one(pool.dilation) == 1
        and not pool.ceil_mode
    )


def _extremes(x: Any, size: int, step: int) -> tuple[Any, Any]:
    """Max and min over the last dim's windows of `size` frames, every `step` frames."""
    import torch

    count = (x.shape[-1] - size) // step + 1
    views = [x[..., i : i + step * (count - 1) + 1 : step] for i in range(size)]
    top = views[0].clone(memory_format=torch.contiguous_format)
    bottom = top.clone()
    for v in views[1:]:
        torch.maximum(top, v, out=top)
        torch.minimum(bottom, v, out=bottom)
    return top, bottom


def _window_stats(span: np.ndarray, starts: list[int], size: int) -> tuple[Any, Any]:
    """Mean and (biased) variance of `span[s : s + size]` for each start, from running
    sums in float64: a run's windows share most of their samples."""
    import torch

    x = span.astype(np.float64)
    first = np.concatenate([[0.0], np.cumsum(x)])
    second = np.concatenate([[0.0], np.cumsum(x * x)])
    at = np.asarray(starts)
    mean = (first[at + size] - first[at]) / size
    var = np.maximum((second[at + size] - second[at]) / size - mean * mean, 0.0)
    return torch.from_numpy(mean.astype(np.float32)), torch.from_numpy(var.astype(np.float32))
