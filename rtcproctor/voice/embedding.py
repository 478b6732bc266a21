"""Speaker embeddings (CAM++ by default), batched, L2-normalised.

One embedding costs ~0.1-0.2 s of CPU, ten times a segmentation window, so the detector
asks for them only to enroll a student, to confirm a suspected second voice, or for a
periodic identity check. Segments are cropped to a few length buckets so that one
forward pass serves several segments without padding (padding would bias the stats pool).
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from rtcproctor.voice.models import CAMPPLUS_DIM, Models

SAMPLE_RATE = 16_000
BUCKET = SAMPLE_RATE // 2  # crop lengths to multiples of 0.5 s so segments batch together


class Embedder:
    def __init__(self, models: Models, max_seconds: float = 6.0, min_seconds: float = 0.5):
        self.models = models
        self.model = models.embedding
        self.kind = models.embedding_kind
        # pyannote's embedding models say their size; CAM++ does not.
        self.dim = int(getattr(self.model, "dimension", CAMPPLUS_DIM))
        self.max_samples = int(max_seconds * SAMPLE_RATE)
        self.min_samples = int(min_seconds * SAMPLE_RATE)
        self.calls = 0  # number of segments embedded (for benchmarks)

    def _features(self, batch: np.ndarray):
        import torch
        import torchaudio.compliance.kaldi as kaldi

        feats = []
        for wave in batch:
            x = torch.from_numpy(wave).unsqueeze(0) * 32768.0
            f = kaldi.fbank(x, num_mel_bins=80, sample_frequency=SAMPLE_RATE, dither=0.0)
            feats.append(f - f.mean(dim=0, keepdim=True))
        return torch.stack(feats)

    def __call__(self, segments: list[np.ndarray]) -> np.ndarray:
        """(n, dim) unit vectors, one per segment (each at least `min_seconds` long, padded
        by repetition if shorter)."""
        import torch

        if not segments:
            return np.zeros((0, self.dim), np.float32)
        prepared: list[np.ndarray] = []
        for seg in segments:
            seg = np.asarray(seg, np.float32)
            if seg.size < self.min_samples:
                reps = int(np.ceil(self.min_samples / max(seg.size, 1)))
                seg = np.tile(seg if seg.size else np.zeros(1, np.float32), reps)
            length = min(seg.size, self.max_samples)
            length = max(self.min_samples, (length // BUCKET) * BUCKET)
            start = (seg.size - length) // 2
            prepared.append(seg[start : start + length])
        groups: dict[int, list[int]] = defaultdict(list)
        for i, seg in enumerate(prepared):
            groups[seg.size].append(i)
        result: list[np.ndarray | None] = [None] * len(prepared)
        with torch.inference_mode():
            for indices in groups.values():
                batch = np.stack([prepared[i] for i in indices])
                if self.kind == "campplus":
                    inputs = self._features(batch)
                else:
                    inputs = torch.from_numpy(batch).unsqueeze(1)
                with self.models.autocast():
                    emb = self.model(inputs)
                emb = torch.nn.functional.normalize(emb.float(), dim=-1).numpy()
                for j, i in enumerate(indices):
                    result[i] = emb[j]
        self.calls += len(segments)
        return np.stack(result)  # type: ignore[arg-type]


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two embeddings (normalised here too, in case of averages)."""
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0 or nb == 0:
        return 0.0
    return float(np.dot(a, b) / (na * nb))
