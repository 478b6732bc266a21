"""Turn any audio into what the models expect: 16 kHz mono float32 in [-1, 1].

Live frames and offline files both pass through `to_mono_16k`, so a stereo phone,
an 8 kHz stream, clipped or NaN-laden samples all reach the detector the same way.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

SAMPLE_RATE = 16_000


def sanitize(samples: np.ndarray) -> np.ndarray:
    """float32, finite, within [-1, 1] (NaN/inf become 0; clipping is kept, not amplified)."""
    out = np.asarray(samples, dtype=np.float32)
    if not np.all(np.isfinite(out)):
        out = np.nan_to_num(out, nan=0.0, posinf=1.0, neginf=-1.0)
    return np.clip(out, -1.0, 1.0)


def resample(samples: np.ndarray, rate: int, target: int = SAMPLE_RATE) -> np.ndarray:
    """Band-limited resampling (torchaudio's sinc interpolation)."""
    if rate == target or samples.size == 0:
        return samples.astype(np.float32, copy=False)
    import torch
    import torchaudio.functional as F

    tensor = torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32))
    return F.resample(tensor, rate, target).numpy()


def to_mono_16k(samples: np.ndarray, rate: int, channels_last: bool = True) -> np.ndarray:
    """Mix channels down (mean) and resample to 16 kHz.

    `samples` is 1-D (mono), or 2-D frames x channels (`channels_last`) or channels x frames.
    Integer PCM is scaled to [-1, 1].
    """
    data = np.asarray(samples)
    if np.issubdtype(data.dtype, np.integer):
        data = data.astype(np.float32) / float(np.iinfo(data.dtype).max)
    data = sanitize(data)
    if data.ndim == 2:
        data = data.mean(axis=1 if channels_last else 0)
    elif data.ndim != 1:
        raise ValueError(f"audio must be 1-D or 2-D, got shape {data.shape}")
    return sanitize(resample(data, int(rate)))


def _load_soundfile(path: Path) -> tuple[np.ndarray, int]:
    import soundfile as sf

    data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    return data, int(rate)


def _load_av(path: Path) -> tuple[np.ndarray, int]:
    """Anything FFmpeg decodes (webm/opus, mp3, m4a, video files...)."""
    import av

    chunks: list[np.ndarray] = []
    with av.open(str(path)) as container:
        if not container.streams.audio:
            raise ValueError(f"{path}: no audio stream")
        resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
        for frame in container.decode(audio=0):
            for out in resampler.resample(frame):
                chunks.append(out.to_ndarray().reshape(-1))
        for out in resampler.resample(None):
            chunks.append(out.to_ndarray().reshape(-1))
    data = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    return data[:, None], SAMPLE_RATE


def load_audio(path: str | Path) -> np.ndarray:
    """Read a file as 16 kHz mono float32, whatever its format, rate or channel count."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(path)
    try:
        data, rate = _load_soundfile(path)
    except Exception:
        data, rate = _load_av(path)
    return to_mono_16k(data, rate)


def write_wav(path: str | Path, samples: np.ndarray, rate: int = SAMPLE_RATE) -> Path:
    """16-bit PCM WAV (plays everywhere, half the size of float)."""
    import soundfile as sf

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), sanitize(samples), rate, subtype="PCM_16")
    return path


def block_rms(samples: np.ndarray, block: int) -> np.ndarray:
    """RMS of consecutive blocks (the trailing partial block is dropped)."""
    n = samples.size // block
    if n == 0:
        return np.zeros(0, np.float32)
    frames = samples[: n * block].reshape(n, block).astype(np.float64)
    return np.sqrt(np.mean(frames * frames, axis=1)).astype(np.float32)


SPEAKING_WITHIN_DB = 20.0


def speaking(voice: np.ndarray, dbfs: float, block: int) -> np.ndarray:
    """Per block of one voice's own track, mixed at `dbfs`: whether it speaks (its RMS
    within SPEAKING_WITHIN_DB of that level). Benchmarks time a second voice from its
    first such block."""
    return block_rms(voice, block) > 10 ** ((dbfs - SPEAKING_WITHIN_DB) / 20)


def loop_speech(
    speech: np.ndarray,
    seconds: float,
    rng: np.random.Generator,
    pauses: tuple[float, float] = (0.2, 0.8),
) -> np.ndarray:
    """`seconds` of one speaker for benchmarks: `speech` looped from a random offset in its
    first half, with a random pause (seconds, uniform in `pauses`) before each repeat."""
    parts = [speech[int(rng.integers(0, max(1, speech.size // 2))) :]]
    total = parts[0].size
    while total < seconds * SAMPLE_RATE:
        pause = np.zeros(int(rng.uniform(*pauses) * SAMPLE_RATE), np.float32)
        parts += [pause, speech]
        total += pause.size + speech.size
    return np.concatenate(parts)[: int(seconds * SAMPLE_RATE)]
