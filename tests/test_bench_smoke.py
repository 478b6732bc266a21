"""The benchmarks run end to end with small numbers and print their figures.

Only that they ran and reported sensible figures is asserted: the timings themselves
are for people to read.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest


def bench(*args: str, timeout: float) -> subprocess.CompletedProcess:
    """`rtcproctor bench ARGS` in a process of its own, its report on stdout."""
    return subprocess.run(
        [sys.executable, "-m", "rtcproctor", "bench", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "RTCPROCTOR_LOG_LEVEL": "WARNING"},
    )


@pytest.mark.timeout(400)
def test_bench_signaling_prints_its_figures() -> None:
    result = bench(
        "signaling",
        "--clients",
        "50",
        "--rate",
        "100",
        "--seconds",
        "3",
        timeout=360,
    )
    out = result.stdout
    assert result.returncode == 0, f"{out}\n{result.stderr}"
    assert re.search(rf"\b{os.cpu_count()} cores\b", out)
    assert re.search(r"50 of 50 connected, \d+ still connected", out)
    assert re.search(r"[\d.]+ msg/s achieved at a target of 100 msg/s", out)
    assert re.search(r"p50 [\d.]+ ms\s+p99 [\d.]+ ms\s+max [\d.]+ ms", out)
    assert re.search(r"go live\s+median [\d.]+ s\s+max [\d.]+ s\s+\(5 runs", out)
    for target in (">= 2,000 held", "p99 < 50 ms at 1,000 msg/s", "target: < 1.5 s"):
        assert target in out


@pytest.mark.skipif(not shutil.which("redis-server"), reason="needs redis-server")
@pytest.mark.timeout(400)
def test_bench_signaling_relays_across_two_processes() -> None:
    """Two server processes over the bench's own Redis: every relay pair spans both."""
    result = bench(
        "signaling",
        "--processes",
        "2",
        "--clients",
        "30",
        "--rate",
        "60",
        "--seconds",
        "3",
        "--go-live-runs",
        "2",
        timeout=360,
    )
    out = result.stdout
    assert result.returncode == 0, f"{out}\n{result.stderr}"
    assert re.search(rf"\b{os.cpu_count()} cores\b", out)
    assert "2 processes started by the bench" in out
    assert re.search(r"load average [\d.]+ / [\d.]+ / [\d.]+", out)
    assert "30 of 30 connected" in out
    pairs = int(re.search(r"(\d+) student->proctor pairs", out).group(1))
    assert f"{pairs} of {pairs} pairs have the student and the proctor on different" in out
    received = int(re.search(r"\d+ sent, (\d+) received", out).group(1))
    across = int(re.search(r"(\d+) received across processes", out).group(1))
    assert received > 0 and across == received
    assert re.search(r"servers [\d.]+% \([\d.]+% \+ [\d.]+%\), redis-server [\d.]+%", out)
    assert re.search(r"go live\s+median [\d.]+ s.*proctor and student on different processes", out)


@pytest.mark.timeout(700)
def test_bench_capacity_analyses_every_stream_and_alerts_the_second_voice(
    voices: dict[str, Path],
) -> None:
    """Three students on espeak-ng voices; the third gets the helper's voice over theirs."""
    result = bench(
        "capacity",
        "--students",
        "3",
        "--second-voice-every",
        "3",
        "--seconds",
        "20",
        "--warmup",
        "8",
        # A loaded test machine may analyse slowly; this asserts that it alerts, not when.
        "--miss-after",
        "200",
        "--speech",
        str(voices["a"]),
        "--speech",
        str(voices["b"]),
        timeout=660,
    )
    out = result.stdout
    assert result.returncode == 0, f"{out}\n{result.stderr}"
    assert re.search(rf"\b{os.cpu_count()} cores\b", out)
    assert re.search(r"load average [\d.]+ / [\d.]+ / [\d.]+", out)
    assert "3 of 3 live, audio only" in out
    assert "2 speech file(s) given with --speech" in out
    analysed, due = map(int, re.search(r"(\d+) frames analysed of (\d+) due", out).groups())
    assert due > 0 and analysed > 0
    assert "3 shadow peers at the end" in out
    assert re.search(r"server CPU [\d.]+ cores = [\d.]+ % of one core per stream", out)
    assert re.search(r"server mem \d+ MiB .*PSS, voice workers included", out)
    assert re.search(r"generator\s+\d+ % of one core", out)
    alerted, episodes = map(int, re.search(r"(\d+) of (\d+) second voices alerted", out).groups())
    assert episodes >= 1 and alerted >= 1, out
    assert re.search(r"latency .* median [\d.]+ s\s+p95 [\d.]+ s\s+max [\d.]+ s", out)
    assert re.search(r"server's\s+[\d.]+ s on average, 95 % within [\d.]+ s", out)
    assert re.search(r"\d+ voice alerts on [\d.]+ h of single-voice audio", out)
    assert re.search(r"^capacity: 3 students analysed in real time: (yes|no)$", out, re.M)


@pytest.mark.timeout(900)
def test_bench_capacity_compares_one_process_with_two(voices: dict[str, Path]) -> None:
    """The same students on 1 process, then on 2 over a redis-server: both reports and a
    ratio of the analysis work done."""
    result = bench(
        *("capacity", "--compare"),
        *("--processes", "2", "--students", "2", "--second-voice-every", "0"),
        *("--seconds", "10", "--warmup", "5", "--json"),
        *("--speech", str(voices["a"]), "--speech", str(voices["b"])),
        timeout=860,
    )
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    data = json.loads(result.stdout)
    assert [run["processes"] for run in data["runs"]] == [1, 2]
    assert [len(run["servers"]) for run in data["runs"]] == [1, 2]
    assert all(run["live"] == 2 for run in data["runs"])
    assert all(run["episodes"] == [] for run in data["runs"])  # no second voices asked
    rows = data["comparison"]["rows"]
    assert [r["processes"] for r in rows] == [1, 2]
    assert all(r["windows_per_s"] > 0 for r in rows)
    one, two = (r["windows_per_s"] for r in rows)
    assert data["comparison"]["ratio"] == round(two / one, 2)


def test_a_second_voice_that_takes_over_silences_the_student(voices: dict[str, Path]) -> None:
    """--takeover: while the helper speaks, the microphone carries the helper alone."""
    from rtcproctor.bench.speech import FRAME, Speech, encode_mics, speech_files
    from rtcproctor.rtc.receive import MonoAudio
    from rtcproctor.voice.audio import SAMPLE_RATE, block_rms

    speech: Speech = speech_files([voices["a"], voices["b"]])
    seconds = 12.0

    def decoded(packets: list[bytes]) -> np.ndarray:
        import av

        decoder, mono = av.CodecContext.create("libopus", "r"), MonoAudio(SAMPLE_RATE)
        out = [c for p in packets for f in decoder.decode(av.Packet(p)) for c in mono.convert(f)]
        return np.concatenate(out)

    over, instead = (
        encode_mics(speech, 1, [True], seconds, seed=3, takeover=flag)[0] for flag in (False, True)
    )
    alone, joined_over, joined_instead = (
        decoded(p) for p in (over.alone, over.joined, instead.joined)
    )
    rms = [block_rms(x[: alone.size], FRAME) for x in (alone, joined_over, joined_instead)]
    n = min(r.size for r in rms)
    speaks = rms[0][:n] > 10 ** (-45 / 20)  # the room is at -70 dBFS, speech at -30 to -22
    quiet = np.flatnonzero(~instead.helper_active[:n] & speaks)
    assert quiet.size > 10  # the student speaks while the helper pauses
    # Talking over keeps the student's speech there; taking over leaves only the room.
    assert np.median(rms[1][quiet]) > 0.5 * np.median(rms[0][quiet])
    assert np.median(rms[2][quiet]) < 0.1 * np.median(rms[0][quiet])


@pytest.mark.timeout(600)
def test_bench_delay_streams_mixtures_and_times_each_second_voice(
    voices: dict[str, Path], tmp_path: Path
) -> None:
    """Two espeak-ng voices stand in for the evaluation set's speakers: talk-over
    mixtures, each a student of its own, through WebRTC to a proctor's alert."""
    import soundfile

    folder = tmp_path / "librispeech-train-clean-100"
    folder.mkdir()
    for speaker, name in ((100, "a"), (200, "b")):
        audio, rate = soundfile.read(voices[name])
        soundfile.write(folder / f"{speaker}-1-0001.flac", audio, rate)
    result = bench(
        *("delay", "--eval-dir", str(tmp_path), "--conditions", "overlap"),
        *("--trials", "2", "--single", "0", "--concurrent", "2", "--json"),
        timeout=560,
    )
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    data = json.loads(result.stdout)
    assert data["cores"] == os.cpu_count()
    assert data["streamed"] == data["mixtures"] == 2
    overlap = data["conditions"]["overlap"]
    assert overlap["second_voices"] == 2 and overlap["alerted"] >= 1, data
    assert data["pooled"]["alerted"] == overlap["alerted"]
    assert all(o is None or o >= 0 for o in (overlap["median_s"], overlap["p95_s"]))
    assert data["single_voice_hours"] > 0  # each mixture's lead before its second voice
    assert data["alert_delivery"]["alerts"] >= overlap["alerted"]


def test_bench_delay_refuses_unknown_conditions_and_a_missing_set(tmp_path: Path) -> None:
    for args in (("--conditions", "opus_quiet10"), ("--eval-dir", str(tmp_path))):
        result = bench("delay", *args, timeout=60)
        assert result.returncode == 2
        assert "rtcproctor bench delay:" in result.stderr
