"""The shadow peer's receive path: packets reach the analysis as they arrive, and the
audio keeps the sender's clock when packets are lost."""

from __future__ import annotations

import fractions

import av
import numpy as np
from aiortc import RTCPeerConnection
from aiortc.codecs.opus import OpusDecoder, OpusEncoder
from aiortc.jitterbuffer import JitterBuffer
from aiortc.rtp import RtpPacket

from rtcproctor.rtc.receive import (
    AudioClock,
    ImmediateJitterBuffer,
    MonoAudio,
    receive_audio_at_once,
)

RATE = 48_000


def _packet(seq: int, timestamp: int, data: bytes = b"x") -> RtpPacket:
    packet = RtpPacket(sequence_number=seq % (1 << 16), timestamp=timestamp)
    packet._data = data  # what aiortc's receiver sets after depayloading
    return packet


def test_each_packet_is_released_as_it_arrives_and_late_ones_are_dropped():
    buffer = ImmediateJitterBuffer()
    released = []
    for seq in (65533, 65534, 65535, 0, 1, 1, 65535, 3, 2, 4):  # wraps, repeats, reorders
        _pli, frame = buffer.add(_packet(seq, seq * 960))
        released.append(None if frame is None else frame.timestamp // 960)
    assert released == [65533, 65534, 65535, 0, 1, None, None, 3, None, 4]
    assert buffer.dropped == 3
    # A sender that numbers afresh, far behind: its packets flow at once, not in 10 minutes.
    assert buffer.add(_packet(40000, 0))[1] is not None
    assert buffer.add(_packet(40001, 960))[1] is not None


def test_aiortc_would_hold_audio_back_and_the_shadow_buffer_does_not():
    """The reason for the buffer: aiortc's own releases nothing for four packets."""
    theirs, ours = JitterBuffer(capacity=16, prefetch=4), ImmediateJitterBuffer()
    held = [theirs.add(_packet(seq, seq * 960))[1] is None for seq in range(4)]
    assert all(held)
    assert ours.add(_packet(0, 0))[1] is not None


async def test_a_peer_answering_audio_gets_the_immediate_buffer():
    sender, receiver = RTCPeerConnection(), RTCPeerConnection()
    try:
        sender.addTransceiver("audio", direction="sendonly")
        sender.addTransceiver("video", direction="sendonly")
        await sender.setLocalDescription(await sender.createOffer())
        await receiver.setRemoteDescription(sender.localDescription)
        assert len(receive_audio_at_once(receiver)) == 1  # audio only; video keeps its own
        kinds = {
            t.kind: type(t.receiver._RTCRtpReceiver__jitter_buffer)
            for t in receiver.getTransceivers()
        }
        assert kinds == {"audio": ImmediateJitterBuffer, "video": JitterBuffer}
    finally:
        await sender.close()
        await receiver.close()


def test_the_clock_fills_gaps_but_not_rounding_nor_a_restarted_sender():
    clock = AudioClock(16_000)
    tb = 1 / RATE
    assert clock.gap(0, tb, 0.06) == 0
    assert clock.gap(2880, tb, 0.06) == 0  # the next packet, on time
    assert clock.gap(2880 * 3, tb, 0.06) == 960  # one 60 ms packet missing
    assert clock.gap(2880 * 4 + 48, tb, 0.06) == 0  # 1 ms: rounding
    assert clock.gap(2880 * 4 + RATE * 60, tb, 0.06) == 0  # a minute: not lost audio
    assert clock.gap(None, tb, 0.06) == 0
    assert abs(clock.filled - 0.06) < 1e-9


def _tone_frames(count: int, samples: int = 960) -> list[av.AudioFrame]:
    frames = []
    for i in range(count):
        t = (np.arange(samples) + i * samples) / RATE
        tone = (0.3 * np.sin(2 * np.pi * 440 * t) * 32767).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(
            np.repeat(tone, 2).reshape(1, -1), format="s16", layout="stereo"
        )
        frame.sample_rate, frame.pts = RATE, i * samples
        frame.time_base = fractions.Fraction(1, RATE)
        frames.append(frame)
    return frames


def test_opus_through_the_immediate_buffer_keeps_the_senders_clock_despite_loss():
    """Real Opus packets, every 7th lost: the analysis gets as many samples as were
    sent, silence where the lost ones were, and the tone everywhere else."""
    encoder, decoder = OpusEncoder(), OpusDecoder()
    buffer, audio = ImmediateJitterBuffer(), MonoAudio(16_000)
    chunks, lost = [], []
    seq = 0
    for frame in _tone_frames(100):
        payloads, timestamp = encoder.encode(frame)
        for payload in payloads:
            seq += 1
            if seq % 7 == 0:
                lost.append(timestamp)
                continue
            _pli, jframe = buffer.add(_packet(seq, timestamp, payload))
            assert jframe is not None
            for decoded in decoder.decode(jframe):
                chunks.extend(audio.convert(decoded))
    out = np.concatenate(chunks)
    sent = 100 * 960 // 3  # samples at 16 kHz
    assert lost and abs(out.size - sent) <= 320  # the resampler may hold back a few ms
    origin = min(lost) - (min(lost) // 960) * 960
    for timestamp in lost[1:-1]:
        start = (timestamp - origin) // 3
        gap = out[start + 40 : start + 280]
        assert np.abs(gap).max() == 0.0
        heard = out[start + 400 : start + 600]  # the packet after a lost one is decoded
        assert np.abs(heard).max() > 0.05


def test_the_answer_asks_for_wideband_opus_at_the_analysis_bitrate():
    from rtcproctor.shadow.peer import OPUS_PARAMS, with_opus_params

    offer_like = "\r\n".join(
        [
            "v=0",
            "m=audio 9 UDP/TLS/RTP/SAVPF 111 63 0",
            "a=rtpmap:111 opus/48000/2",
            "a=fmtp:111 minptime=10;useinbandfec=1",
            "a=rtpmap:63 red/48000/2",
            "a=fmtp:63 111/111",
            "a=rtpmap:0 PCMU/8000",
            "m=audio 9 UDP/TLS/RTP/SAVPF 109",
            "a=rtpmap:109 OPUS/48000/2",
            "",
        ]
    )
    out = with_opus_params(offer_like, OPUS_PARAMS).split("\r\n")
    wanted = "maxaveragebitrate=64000;maxplaybackrate=16000"
    assert f"a=fmtp:111 minptime=10;useinbandfec=1;{wanted}" in out
    assert "a=fmtp:63 111/111" in out  # other codecs untouched
    assert out[out.index("a=rtpmap:109 OPUS/48000/2") + 1] == f"a=fmtp:109 {wanted}"
    # A value the SDP already has is kept, and nothing is added twice.
    again = with_opus_params("\r\n".join(out), {"maxaveragebitrate": "1"}).split("\r\n")
    assert again == out
