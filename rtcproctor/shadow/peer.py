"""One receive-only audio peer towards one student; it never sends media."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
from aiortc import MediaStreamTrack, RTCPeerConnection
from aiortc.mediastreams import MediaStreamError

from rtcproctor.rtc.ice import candidate_from_init, configuration, description_from_json
from rtcproctor.rtc.receive import ImmediateJitterBuffer, MonoAudio, receive_audio_at_once

log = logging.getLogger(__name__)

SAMPLE_RATE = 16_000
# A live microphone delivers a frame every 20 ms, silence included; this long without
# one means the connection is gone even if ICE has not said so yet.
STALL_SECONDS = 15.0
Sink = Callable[[np.ndarray], None]
# Asked of the student's browser in the answer: Opus in 60 ms packets instead of 20 ms.
# The receive path costs per packet (SRTP, RTP parsing, jitter buffer, a decoder thread
# handing each frame to the event loop), so a third of the packets is most of a third of
# its CPU; the detector looks at seconds of audio and loses nothing by it.
PTIME_MS = 60
# And at 64 kbit/s, all of it below 8 kHz (`maxplaybackrate`: the analysis hears 16 kHz),
# instead of a browser's 32 kbit/s over the full band. At 32 kbit/s a helper 10 dB under
# the student was found later (40 mixtures of the development set through this Opus,
# p95 5.04 s of audio against 4.04 s without Opus; at 64 kbit/s 3.80 s). It costs the
# phone 32 kbit/s more upstream, beside its video.
OPUS_BITRATE = 64_000
OPUS_PARAMS = {"maxaveragebitrate": str(OPUS_BITRATE), "maxplaybackrate": str(SAMPLE_RATE)}


class ShadowPeer:
    def __init__(
        self,
        peer_id: str,
        sink: Sink,
        rtc: dict[str, Any],
        on_failed: Callable[[str], Awaitable[None]],
    ) -> None:
        self.peer_id = peer_id
        self.sink = sink
        self.pc = RTCPeerConnection(
            configuration(rtc.get("iceServers"), rtc.get("iceTransportPolicy"))
        )
        self._on_failed = on_failed
        self._reader: asyncio.Task[None] | None = None
        self._buffers: list[ImmediateJitterBuffer] = []
        self.frames = 0
        self.seconds = 0.0  # of audio received
        self._reported = False
        self._report: asyncio.Future[None] | None = None
        self.pc.on("track", self._on_track)
        self.pc.on("connectionstatechange", self._on_state)

    async def answer(self, offer: dict[str, Any]) -> dict[str, str]:
        """Answer the student's audio-only offer; aiortc gathers all candidates first."""
        await self.pc.setRemoteDescription(description_from_json(offer))
        for transceiver in self.pc.getTransceivers():
            transceiver.direction = "recvonly"
        # Nothing is played here: each packet goes to the analysis as it arrives (0.3 s
        # sooner than aiortc's buffer for playback lets it, at 60 ms packets).
        self._buffers = receive_audio_at_once(self.pc)
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        local = self.pc.localDescription
        sdp = with_opus_params(with_ptime(local.sdp, PTIME_MS), OPUS_PARAMS)
        return {"type": local.type, "sdp": sdp}

    @property
    def payload_bytes(self) -> int:
        """Opus payload received (its bitrate shows the browser followed the answer)."""
        return sum(buffer.payload_bytes for buffer in self._buffers)

    async def add_candidate(self, init: dict[str, Any] | None) -> None:
        candidate = candidate_from_init(init)
        if candidate is not None:
            await self.pc.addIceCandidate(candidate)

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "audio" and self._reader is None:
            self._reader = asyncio.ensure_future(self._read(track))

    async def _on_state(self) -> None:
        if self.pc.connectionState in ("failed", "closed"):
            await self._report_failed()

    async def _report_failed(self) -> None:
        """Tell the proctor once, so that it asks the student for a new peer."""
        if not self._reported:
            self._reported = True
            await self._on_failed(self.peer_id)

    async def _read(self, track: MediaStreamTrack) -> None:
        """Decoded Opus frames (48 kHz stereo) → 16 kHz mono float32 for the detector,
        with silence where packets are missing, so the stream keeps the sender's clock."""
        audio = MonoAudio(SAMPLE_RATE)
        try:
            while True:
                try:
                    frame = await asyncio.wait_for(track.recv(), STALL_SECONDS)
                except TimeoutError:
                    log.warning("shadow peer %s: no audio for %g s", self.peer_id, STALL_SECONDS)
                    break
                self.frames += 1
                self.seconds += frame.samples / frame.sample_rate
                for chunk in audio.convert(frame):
                    self.sink(chunk)
        except MediaStreamError:
            pass
        except Exception:
            log.exception("shadow peer %s: reading audio failed", self.peer_id)
        # The track ended or stalled without the peer being closed by us: renew it, from
        # a task of its own, since renewing closes this peer and cancels this reader.
        if not self._reported:
            self._report = asyncio.ensure_future(self._report_failed())

    async def close(self) -> None:
        self._reported = True
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        await self.pc.close()


def with_ptime(sdp: str, ms: int) -> str:
    """`sdp` with `a=ptime:ms` at the end of each audio section that has none."""
    head, *sections = re.split(r"(?m)^(?=m=)", sdp)
    out = [head]
    for section in sections:
        if section.startswith("m=audio") and "a=ptime:" not in section:
            section = section.rstrip("\r\n") + f"\r\na=ptime:{ms}\r\n"
        out.append(section)
    return "".join(out)


def with_opus_params(sdp: str, params: dict[str, str]) -> str:
    """`sdp` with `params` in the format parameters of each Opus payload type: added to its
    `a=fmtp` line (a value already there is kept), or in one of their own after its rtpmap."""
    opus = set(re.findall(r"(?im)^a=rtpmap:(\d+) opus/", sdp))
    bare = opus - set(re.findall(r"(?m)^a=fmtp:(\d+) ", sdp))
    wanted = ";".join(f"{k}={v}" for k, v in params.items())
    out: list[str] = []
    for line in sdp.split("\r\n"):
        fmtp = re.match(r"a=fmtp:(\d+) (.*)", line)
        if fmtp and fmtp.group(1) in opus:
            have = {p.split("=", 1)[0] for p in fmtp.group(2).split(";")}
            line = ";".join([line, *(f"{k}={v}" for k, v in params.items() if k not in have)])
        out.append(line)
        rtpmap = re.match(r"a=rtpmap:(\d+) ", line)
        if rtpmap and rtpmap.group(1) in bare:
            out.append(f"a=fmtp:{rtpmap.group(1)} {wanted}")
    return "\r\n".join(out)
