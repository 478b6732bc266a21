"""Speech for the capacity benchmark: one speaker per student, Opus-encoded once.

Real voices come from the LibriSpeech part of the evaluation set (one speaker per file)
when it is present; otherwise espeak-ng makes distinct synthetic voices, and without
espeak-ng pyannote.audio's bundled two-speaker sample is split into its two speakers.

Every student's microphone is a loop of their own speech, encoded to Opus packets before
the benchmark starts, so the load generator only paces and sends packets (aiortc's
`pack()` path) instead of encoding 50 streams live. A second-voice student also gets
the same loop with a helper talking over it at the same level, encoded the same way and
frame-aligned, so a replaying track can switch to it at any moment.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from rtcproctor.shadow.peer import OPUS_BITRATE, PTIME_MS
from rtcproctor.voice.audio import SAMPLE_RATE, load_audio, loop_speech, speaking

# The packet time and bitrate the shadow peer asks for in its answer, which browsers
# follow (wideband: the encoder is given 16 kHz, as the answer's maxplaybackrate asks).
FRAME = SAMPLE_RATE * PTIME_MS // 1000
NOISE_DBFS = -70.0  # a quiet room, not digital silence

# Original sentences for the synthetic voices (any text works; several keep them apart).
PASSAGES = (
    "Question three asks for the area of a triangle with a base of eight and a height of "
    "five. Half of eight times five is twenty. I will check the units before I move on.",
    "Photosynthesis takes light, water and carbon dioxide and makes sugar and oxygen. "
    "The light reactions happen in the thylakoid membranes of the chloroplast.",
    "The treaty ended the war in the spring, but the borders it drew caused new disputes. "
    "Historians still argue about whether the terms were too harsh.",
    "To solve the equation, subtract seven from both sides, then divide by three. "
    "So x equals four, and putting it back in gives nineteen on both sides.",
)
ESPEAK_VOICES = (  # (variant, pitch, words per minute)
    ("en+m1", 40, 150),
    ("en+f2", 70, 160),
    ("en+m3", 30, 140),
    ("en+f4", 85, 170),
    ("en+m5", 55, 155),
    ("en+f1", 60, 145),
    ("en+m7", 45, 165),
    ("en+f5", 75, 150),
)


@dataclass(frozen=True)
class Voice:
    """One speaker's speech, 16 kHz mono float32."""

    name: str
    samples: np.ndarray


@dataclass(frozen=True)
class Speech:
    voices: list[Voice]
    description: str


@dataclass
class EncodedMic:
    """One student's microphone loop as Opus packets (one per packet time)."""

    voice: str
    alone: list[bytes]
    helper: str | None = None
    joined: list[bytes] | None = None  # the same loop with the helper talking over it
    helper_active: np.ndarray | None = None  # per packet: the helper is speaking in it


def speech_files(paths: list[Path]) -> Speech:
    voices = [Voice(path.name, load_audio(path)) for path in paths]
    return Speech(voices, f"{len(voices)} speech file(s) given with --speech")


def librispeech(eval_dir: Path, count: int, seed: int) -> Speech | None:
    """`count` speakers (fewer if the set has fewer), drawn with a fixed seed."""
    folder = eval_dir / "librispeech-train-clean-100"
    files = sorted(folder.glob("*.flac"))
    if not files:
        return None
    rng = np.random.default_rng(seed)
    chosen = [files[i] for i in rng.permutation(len(files))[:count]]
    voices = [Voice(f"LibriSpeech speaker {p.name.split('-')[0]}", load_audio(p)) for p in chosen]
    return Speech(voices, f"LibriSpeech train-clean-100 from {folder.resolve()}")


def espeak(directory: Path) -> Speech | None:
    if shutil.which("espeak-ng") is None:
        return None
    voices: list[Voice] = []
    for index, (variant, pitch, speed) in enumerate(ESPEAK_VOICES):
        path = directory / f"espeak-{index}.wav"
        text = " ".join(PASSAGES[(index + k) % len(PASSAGES)] for k in range(len(PASSAGES)))
        subprocess.run(
            ["espeak-ng", "-v", variant, "-p", str(pitch), "-s", str(speed), "-w", str(path), text],
            check=True,
            capture_output=True,
        )
        voices.append(Voice(f"espeak-ng {variant} pitch {pitch}", load_audio(path)))
    return Speech(voices, "espeak-ng synthetic voices (no evaluation set found)")


def pyannote_sample() -> Speech:
    """pyannote.audio's bundled sample.wav, cut into its two speakers with its RTTM."""
    import pyannote.audio

    folder = Path(pyannote.audio.__file__).parent / "sample"
    audio = load_audio(folder / "sample.wav")
    turns: dict[str, list[np.ndarray]] = {}
    for line in (folder / "sample.rttm").read_text().splitlines():
        fields = line.split()
        if len(fields) < 8 or fields[0] != "SPEAKER":
            continue
        start, length = float(fields[3]), float(fields[4])
        piece = audio[int(start * SAMPLE_RATE) : int((start + length) * SAMPLE_RATE)]
        turns.setdefault(fields[7], []).append(piece)
    voices = [
        Voice(f"pyannote sample {who}", np.concatenate(p)) for who, p in sorted(turns.items())
    ]
    return Speech(voices, "pyannote.audio's sample.wav split into its 2 speakers (no espeak-ng)")


def find_speech(files: list[Path], eval_dir: Path, count: int, seed: int) -> Speech:
    """The best speech available: given files, the evaluation set, espeak-ng, pyannote's sample."""
    if files:
        return speech_files(files)
    found = librispeech(eval_dir, count, seed)
    if found is not None and len(found.voices) >= 2:
        return found
    with tempfile.TemporaryDirectory(prefix="rtcproctor-voices-") as tmp:
        found = espeak(Path(tmp))
    return found if found is not None else pyannote_sample()


def _level(x: np.ndarray, dbfs: float) -> np.ndarray:
    rms = float(np.sqrt(np.mean(x.astype(np.float64) ** 2))) + 1e-12
    return (x * (10 ** (dbfs / 20) / rms)).astype(np.float32)


def talk(voice: Voice, seconds: float, rng: np.random.Generator) -> np.ndarray:
    """`seconds` of one speaker to be replayed in a loop: their speech looped from a random
    offset, with short pauses, and a pause where the clip wraps around. Without it every
    wrap spliced two cuts through words, a sound no microphone makes, which the detector
    now and then took for a second voice."""
    pause = int(rng.uniform(0.3, 0.8) * SAMPLE_RATE)
    speech = loop_speech(voice.samples, seconds - pause / SAMPLE_RATE, rng)
    fade = min(speech.size // 2, SAMPLE_RATE // 50)  # 20 ms: no click at either cut
    ramp = np.linspace(0.0, 1.0, fade, dtype=np.float32)
    speech[:fade] *= ramp
    speech[speech.size - fade :] *= ramp[::-1]
    return np.concatenate([speech, np.zeros(int(seconds * SAMPLE_RATE) - speech.size, np.float32)])


def opus_packets(samples: np.ndarray) -> list[bytes]:
    """One Opus packet per packet time (16 kHz input: the detector hears only 16 kHz)."""
    encoder = av.CodecContext.create("libopus", "w")
    encoder.sample_rate, encoder.layout, encoder.format = SAMPLE_RATE, "mono", "s16"
    encoder.bit_rate = OPUS_BITRATE
    encoder.options = {
        "application": "voip",
        "compression_level": "5",
        "frame_duration": str(PTIME_MS),
    }
    encoder.open()
    pcm = (np.clip(samples, -1, 1) * 32767).astype(np.int16)
    frames = pcm.size // FRAME
    packets: list[bytes] = []
    for i in range(frames):
        frame = av.AudioFrame.from_ndarray(
            pcm[None, i * FRAME : (i + 1) * FRAME], format="s16", layout="mono"
        )
        frame.sample_rate, frame.pts = SAMPLE_RATE, i * FRAME
        packets += [bytes(p) for p in encoder.encode(frame)]
    packets += [bytes(p) for p in encoder.encode(None)]
    return packets[:frames]


def encode_mics(
    speech: Speech,
    students: int,
    with_helper: list[bool],
    loop_seconds: float,
    seed: int,
    helper_db: float = 0.0,
    takeover: bool = False,
) -> list[EncodedMic]:
    """One microphone per student: voice i (round robin), a helper from another voice
    `helper_db` dB louder (negative: quieter) than the student, talking over them or,
    with `takeover`, instead of them."""
    rng = np.random.default_rng(seed)
    voices = speech.voices
    mics: list[EncodedMic] = []
    helpers_used = 0
    for index in range(students):
        voice = voices[index % len(voices)]
        level = float(rng.uniform(-30, -22))
        own = _level(talk(voice, loop_seconds, rng), level)
        noise = rng.normal(0, 10 ** (NOISE_DBFS / 20), own.size).astype(np.float32)
        mic = EncodedMic(voice.name, opus_packets(own + noise))
        if with_helper[index]:
            # Helpers come from the voices after the students' own, as far as there are any.
            pick = (students + helpers_used) % len(voices)
            if voices[pick] is voice:
                pick = (pick + 1) % len(voices)
            helpers_used += 1
            helper = _level(talk(voices[pick], loop_seconds, rng), level + helper_db)
            mic.helper = voices[pick].name
            mic.joined = opus_packets((0 if takeover else own) + helper + noise)
            mic.helper_active = speaking(helper, level + helper_db, FRAME)[: len(mic.joined)]
        mics.append(mic)
    return mics
