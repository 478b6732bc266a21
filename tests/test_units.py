"""The pure parts: codes, rate limits, presence rules, configuration, rosters."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from rtcproctor import codes
from rtcproctor.cli import read_roster
from rtcproctor.config import Settings
from rtcproctor.signaling.ratelimit import KeyedLimiter, TokenBucket


def test_generated_codes_are_long_random_and_readable():
    made = {codes.generate_code() for _ in range(2000)}
    assert len(made) == 2000
    for code in list(made)[:50]:
        groups = code.split("-")
        assert [len(g) for g in groups] == [5, 5, 5]
        assert set(code.replace("-", "")) <= set(codes.ALPHABET)
    assert codes.CODE_LENGTH * math.log2(len(codes.ALPHABET)) >= 60
    assert not set("01ILO") & set(codes.ALPHABET)


def test_codes_normalise_and_reject_junk():
    assert codes.normalize_code(" k7qm4 xh9td-2rfwn ") == "K7QM4XH9TD2RFWN"
    assert codes.format_code("k7qm4xh9td2rfwn") == "K7QM4-XH9TD-2RFWN"
    for bad in ("", "   ", "abc<script>", "x" * 65, "ÄÖÜ"):
        with pytest.raises(codes.CodeError):
            codes.normalize_code(bad)


def test_external_codes_need_sixty_bits():
    with pytest.raises(codes.CodeError):
        codes.check_external_code("123456789012")  # 12 digits: ~40 bits
    with pytest.raises(codes.CodeError):
        codes.check_external_code("AAAAAAAAAAAAAAAAAAAA")
    assert codes.check_external_code("1234567890123456789") == "1234567890123456789"
    assert codes.check_external_code("ab12-cd34-ef56") == "AB12CD34EF56"


def test_keys_are_digested_not_kept():
    key = codes.generate_key()
    assert len(key) >= 22 and codes.digest(key) != key and len(codes.digest(key)) == 64


def test_keys_never_look_like_a_command_line_option():
    keys = {codes.generate_key() for _ in range(3000)}  # about 47 would start with "-"
    assert len(keys) == 3000
    assert not any(k.startswith("-") for k in keys)
    assert any("-" in k for k in keys) and all(len(k) == 22 for k in keys)


def test_token_bucket_allows_burst_then_waits():
    bucket = TokenBucket(rate=1.0, burst=3)
    assert [bucket.take() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take() > 0.5


def test_keyed_limiter_is_per_key_and_bounded():
    limiter = KeyedLimiter(rate=0.1, burst=2, max_keys=10)
    limiter.spend("a")
    limiter.spend("a")
    assert limiter.blocked_for("a") > 0
    assert limiter.blocked_for("b") == 0
    for i in range(50):
        limiter.spend(f"k{i}")
    assert len(limiter._buckets) == 10


def test_settings_from_env_and_flags(tmp_path: Path):
    env = {
        "RTCPROCTOR_PORT": "9000",
        "RTCPROCTOR_DATA_DIR": str(tmp_path),
        "RTCPROCTOR_ICE_LOOPBACK": "yes",
        "RTCPROCTOR_STUN_URLS": "stun:a:3478, stun:b",
        "RTCPROCTOR_VIDEO_FPS": "5",
    }
    settings = Settings.from_env(env)
    assert settings.port == 9000 and settings.ice_loopback
    assert settings.stun_urls == ("stun:a:3478", "stun:b")
    assert settings.video.frame_rate == 5
    assert settings.resolved_database_url.endswith(f"{tmp_path}/rtcproctor.db")
    assert settings.override(port=1234, host=None).port == 1234
    with pytest.raises(ValueError, match="RTCPROCTOR_PORT"):
        Settings.from_env({"RTCPROCTOR_PORT": "eighty"})
    assert Settings.from_env({}).voice_workers is None
    assert Settings.from_env({"RTCPROCTOR_VOICE_WORKERS": "3"}).voice_workers == 3
    with pytest.raises(ValueError, match="RTCPROCTOR_VOICE_WORKERS"):
        Settings.from_env({"RTCPROCTOR_VOICE_WORKERS": "0"})


def test_roster_reads_plain_lists_and_csv(tmp_path: Path):
    plain = tmp_path / "plain.txt"
    plain.write_text("Ann Lee\n\nBob, Jr\n")
    assert read_roster(plain) == ["Ann Lee", "Bob"]
    table = tmp_path / "roster.csv"
    table.write_text("id,name,email\n1,Ann,a@x\n2,Bob,b@x\n")
    assert read_roster(table) == ["Ann", "Bob"]


def test_turn_urls_parse():
    from rtcproctor.rtc.turncheck import TurnUrl

    assert TurnUrl.parse("turn:turn.example.org") == TurnUrl(False, "turn.example.org", 3478, "udp")
    assert TurnUrl.parse("turns:t.example.org:443?transport=tcp") == TurnUrl(
        True, "t.example.org", 443, "tcp"
    )
    assert TurnUrl.parse("turn:[2001:db8::1]:3478?transport=tcp").host == "2001:db8::1"
    with pytest.raises(ValueError):
        TurnUrl.parse("stun:x:3478")


def test_ice_servers_without_turn_are_explicit_and_empty():
    from rtcproctor.signaling.ice import IceServers

    assert IceServers().for_client() == []
    assert IceServers(turn_urls=("turn:x",)).for_client() == []  # no secret, no TURN
    with_turn = IceServers(turn_urls=("turn:x",), turn_secret="s", ttl=60).for_client("id")
    assert with_turn[0]["username"].endswith(":id")


def test_pacer_thins_windows_when_busy_and_restores_them_when_idle():
    from rtcproctor.voice.pacing import Pacer

    pacer = Pacer(max_stride=3, period=10.0)
    now = 0.0
    pacer.record(0.0, now)  # periods now end at 10 s, 20 s, ...

    def run(busy_share: float, seconds: float) -> int:
        nonlocal now
        for _ in range(int(seconds / 0.5)):
            now += 0.5
            pacer.record(0.5 * busy_share, now)
        return pacer.stride

    assert run(0.5, 30) == 1  # keeps up: every window
    assert run(0.98, 10) == 2  # behind: 1 in 2
    assert run(0.98, 60) == 3  # still behind: up to the maximum, never beyond
    assert run(0.5, 30) == 3  # 0.5 at 1 in 3 would be 0.75 at 1 in 2: stays
    assert run(0.3, 10) == 2  # 0.3 → 0.45 at 1 in 2: finer
    assert run(0.35, 30) == 2  # 0.35 → 0.7 at every window: not yet
    assert run(0.2, 10) == 1


def _scripted_detector(**overrides):
    """A detector fed synthetic noise; the test plays the models' part (who speaks when,
    and what their embeddings are), so the verdict logic is tested alone."""
    import numpy as np

    from rtcproctor.voice.detector import Detector, DetectorConfig

    config = DetectorConfig(window=6.0, hop=1.0, **overrides)
    det = Detector("s", config)
    det.push(np.random.default_rng(0).normal(0, 0.05, 16_000 * 9).astype(np.float32))
    return det, det.ready_windows()


def _activity(spans: list[tuple[float, float]], overlap: tuple[float, float, float] | None = None):
    """300 frames of 20 ms; one (start, end) span of speech per local speaker, and the
    model's overlap probability: `overlap` = (start, end, probability), else none."""
    import numpy as np

    from rtcproctor.voice.segmentation import Activity

    frames = np.zeros((300, 3), bool)
    for k, (start, end) in enumerate(spans):
        frames[int(start / 0.02) : int(end / 0.02), k] = True
    likely = np.zeros(300, np.float32)
    if overlap is not None:
        likely[int(overlap[0] / 0.02) : int(overlap[1] / 0.02)] = overlap[2]
    return Activity(frames, 0.02, likely)


def _step(det, win, spans, vectors, overlap=None):
    import numpy as np

    requests = det.assess(win, _activity(spans, overlap))
    return det.conclude(win, np.array([vectors[k] for k in win.requests])), requests


def _scoring(similarity: float):
    """A unit vector at this cosine from the first axis (the student's voice)."""
    import numpy as np

    e = np.eye(192, dtype=np.float32)
    return (similarity * e[0] + np.sqrt(1 - similarity**2) * e[1]).astype(np.float32)


def test_a_short_foreign_voice_alerts_only_when_a_second_window_confirms_it():
    student, other = _scoring(1.0), _scoring(0.4)
    det, wins = _scripted_detector(pair_min=1.0, embed_min=1.5)
    alerts, _ = _step(det, wins[0], [(0.0, 6.0)], [student])  # enrolls the student
    assert alerts == [] and det.enrolled is not None
    # 1.2 s of a voice that is not the student's, too short to trust on its own: doubt.
    pair = [(0.0, 4.0), (4.4, 5.6)]
    alerts, requests = _step(det, wins[1], pair, [student, other])
    assert len(requests) == 2 and alerts == []
    alerts, _ = _step(det, wins[2], pair, [student, other])  # seen again: alert
    assert [str(a.type) for a in alerts] == ["multiple_voices"]


def test_a_short_voice_far_from_the_student_alerts_at_once():
    det, wins = _scripted_detector(pair_min=1.0, embed_min=1.5, short_sure=0.3)
    _step(det, wins[0], [(0.0, 6.0)], [_scoring(1.0)])
    pair = [(0.0, 4.0), (4.4, 5.6)]  # 1.2 s, but scoring 0.2: no second look needed
    alerts, _ = _step(det, wins[1], pair, [_scoring(1.0), _scoring(0.2)])
    assert [str(a.type) for a in alerts] == ["multiple_voices"]


def test_a_short_voice_after_a_silence_alerts_if_far_from_the_student_else_looks_again():
    def fresh():
        det, wins = _scripted_detector(pair_min=0.8, embed_min=1.5, short_sure=0.3)
        _step(det, wins[0], [(0.0, 6.0)], [_scoring(1.0)])  # enrolls
        return det, wins

    det, wins = fresh()
    alerts, requests = _step(det, wins[1], [(5.5, 6.0)], [])  # 0.5 s: too short to embed
    assert requests == [] and alerts == []
    det, wins = fresh()
    alerts, requests = _step(det, wins[1], [(4.8, 6.0)], [_scoring(0.2)])  # 1.2 s, far off
    assert len(requests) == 1 and [str(a.type) for a in alerts] == ["unknown_voice"]
    det, wins = fresh()
    alerts, _ = _step(det, wins[1], [(4.8, 6.0)], [_scoring(0.45)])  # 1.2 s, in doubt
    assert alerts == [] and det.focused
    alerts, _ = _step(det, wins[2], [(3.8, 6.0)], [_scoring(0.45)])  # 2.2 s: fails again
    assert [str(a.type) for a in alerts] == ["unknown_voice"]


def test_a_check_just_under_the_threshold_waits_for_a_second_look_and_a_clear_one_not():
    whole = [(0.0, 6.0)]

    def checked(similarity: float):
        """Enrolled, then the first identity check scores `similarity`."""
        det, wins = _scripted_detector(check_every=2.0, same_speaker=0.55, doubt_band=0.05)
        _step(det, wins[0], whole, [_scoring(1.0)])
        _step(det, wins[1], whole, [])
        alerts, _ = _step(det, wins[2], whole, [_scoring(similarity)])
        return det, wins, alerts

    det, wins, alerts = checked(0.52)  # within the band: doubt
    assert alerts == [] and det.focused
    alerts, _ = _step(det, wins[3], whole, [_scoring(1.0)])  # the student after all
    assert alerts == [] and not det.focused
    _det, _wins, alerts = checked(0.48)  # under the band: at once
    assert [str(a.type) for a in alerts] == ["unknown_voice"]


def test_a_quiet_voice_under_the_student_alerts_on_the_overlap_the_model_expects():
    whole, student = [(0.0, 6.0)], [_scoring(1.0)]
    det, wins = _scripted_detector(likely_overlap=0.6, soft_overlap=0.3)
    _step(det, wins[0], whole, student)
    # No frame is likely overlap (0.25), but 0.5 s of it is expected: suspicious, not enough.
    alerts, _ = _step(det, wins[1], whole, student, overlap=(3.0, 5.0, 0.25))
    assert alerts == [] and det.focused
    alerts, _ = _step(det, wins[2], whole, student, overlap=(2.0, 5.0, 0.25))  # 0.75 s
    assert [str(a.type) for a in alerts] == ["multiple_voices"]
    assert alerts[0].start == wins[2].start + 2.0
    det, wins = _scripted_detector(likely_overlap=0.6, soft_overlap=0.3)
    _step(det, wins[0], whole, student)
    for win in wins[1:4]:  # what single speakers' windows hold: 0.24 s, however often
        alerts, _ = _step(det, win, whole, student, overlap=(0.0, 6.0, 0.04))
        assert alerts == [] and not det.focused


def test_a_long_foreign_voice_alerts_at_once_and_a_short_matching_one_never():
    import numpy as np

    student, other = np.eye(192, dtype=np.float32)[:2]
    det, wins = _scripted_detector(pair_min=1.0, embed_min=1.5)
    _step(det, wins[0], [(0.0, 6.0)], [student])
    alerts, _ = _step(det, wins[1], [(0.0, 4.0), (4.2, 5.9)], [student, student])
    assert alerts == []  # 1.7 s, but the student's own voice
    alerts, _ = _step(det, wins[2], [(0.0, 3.0), (3.4, 5.9)], [student, other])
    assert [str(a.type) for a in alerts] == ["multiple_voices"]  # 2.5 s: no second look


def test_a_suspect_voice_is_looked_at_again_on_its_own_speech_not_the_whole_window():
    det, wins = _scripted_detector(check_every=2.0, check_seconds=2.0)
    whole = [(0.0, 6.0)]
    _step(det, wins[0], whole, [_scoring(1.0)])  # enrolls
    _step(det, wins[1], whole, [])  # 1 s of new speech: no check yet
    alerts, pieces = _step(det, wins[2], whole, [_scoring(0.52)])  # a marginal mismatch
    assert alerts == [] and pieces[0].size == 2 * 16_000 and det.focused
    # The second look embeds the suspected 2 s and the 1 s said since: not the 3 s of
    # the student before them, which would pull a newcomer's score up to a match.
    alerts, pieces = _step(det, wins[3], whole, [_scoring(0.52)])
    assert pieces[0].size == 3 * 16_000
    assert [str(a.type) for a in alerts] == ["unknown_voice"]


def test_a_thinned_stream_looks_at_every_window_while_something_is_suspicious():
    import numpy as np

    from rtcproctor.voice.detector import Detector, DetectorConfig

    student, other = _scoring(1.0), _scoring(0.4)  # `other`: a short voice in doubt
    det = Detector("s", DetectorConfig(window=6.0, hop=1.0, pair_min=1.0, embed_min=1.5))
    det.stride = 3  # a loaded server: 1 window in 3
    det.push(np.random.default_rng(0).normal(0, 0.05, 16_000 * 30).astype(np.float32))

    def next_window():
        return det.ready_windows(limit=1)[0]

    first = next_window()
    _step(det, first, [(0.0, 6.0)], [student])
    second = next_window()
    assert second.end - first.end == 3.0
    pair = [(0.0, 4.0), (4.4, 5.6)]  # a short voice that is not the student's: doubt
    assert _step(det, second, pair, [student, other])[0] == []
    assert det.focused
    third = next_window()
    assert third.end - second.end == 1.0  # the second look comes a hop later, not three
    alerts, _ = _step(det, third, pair, [student, other])
    assert [str(a.type) for a in alerts] == ["multiple_voices"]
    fourth = next_window()
    _step(det, fourth, [(0.0, 6.0)], [student])  # the student alone again, and checked
    assert not det.focused
    assert next_window().end - fourth.end == 3.0


def test_a_forked_detector_runs_ahead_without_touching_the_original():
    import numpy as np

    student, other = np.eye(192, dtype=np.float32)[:2]
    det, wins = _scripted_detector(pair_min=1.0, embed_min=1.5)
    _step(det, wins[0], [(0.0, 6.0)], [student])
    ahead = det.fork()
    assert ahead.buffer is det.buffer  # read only: shared, not copied
    assert np.array_equal(ahead.expected(2, 192), np.stack([student, student]))
    pair = [(0.0, 3.0), (3.4, 5.9)]
    alerts, _ = _step(ahead, wins[1], pair, [student, other])
    assert [str(a.type) for a in alerts] == ["multiple_voices"]
    assert det.alerts == [] and det._processed_end == wins[0].end
    alerts, _ = _step(det, wins[1], pair, [student, other])  # the original decides alike
    assert [str(a.type) for a in alerts] == ["multiple_voices"]


def test_the_allocator_keeps_freed_memory_where_there_is_glibc():
    import platform

    from rtcproctor.voice.allocator import keep_freed_memory

    assert keep_freed_memory() is (platform.libc_ver()[0] == "glibc")


def test_usable_cores_follow_the_cgroup_quota_and_the_cpu_affinity(tmp_path):
    import os
    import subprocess
    import sys

    from rtcproctor.cores import cgroup_quota, usable_cores

    v2, proc = tmp_path / "v2", tmp_path / "cgroup"
    (v2 / "system.slice" / "docker-1.scope").mkdir(parents=True)
    (v2 / "system.slice" / "docker-1.scope" / "cpu.max").write_text("150000 100000\n")
    (v2 / "system.slice" / "cpu.max").write_text("max 100000\n")
    proc.write_text("0::/system.slice/docker-1.scope\n")
    assert cgroup_quota(v2, proc) == 1.5
    assert usable_cores(v2, proc) == min(2, len(os.sched_getaffinity(0)))
    v1 = tmp_path / "v1"
    (v1 / "cpu" / "docker" / "abc").mkdir(parents=True)
    (v1 / "cpu" / "docker" / "cpu.cfs_quota_us").write_text("50000\n")  # the parent: half
    (v1 / "cpu" / "docker" / "cpu.cfs_period_us").write_text("100000\n")
    (v1 / "cpu" / "docker" / "abc" / "cpu.cfs_quota_us").write_text("-1\n")
    proc.write_text("4:memory:/docker/abc\n2:cpu,cpuacct:/docker/abc\n")
    assert cgroup_quota(v1, proc) == 0.5 and usable_cores(v1, proc) == 1
    proc.write_text("garbage\n\n0::/nowhere\n")
    assert cgroup_quota(v1, proc) is None
    # The real process, pinned to one core, may use one: one voice worker.
    pinned = "import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))});"
    pinned += "from rtcproctor.cores import usable_cores; print(usable_cores());"
    pinned += "from rtcproctor.voice.worker import serving_processes as s; print(s(), s(3))"
    out = subprocess.run([sys.executable, "-c", pinned], capture_output=True, text=True)
    assert out.stdout.split("\n")[:2] == ["1", "1 3"], out.stderr
    from rtcproctor.voice.worker import MAX_PROCESSES, serving_processes

    assert serving_processes() == max(1, min(usable_cores() - 1, MAX_PROCESSES))


@pytest.mark.parametrize(
    "voice_from,alerted_live", [(5.8, 7.5), (6.15, 8.0)], ids=["long-enough", "still-short"]
)
def test_a_live_doubt_is_looked_at_again_half_a_hop_later_and_offline_a_hop_later(
    voice_from, alerted_live
):
    """Live (windows taken as the audio comes), the second look at a doubtful voice comes
    `second_look` after the window that doubted it, then the hop's grid goes on;
    offline the next window of the grid is the second look. An early look that still
    hears less than `embed_min` of the voice leaves the verdict to the grid's window."""
    import numpy as np

    from rtcproctor.voice.detector import Detector, DetectorConfig

    noise = np.random.default_rng(0).normal(0, 0.05, 16_000 * 9).astype(np.float32)
    config = DetectorConfig(second_look=0.5, pair_min=0.8, embed_min=1.5, short_sure=0.3)
    seen = {}
    for live in (True, False):
        det = Detector("s", config)
        det.live = live
        det.push(noise[: 16_000 * 6])
        _step(det, det.ready_windows()[0], [(0.0, 6.0)], [_scoring(1.0)])  # enrolls
        det.push(noise[16_000 * 6 : 16_000 * 7])
        win = det.ready_windows()[0]
        alerts, _ = _step(det, win, [(6.0 - (7.0 - voice_from), 6.0)], [_scoring(0.45)])
        assert alerts == [] and det.focused  # under 1.5 s, in doubt
        ends, alerted = [], []
        for until in (7.5, 8.0):
            det.push(noise[len(ends) * 8000 + 16_000 * 7 : int(until * 16_000)])
            wins = det.ready_windows()
            ends += [w.end for w in wins]
            for win in wins:
                spans = [(6.0 - (win.end - voice_from), 6.0)]
                found, _ = _step(det, win, spans, [_scoring(0.45)])
                alerted += [(str(a.type), win.end) for a in found]
        seen[live] = (ends, alerted[:1])
    assert seen[True] == ([7.5, 8.0], [("unknown_voice", alerted_live)])
    assert seen[False] == ([8.0], [("unknown_voice", 8.0)])
