"""A simulated student whose microphone replays pre-encoded Opus packets, audio only.

aiortc's RTCRtpSender sends an `av.Packet` from a track as it is (the codec's `pack()`
path, as MediaPlayer(decode=False) does), so replaying costs no encoding: the load
generator can drive many students on the cores it shares with the server.
"""

from __future__ import annotations

import asyncio
import fractions
import time
from dataclasses import dataclass, field
from typing import Any

import aioice.stun
from aiortc import MediaStreamTrack, RTCPeerConnection, VideoStreamTrack
from aiortc.mediastreams import MediaStreamError
from av import Packet

from rtcproctor.bench.speech import EncodedMic
from rtcproctor.shadow.peer import PTIME_MS
from rtcproctor.sim.media import MediaSource
from rtcproctor.sim.student import SimStudent

PACKET_TIME = PTIME_MS / 1000  # what the shadow peer's answer asks of the sender
RTP_CLOCK = 48_000  # Opus's RTP clock, whatever the encoded bandwidth
TIME_BASE = fractions.Fraction(1, RTP_CLOCK)
# Slots a stalled sender may still send late; older ones are skipped, as a microphone
# whose audio nobody read in time: no burst of stale audio after a renewal.
CATCH_UP = round(1.0 / PACKET_TIME)
# How long a student waits for the server's answer to one STUN check (aioice: 0.5 s).
STUN_ANSWER_WAIT = 4.0


def browser_like_consent() -> None:
    """Let this process's peers wait for STUN answers as a browser does.

    aioice drops a peer when 6 consent checks in a row (one every ~5 s) get no answer
    within 0.5 s each; a browser counts an answer whenever it comes and gives up only
    after ~30 s of silence. A server whose event loop stalls for a second would lose
    every aioice student but no real phone, so the generator (the phones) waits longer:
    the stalls show in the bench's own figures instead.
    """
    aioice.stun.RETRY_RTO = STUN_ANSWER_WAIT


@dataclass
class Episode:
    """A second voice on one student's microphone, from `at` (wall clock) for `seconds`."""

    student: int
    code: str
    at: float
    seconds: float
    onset: float | None = None  # wall clock of the first packet where the helper speaks
    alert_at: float | None = None  # wall clock when the proctor received the alert
    alert_type: str | None = None

    @property
    def latency(self) -> float | None:
        if self.onset is None or self.alert_at is None:
            return None
        return self.alert_at - self.onset


class Microphone:
    """Loops a student's packets at the packet time; switches to the helper's in episodes.

    It outlives the peers: aiortc stops a sender's track when the peer closes, so every
    (renewed) shadow peer gets its own `ReplayTrack` drawing from the same microphone.
    """

    def __init__(self, mic: EncodedMic) -> None:
        self.mic = mic
        self.episodes: list[Episode] = []
        self.sent = 0  # packets handed to senders
        self.started_at: float | None = None  # wall clock of the first packet
        self.flowing = asyncio.Event()
        self._start = 0.0
        self._next = 0  # the next packet slot since the start

    def track(self) -> ReplayTrack:
        return ReplayTrack(self)

    async def next_packet(self) -> Packet:
        # Claim the slot before waiting for it, so two senders (an old peer closing, its
        # renewal starting) never send one slot twice.
        if self.started_at is None and self._next == 0:
            self._start = time.monotonic()
        slot = max(self._next, int((time.monotonic() - self._start) / PACKET_TIME) - CATCH_UP)
        self._next = slot + 1
        delay = self._start + slot * PACKET_TIME - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        now = time.time()
        if self.started_at is None:
            self.started_at = now
            self.flowing.set()
        index = slot % len(self.mic.alone)
        data = self.mic.alone[index]
        episode = self._episode(now)
        if episode is not None and self.mic.joined is not None:
            data = self.mic.joined[index]
            if episode.onset is None and self._helper_speaks(index):
                episode.onset = now
        packet = Packet(data)
        packet.pts = slot * int(RTP_CLOCK * PACKET_TIME)
        packet.time_base = TIME_BASE
        self.sent += 1
        return packet

    def _episode(self, now: float) -> Episode | None:
        for episode in self.episodes:
            if episode.at <= now < episode.at + episode.seconds:
                return episode
        return None

    def _helper_speaks(self, index: int) -> bool:
        active = self.mic.helper_active
        return active is not None and bool(active[index % len(active)])


class ReplayTrack(MediaStreamTrack):
    """One peer's view of a `Microphone`."""

    kind = "audio"

    def __init__(self, microphone: Microphone) -> None:
        super().__init__()
        self.microphone = microphone

    async def recv(self) -> Packet:
        if self.readyState != "live":
            raise MediaStreamError
        return await self.microphone.next_packet()


@dataclass
class VoiceMedia(MediaSource):
    """Audio only: the capacity bench measures the server's shadow peers, not video."""

    microphone: Microphone | None = None

    def tracks(self, audio_only: bool) -> list[MediaStreamTrack]:
        if not audio_only or self.microphone is None:
            return []
        return [self.microphone.track()]


def voice_media(microphone: Microphone) -> VoiceMedia:
    # The camera is never opened: peers towards proctors are not answered.
    return VoiceMedia(
        microphone.track(),
        VideoStreamTrack(),
        f"audio: replayed Opus of {microphone.mic.voice}",
        microphone=microphone,
    )


@dataclass
class VoiceStudent(SimStudent):
    """Answers only the server's audio-only (shadow) peer requests."""

    shadow: RTCPeerConnection | None = field(default=None, init=False)
    shadow_requests: int = field(default=0, init=False)  # more than 1: the peer was renewed

    async def _on_peer_request(self, data: Any) -> None:
        if not isinstance(data, dict) or not data.get("audioOnly"):
            return
        self.shadow_requests += 1
        await super()._on_peer_request(data)
        peer = self.peers.get(data.get("peer"))
        if peer is not None:
            self.shadow = peer.pc

    async def delivery(self) -> tuple[int, int] | None:
        """(packets sent, packets the server reported lost) from the shadow peer's RTCP."""
        if self.shadow is None:
            return None
        sent = lost = 0
        for stats in (await self.shadow.getStats()).values():
            if stats.type == "outbound-rtp":
                sent += stats.packetsSent
            elif stats.type == "remote-inbound-rtp":
                lost += stats.packetsLost
        return sent, lost
