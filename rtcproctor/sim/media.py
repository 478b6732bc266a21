"""What the simulated student streams: looped files, or a synthetic camera and microphone.

One source feeds every peer through a `MediaRelay`, as one camera feeds every proctor.
Without a video file the camera is a moving pattern printed with the student's name
and the time (320x240, 8 fps, the size the pages ask for); without an audio file the
microphone is a quiet 440 Hz tone at -30 dBFS, so a receiver can tell audio flows.
"""

from __future__ import annotations

import asyncio
import fractions
import logging
import math
import time
from array import array
from dataclasses import dataclass, field
from pathlib import Path

from aiortc import MediaStreamTrack
from aiortc.contrib.media import MediaPlayer, MediaRelay
from aiortc.mediastreams import MediaStreamError
from av import AudioFrame, VideoFrame

from rtcproctor.sim.font import draw_text

log = logging.getLogger(__name__)

SAMPLE_RATE = 48_000
AUDIO_PTIME = 0.020
VIDEO_CLOCK = 90_000


class _Paced(MediaStreamTrack):
    """Hands out frames on a wall-clock schedule, like a capture device."""

    def __init__(self, interval: float) -> None:
        super().__init__()
        self._interval = interval
        self._count = -1
        self._start = 0.0

    async def _next(self) -> int:
        if self.readyState != "live":
            raise MediaStreamError
        self._count += 1
        if self._count == 0:
            self._start = time.monotonic()
        else:
            delay = self._start + self._count * self._interval - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        return self._count


class ToneTrack(_Paced):
    kind = "audio"

    def __init__(self, frequency: float = 440.0, level_dbfs: float = -30.0) -> None:
        super().__init__(AUDIO_PTIME)
        amplitude = 32767 * 10 ** (level_dbfs / 20)
        # One second holds a whole number of periods of an integer frequency: it loops cleanly.
        one_second = array(
            "h",
            (
                round(amplitude * math.sin(2 * math.pi * frequency * i / SAMPLE_RATE))
                for i in range(SAMPLE_RATE)
            ),
        )
        self._pcm = one_second.tobytes()
        self._samples = int(SAMPLE_RATE * AUDIO_PTIME)

    async def recv(self) -> AudioFrame:
        count = await self._next()
        size = self._samples * 2
        offset = (count * size) % len(self._pcm)
        frame = AudioFrame(format="s16", layout="mono", samples=self._samples)
        frame.planes[0].update(self._pcm[offset : offset + size])
        frame.pts = count * self._samples
        frame.sample_rate = SAMPLE_RATE
        frame.time_base = fractions.Fraction(1, SAMPLE_RATE)
        return frame


class PatternTrack(_Paced):
    kind = "video"

    def __init__(self, label: str, width: int = 320, height: int = 240, fps: int = 8) -> None:
        super().__init__(1 / fps)
        self.label = label
        self.width, self.height, self.fps = width, height, fps
        self._ramp = bytes(i & 0xFF for i in range(256 + width))

    def _luma(self, count: int) -> bytearray:
        w, h = self.width, self.height
        shift = (count * 4) % 256
        plane = bytearray(w * h)
        for y in range(h):
            start = (y + shift) % 256
            plane[y * w : (y + 1) * w] = self._ramp[start : start + w]
        # A square bouncing left and right: motion a viewer (or an encoder) notices.
        size, span = h // 4, w - h // 4
        phase = count % (2 * span)
        left = phase if phase < span else 2 * span - phase
        top = h // 2 - size // 2
        for y in range(top, top + size):
            plane[y * w + left : y * w + left + size] = b"\xeb" * size
        # Name and clock on a dark band at the top.
        plane[0 : 48 * w] = b"\x10" * (48 * w)
        draw_text(plane, w, 6, 6, self.label[:26], scale=2)
        clock = time.strftime("%H:%M:%S") + f".{count % self.fps}"
        draw_text(plane, w, 6, 24, clock, scale=3)
        return plane

    async def recv(self) -> VideoFrame:
        count = await self._next()
        frame = VideoFrame(self.width, self.height, "yuv420p")
        frame.planes[0].update(bytes(self._luma(count)))
        hue = (count * 2) % 256
        chroma = (self.width // 2) * (self.height // 2)
        frame.planes[1].update(bytes([hue]) * chroma)
        frame.planes[2].update(bytes([255 - hue]) * chroma)
        frame.pts = count * VIDEO_CLOCK // self.fps
        frame.time_base = fractions.Fraction(1, VIDEO_CLOCK)
        return frame


def _player(path: Path) -> MediaPlayer:
    try:
        return MediaPlayer(str(path), loop=True)
    except AssertionError:
        log.warning("%s cannot be looped (no duration); it plays once", path)
        return MediaPlayer(str(path))


@dataclass
class MediaSource:
    """The student's camera and microphone, shared by all peers."""

    audio: MediaStreamTrack
    video: MediaStreamTrack
    description: str
    players: list[MediaPlayer] = field(default_factory=list)
    relay: MediaRelay = field(default_factory=MediaRelay)

    def tracks(self, audio_only: bool) -> list[MediaStreamTrack]:
        """Fresh relayed tracks for one peer (audio first, then video unless audio only)."""
        sources = [self.audio] if audio_only else [self.audio, self.video]
        return [self.relay.subscribe(track) for track in sources]

    def stop(self) -> None:
        self.audio.stop()
        self.video.stop()


def open_media(audio: Path | None, video: Path | None, label: str) -> MediaSource:
    players: list[MediaPlayer] = []
    if audio is not None:
        player = _player(audio)
        if player.audio is None:
            raise ValueError(f"{audio} has no audio stream")
        players.append(player)
        audio_track: MediaStreamTrack = player.audio
        audio_text = f"audio {audio} (looped)"
    else:
        audio_track = ToneTrack()
        audio_text = "audio: synthetic 440 Hz tone at -30 dBFS"
    if video is not None:
        player = _player(video)
        if player.video is None:
            raise ValueError(f"{video} has no video stream")
        players.append(player)
        video_track: MediaStreamTrack = player.video
        video_text = f"video {video} (looped)"
    else:
        video_track = PatternTrack(label)
        video_text = "video: synthetic pattern 320x240 at 8 fps"
    return MediaSource(audio_track, video_track, f"{audio_text}; {video_text}", players)
