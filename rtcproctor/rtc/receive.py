"""Receiving audio to analyse, not to play: each packet at once, silence for the missing.

aiortc's audio receiver releases an Opus packet only once four more have arrived
(`JitterBuffer(capacity=16, prefetch=4)`), and one packet per arrival: at 60 ms packets
every sample reaches the analysis 0.3 s late, and after a lost packet the buffer waits
for 16 more before skipping it, then stays 15 packets (0.9 s) behind for good. A
listener that never plays the sound needs none of that smoothing: each Opus packet is a
whole frame, so it is released the moment it arrives; one that comes after a newer one
is dropped, and the gap it leaves is filled with silence (`MonoAudio`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import av
import numpy as np
from aiortc import RTCPeerConnection
from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.rtp import RtpPacket

log = logging.getLogger(__name__)

_HALF = 1 << 15  # sequence numbers are 16-bit: one ahead by less than this is newer
_LATE_MAX = 100  # further behind than this is a sender that started again, not a late packet
_RECEIVER_BUFFER = "_RTCRtpReceiver__jitter_buffer"  # aiortc 1.16's private attribute


class ImmediateJitterBuffer(JitterBuffer):
    """Releases every in-order or newer audio packet at once; drops late and repeated ones.
    A packet far behind the last (a sender that started its numbering again) restarts it."""

    def __init__(self) -> None:
        super().__init__(capacity=16)
        self._last: int | None = None
        self.dropped = 0
        self.payload_bytes = 0  # released

    def add(self, packet: RtpPacket) -> tuple[bool, JitterFrame | None]:
        seq = packet.sequence_number
        if self._last is not None:
            ahead = (seq - self._last) % (1 << 16)
            if ahead == 0 or (ahead >= _HALF and (1 << 16) - ahead <= _LATE_MAX):
                self.dropped += 1
                return False, None
        self._last = seq
        data: bytes = packet._data  # type: ignore[attr-defined]
        self.payload_bytes += len(data)
        return False, JitterFrame(data=data, timestamp=packet.timestamp)


def receive_audio_at_once(pc: RTCPeerConnection) -> list[ImmediateJitterBuffer]:
    """Give each audio receiver of `pc` an `ImmediateJitterBuffer` (call it after
    setRemoteDescription, before media flows). Returns them; none with an aiortc whose
    receiver no longer keeps its buffer there (then it logs a warning)."""
    changed: list[ImmediateJitterBuffer] = []
    for transceiver in pc.getTransceivers():
        receiver = transceiver.receiver
        if transceiver.kind != "audio" or receiver is None:
            continue
        if not isinstance(getattr(receiver, _RECEIVER_BUFFER, None), JitterBuffer):
            log.warning("this aiortc keeps no jitter buffer where expected: audio stays late")
            continue
        buffer = ImmediateJitterBuffer()
        setattr(receiver, _RECEIVER_BUFFER, buffer)
        changed.append(buffer)
    return changed


@dataclass
class AudioClock:
    """How much silence stands for the packets that never came (lost, late, or not
    sent) before a frame, from its pts: it keeps a receiver's audio on the sender's
    clock. Without it a stream that lost 2 % of its packets would run 72 s behind the
    wall clock after an hour, and every alert's time with it."""

    rate: int  # samples per second downstream
    max_gap: float = 15.0  # seconds: a larger jump is a restarted sender, not lost audio
    min_gap: float = 0.005  # seconds: less is rounding, not a packet (Opus: 2.5 ms at least)
    _next: float | None = None  # seconds: where the next frame should start
    filled: float = 0.0  # seconds of silence inserted so far

    def gap(self, pts: int | None, time_base: float, duration: float) -> int:
        """Samples of silence to insert before a frame at `pts` lasting `duration` s."""
        if pts is None:
            return 0
        start = pts * time_base
        missing = 0.0 if self._next is None else start - self._next
        self._next = start + duration
        if not self.min_gap <= missing <= self.max_gap:
            return 0
        samples = round(missing * self.rate)
        self.filled += samples / self.rate
        return samples


class MonoAudio:
    """Decoded audio frames → mono float32 chunks at `rate`, silence where packets are
    missing (`AudioClock`)."""

    def __init__(self, rate: int) -> None:
        self.clock = AudioClock(rate)
        self._resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)

    def convert(self, frame: av.AudioFrame) -> list[np.ndarray]:
        duration = frame.samples / frame.sample_rate
        missing = self.clock.gap(frame.pts, float(frame.time_base or 0), duration)
        out = [np.zeros(missing, np.float32)] if missing else []
        for part in self._resampler.resample(frame):
            out.append(part.to_ndarray().reshape(-1).astype(np.float32, copy=False))
        return out
