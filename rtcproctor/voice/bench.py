"""`rtcproctor bench voice`: recall, false alerts, delay and speed on real speech.

Mixtures are built from the development set in ../shared/eval (never the holdout), with
a fixed seed so that figures compare from one change to the next:
- single: speaker A alone (A's utterance looped with short pauses), must raise nothing;
  opus_single: the same through Opus (what WebRTC delivers), must raise nothing either;
- handoff: A, then B takes over (same level), then A again;
- overlap: B talks over A (same level); quiet10 / quiet20: B 10 / 20 dB below A;
- gap_whisper: A, a silence, then B alone 10 dB quieter (a helper who whispers while
  the student is silent), then A again;
- opus_quiet10: quiet10 passed through an Opus encode/decode (what WebRTC delivers).
All trials of a condition run concurrently through one Analyzer, fed in real-time-sized
chunks, as on a server; the detection delay counts the audio time until the window that
raised the alert was complete plus the measured compute time of that step.
"""

from __future__ import annotations

import argparse
import os
import time
import zlib
from collections import defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from rtcproctor.voice.alerts import AlertType
from rtcproctor.voice.audio import SAMPLE_RATE, load_audio, loop_speech, speaking
from rtcproctor.voice.detector import DetectorConfig

SR = SAMPLE_RATE
DEFAULT_EVAL_DIR = Path(__file__).resolve().parents[2] / ".." / "shared" / "eval"
VOICE_ALERTS = {AlertType.MULTIPLE_VOICES, AlertType.UNKNOWN_VOICE}
SLOW_AFTER = 4.0  # audio delay (s) past which --verbose shows how an episode was found


def _db(x: float) -> float:
    return float(10 ** (x / 20))


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(x.astype(np.float64) ** 2)) + 1e-12)


@dataclass
class Corpus:
    utterances: dict[str, np.ndarray]  # speaker id -> 16 kHz samples (trimmed)

    @classmethod
    def load(cls, folder: Path) -> Corpus:
        utts: dict[str, np.ndarray] = {}
        for path in sorted(folder.glob("*.flac")):
            x = load_audio(path)
            utts[path.name.split("-")[0]] = x
        if not utts:
            raise SystemExit(f"bench voice: no LibriSpeech FLAC in {folder}")
        return cls(utts)

    def talk(self, speaker: str, seconds: float, rng: np.random.Generator) -> np.ndarray:
        """`seconds` of one speaker: the utterance looped from a random offset, separated
        by natural pauses (0.2-1.0 s)."""
        return loop_speech(self.utterances[speaker], seconds, rng, pauses=(0.2, 1.0))


@dataclass
class Trial:
    name: str
    audio: np.ndarray
    episodes: list[tuple[float, float]]  # second voice (first speech, end of track), seconds
    single_until: float  # [0, single_until) has one speaker only (false-alert scoring)


def _level(x: np.ndarray, dbfs: float) -> np.ndarray:
    return (x / _rms(x) * _db(dbfs)).astype(np.float32)


def _first_speech(voice: np.ndarray, dbfs: float) -> float:
    """Seconds into a voice's own track (mixed at `dbfs`) until it first speaks. The loop
    starts at a random point of an utterance, sometimes in a pause: the delay counts
    from the second voice's first word, as `bench capacity` counts from its first packet."""
    block = SR // 100
    spoken = np.flatnonzero(speaking(voice, dbfs, block))
    return float(spoken[0] * block / SR) if spoken.size else 0.0


def _noise(n: int, rng: np.random.Generator) -> np.ndarray:
    return rng.normal(0, _db(-70), n).astype(np.float32)  # a quiet room, not digital zero


def make_trial(
    corpus: Corpus, condition: str, a: str, b: str, rng: np.random.Generator, idx: int
) -> Trial:
    level = float(rng.uniform(-30, -22))
    episode = float(rng.uniform(3.0, 6.0))
    lead = float(rng.uniform(18.0, 26.0))
    if condition in ("single", "opus_single"):
        x = _level(corpus.talk(a, 60.0, rng), level)
        x = x + _noise(x.size, rng)
        if condition.startswith("opus"):
            x = np.clip(opus_roundtrip(x), -1, 1)
        return Trial(f"{condition}-{idx}", x, [], 60.0)
    start = lead  # where the second voice's track begins
    if condition == "handoff":
        pre = _level(corpus.talk(a, lead, rng), level)
        second, second_db = _level(corpus.talk(b, episode, rng), level), level
        post = _level(corpus.talk(a, 10.0, rng), level)
        x = np.concatenate([pre, second, post])
    elif condition in ("overlap", "quiet10", "quiet20", "opus_quiet10"):
        rel = {"overlap": 0.0, "quiet10": -10.0, "quiet20": -20.0, "opus_quiet10": -10.0}
        x = _level(corpus.talk(a, lead + episode + 10.0, rng), level)
        second_db = level + rel[condition]
        second = _level(corpus.talk(b, episode, rng), second_db)
        on = int(lead * SR)
        x[on : on + second.size] += second
    elif condition == "gap_whisper":
        pre = _level(corpus.talk(a, lead, rng), level)
        gap1 = np.zeros(int(8.0 * SR), np.float32)
        second_db = level - 10.0
        second = _level(corpus.talk(b, episode, rng), second_db)
        gap2 = np.zeros(int(4.0 * SR), np.float32)
        post = _level(corpus.talk(a, 6.0, rng), level)
        x = np.concatenate([pre, gap1, second, gap2, post])
        start = lead + 8.0
    else:
        raise ValueError(condition)
    eps = [(start + _first_speech(second, second_db), start + episode)]
    x = x + _noise(x.size, rng)
    if condition.startswith("opus"):
        x = opus_roundtrip(x)
    return Trial(f"{condition}-{idx}", np.clip(x, -1, 1), eps, start)


def opus_roundtrip(x: np.ndarray, bitrate: int = 32_000) -> np.ndarray:
    """Encode and decode with libopus at 48 kHz, as a WebRTC audio track would carry it."""
    import av

    from rtcproctor.voice.audio import resample

    y = resample(x, SR, 48_000)
    enc = av.CodecContext.create("libopus", "w")
    enc.sample_rate, enc.layout, enc.format, enc.bit_rate = 48_000, "mono", "s16", bitrate
    enc.open()
    dec = av.CodecContext.create("opus", "r")
    dec.sample_rate, dec.layout = 48_000, "mono"
    out: list[np.ndarray] = []
    pcm = (np.clip(y, -1, 1) * 32767).astype(np.int16)
    pts = 0
    for i in range(0, pcm.size - 960 + 1, 960):
        frame = av.AudioFrame.from_ndarray(pcm[None, i : i + 960], format="s16", layout="mono")
        frame.sample_rate, frame.pts = 48_000, pts
        pts += 960
        for packet in enc.encode(frame):
            for f in dec.decode(packet):
                out.append(f.to_ndarray().reshape(-1).astype(np.float32))
    for packet in enc.encode(None):
        for f in dec.decode(packet):
            out.append(f.to_ndarray().reshape(-1).astype(np.float32))
    z = np.concatenate(out)
    if np.issubdtype(z.dtype, np.integer) or np.abs(z).max() > 1.5:
        z = z / 32768.0
    return resample(z, 48_000, SR)[: x.size]


@dataclass
class Event:
    stream: str
    alert_id: int
    type: AlertType
    emitted: float  # stream time when the window that raised it was complete
    compute: float  # seconds of compute of that step
    start: float
    end: float


@dataclass
class RunResult:
    events: list[Event] = field(default_factory=list)
    audio_seconds: float = 0.0
    compute_seconds: float = 0.0
    embeddings: int = 0
    steps: list[float] = field(default_factory=list)
    traces: dict[str, list[dict[str, object]]] = field(default_factory=dict)


def run_live(
    streams: dict[str, np.ndarray],
    config: DetectorConfig,
    chunk: float | None = None,
    trace: bool = False,
    pace: int = 1,
) -> RunResult:
    """Feed every stream in lockstep, `chunk` seconds at a time (half a hop: an early
    second look comes when a server would take it), one step per chunk; `pace` N
    analyses 1 window in N, as a loaded server does."""
    from rtcproctor.voice.analyzer import Analyzer

    analyzer = Analyzer(config, stride=pace, live=True)
    step = int((chunk or config.hop / 2) * SR)
    longest = max(x.size for x in streams.values())
    result = RunResult(audio_seconds=sum(x.size for x in streams.values()) / SR)
    closed: set[str] = set()
    if trace:
        for name in streams:
            result.traces[name] = analyzer.detector(name).trace = []
    for pos in range(0, longest + step, step):
        for name, x in streams.items():
            if pos < x.size:
                analyzer.submit(name, x[pos : pos + step])
            elif name not in closed:
                analyzer.close(name)
                closed.add(name)
        began = time.perf_counter()
        alerts = analyzer.step()
        spent = time.perf_counter() - began
        result.compute_seconds += spent
        result.steps.append(spent)
        result.embeddings += analyzer.last.embeddings
        for a in alerts:
            now = min(pos + step, streams[a.stream].size) / SR
            result.events.append(Event(a.stream, a.id, a.type, now, spent, a.start, a.end))
    return result


@dataclass
class Score:
    condition: str
    trials: int
    detected: int
    delays: list[float]
    false_alerts: int
    single_hours: float
    types: dict[str, int]
    audio_delays: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def line(self) -> str:
        recall = self.detected / self.trials if self.trials else float("nan")
        p50, p95 = np.percentile(self.delays, [50, 95]) if self.delays else (np.nan, np.nan)
        fph = self.false_alerts / self.single_hours if self.single_hours else float("nan")
        kinds = ",".join(f"{k}:{v}" for k, v in sorted(self.types.items())) or "-"
        rec = f"{recall:6.3f}" if self.trials else "   n/a"
        a95 = np.percentile(self.audio_delays, 95) if self.audio_delays else np.nan
        return (
            f"{self.condition:<13} {self.trials:>6} {rec} {p50:8.2f} {p95:8.2f} {a95:8.2f} "
            f"{self.false_alerts:>6} {self.single_hours:7.2f} {fph:8.2f}  {kinds}"
        )


def score(condition: str, trials: list[Trial], run: RunResult, config: DetectorConfig) -> Score:
    by_stream: dict[str, list[Event]] = defaultdict(list)
    for e in run.events:
        if e.type in VOICE_ALERTS:
            by_stream[e.stream].append(e)
    detected, delays, audio_delays, false_alerts = 0, [], [], 0
    notes: list[str] = []
    types: dict[str, int] = defaultdict(int)
    # A voice may be seen until it leaves the last window; fixed, so recall compares across hops.
    horizon = config.window + 4.0
    for t in trials:
        events = sorted(by_stream.get(t.name, []), key=lambda e: e.emitted)
        false_ids = {e.alert_id for e in events if e.emitted <= t.single_until}
        false_alerts += len(false_ids)
        for e in events:
            if e.alert_id in false_ids:
                span = f"({e.start:.1f}-{e.end:.1f})"
                notes.append(f"false {e.type} {t.name} at {e.emitted:.0f} s {span}")
                notes += [
                    f"      {r}"
                    for r in run.traces.get(t.name, [])
                    if abs(float(r["end"]) - e.emitted) < 0.01  # type: ignore[arg-type]
                ]
        for on, off in t.episodes:
            hit = next(
                (e for e in events if on < e.emitted <= off + horizon and e.end >= on - 0.5),
                None,
            )
            if hit is not None:
                detected += 1
                delays.append(hit.emitted - on + hit.compute)
                audio_delays.append(hit.emitted - on)
                types[str(hit.type)] += 1
                if hit.emitted - on > SLOW_AFTER:
                    notes.append(
                        f"slow {t.name} episode {on:.1f}-{off:.1f}: "
                        f"{hit.type} at {hit.emitted:.1f} s"
                    )
                    notes += [
                        f"      {r}"
                        for r in run.traces.get(t.name, [])
                        if on - 2 < float(r["end"]) <= hit.emitted + 0.01  # type: ignore[arg-type]
                    ]
            else:
                notes.append(f"missed {t.name} episode {on:.1f}-{off:.1f}")
                for r in run.traces.get(t.name, []):
                    if on - 2 < float(r["end"]) <= off + horizon:  # type: ignore[arg-type]
                        notes.append(f"      {r}")
    hours = sum(t.single_until for t in trials) / 3600
    n_episodes = sum(len(t.episodes) for t in trials)
    return Score(
        condition,
        n_episodes,
        detected,
        delays,
        false_alerts,
        hours,
        dict(types),
        audio_delays,
        notes,
    )


# The targets: second voices at the student's level or 10 dB under it, through
# Opus too, talking over, after or instead of the student (quiet20 goes beyond them).
TARGETED = ("handoff", "overlap", "quiet10", "gap_whisper", "opus_quiet10")


def condition_trials(corpus: Corpus, condition: str, n: int, seed: int) -> list[Trial]:
    """The mixtures of one condition for a seed: one generator per condition, so a subset
    of conditions (or another bench, `bench delay`) builds the same mixtures."""
    rng = np.random.default_rng([seed, zlib.crc32(condition.encode())])
    return [
        make_trial(corpus, condition, a, b, rng, i)
        for i, (a, b) in enumerate(_pairs(corpus, n, rng))
    ]


def _pairs(corpus: Corpus, n: int, rng: np.random.Generator) -> list[tuple[str, str]]:
    ids = sorted(corpus.utterances)
    out = []
    for _ in range(n):
        a, b = rng.choice(ids, size=2, replace=False)
        out.append((str(a), str(b)))
    return out


def bench_ami(folder: Path, config: DetectorConfig) -> list[str]:
    from rtcproctor.voice.analyzer import Analyzer
    from rtcproctor.voice.offline import analyze_file

    ref: dict[str, set[str]] = defaultdict(set)
    rttm = folder / "reference.rttm"
    if rttm.exists():
        for line in rttm.read_text(encoding="utf-8").splitlines():
            f = line.split()
            if len(f) > 7 and f[0] == "SPEAKER":
                ref[f[1]].add(f[7])
    lines = []
    for wav in sorted(folder.glob("*.wav")):
        res = analyze_file(wav, Analyzer(replace(config, keep_turns=True)))
        kinds = sorted({str(a.type) for a in res.alerts})
        n = len(ref.get(wav.stem, set())) or "?"
        expect = "none" if n == 1 else "alert"
        got = "alert" if any(a.type in VOICE_ALERTS for a in res.alerts) else "none"
        ok = "ok" if got == expect else "MISS" if expect == "alert" else "FALSE"
        lines.append(
            f"  {wav.stem:<8} speakers={n}  voice alerts={got:<5} {ok:<5} "
            f"{','.join(kinds) or '-'}  turns={len(res.turns)}"
        )
    return lines


def run(args: argparse.Namespace) -> int:
    from rtcproctor.voice.models import load_models

    eval_dir: Path = args.eval_dir.resolve()
    libri = eval_dir / "librispeech-train-clean-100"
    if not libri.is_dir():
        print(f"bench voice: {libri} not found (pass --eval-dir)")
        return 2
    config = DetectorConfig()
    for item in getattr(args, "set", []) or []:
        key, _, value = item.partition("=")
        current = getattr(config, key)
        config = replace(config, **{key: type(current)(value)})
    parts = set(getattr(args, "parts", "recall,speed,throughput,ami").split(","))
    rng = np.random.default_rng(args.seed)
    t0 = time.perf_counter()
    models = load_models()
    print(
        f"models: {models.embedding_kind} from {models.source}, {models.precision} "
        f"({time.perf_counter() - t0:.1f} s)"
    )
    print(f"cpu_count={os.cpu_count()} torch threads={__import__('torch').get_num_threads()}")
    print(f"config: {config}, pace 1 window in {getattr(args, 'pace', 1)}")
    corpus = Corpus.load(libri)
    print(f"eval: {len(corpus.utterances)} LibriSpeech speakers from {libri}")
    trials_n = 6 if args.quick else args.trials
    single_n = 6 if args.quick else max(1, int(args.single_minutes + 0.5))

    header = (
        f"{'condition':<13} {'trials':>6} {'recall':>6} {'p50 s':>8} {'p95 s':>8} {'p95 aud':>8} "
        f"{'false':>6} {'1spk h':>7} {'false/h':>8}  first alert types"
    )
    conditions = ["single", "opus_single", "handoff", "overlap", "quiet10", "quiet20"]
    conditions += ["gap_whisper", "opus_quiet10"]
    if getattr(args, "conditions", None):
        conditions = [c for c in conditions if c in args.conditions.split(",")]
    if "recall" not in parts:
        conditions = []
    else:
        print("\nrecall / delay (episodes 3-6 s), false voice alerts on single-speaker audio")
        print(header)
    total_false, total_hours = 0, 0.0
    targeted: list[Score] = []
    for condition in conditions:
        n = single_n if condition.endswith("single") else trials_n
        trials = condition_trials(corpus, condition, n, args.seed)
        run_result = run_live(
            {t.name: t.audio for t in trials},
            config,
            trace=getattr(args, "verbose", False),
            pace=getattr(args, "pace", 1),
        )
        s = score(condition, trials, run_result, config)
        total_false += s.false_alerts
        total_hours += s.single_hours
        if condition in TARGETED:
            targeted.append(s)
        print(s.line(), flush=True)
        if getattr(args, "verbose", False):
            for note in s.notes:
                print("    " + note)
        steps = np.array(run_result.steps)
        if getattr(args, "verbose", False) and steps.size:
            print(f"    step compute p50 {np.median(steps):.2f} s max {steps.max():.2f} s")
    if total_hours:
        print(
            f"{'ALL single':<13} {'':>6} {'':>6} {'':>8} {'':>8} {'':>8} {total_false:>6} "
            f"{total_hours:7.2f} {total_false / total_hours:8.2f}"
        )
    if targeted:
        pooled = Score(
            "ALL targeted",
            sum(t.trials for t in targeted),
            sum(t.detected for t in targeted),
            [d for t in targeted for d in t.delays],
            sum(t.false_alerts for t in targeted),
            sum(t.single_hours for t in targeted),
            {},
            [d for t in targeted for d in t.audio_delays],
        )
        print(pooled.line() + "  (" + ", ".join(t.condition for t in targeted) + ")")

    if "speed" in parts:
        _bench_speed(args, corpus, config, rng)
    if "throughput" in parts:
        _bench_throughput(args, corpus, config, rng)
    if "ami" in parts:
        _bench_real(eval_dir, config)
    print(f"\ntotal bench time {time.perf_counter() - t0:.0f} s")
    return 0


def _bench_speed(
    args: argparse.Namespace, corpus: Corpus, config: DetectorConfig, rng: np.random.Generator
) -> None:
    """`analyze` speed: one long file of continuous speech, one process."""
    from rtcproctor.voice.analyzer import Analyzer
    from rtcproctor.voice.offline import analyze_samples

    minutes = 3 if args.quick else 10
    ids = sorted(corpus.utterances)
    speaker = ids[int(rng.integers(0, len(ids)))]
    x = _level(corpus.talk(speaker, minutes * 60.0, rng), -26) + _noise(minutes * 60 * SR, rng)
    print()
    for pace in (1, 3):
        began = time.perf_counter()
        analyze_samples(x, Analyzer(replace(config, keep_turns=True), stride=pace))
        spent = time.perf_counter() - began
        speed = x.size / SR / spent
        print(
            f"analyze --pace {pace} speed: {x.size / SR:.0f} s of continuous speech in "
            f"{spent:.1f} s = {speed:.0f}x real time (1 h in {3600 / speed:.0f} s)"
        )
    if not args.quick:
        _bench_cli_hour(corpus, rng, max(1, getattr(args, "repeat", 3)))


def _bench_cli_hour(corpus: Corpus, rng: np.random.Generator, repeat: int) -> None:
    """The command as a user runs it: `rtcproctor analyze` on a 1 h WAV file of one voice
    with three 5 s second voices, start to finish (interpreter, models, decoding), run
    `repeat` times: this machine's speed drifts by 10 % over an evening."""
    import json
    import subprocess
    import sys
    import tempfile

    import soundfile as sf

    ids = sorted(corpus.utterances)
    a, b = (ids[int(i)] for i in rng.choice(len(ids), 2, replace=False))
    x = _level(corpus.talk(a, 3600.0, rng), -26) + _noise(3600 * SR, rng)
    onsets = (600, 1800, 3000)
    for t in onsets:
        x[t * SR : (t + 5) * SR] += _level(corpus.talk(b, 5.0, rng), -28)
    times: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "hour.wav"
        sf.write(path, np.clip(x, -1, 1), SR, subtype="PCM_16")
        for _ in range(repeat):
            began = time.perf_counter()
            done = subprocess.run(
                [sys.executable, "-m", "rtcproctor", "analyze", str(path), "--json"],
                capture_output=True,
                text=True,
                check=False,
            )
            times.append(time.perf_counter() - began)
            if done.returncode != 0:
                print(f"rtcproctor analyze (1 h file) failed: {done.stderr.strip()[-500:]}")
                return
    alerts = json.loads(done.stdout)["alerts"]
    found = sum(any(al["start"] <= t + 5 and al["end"] >= t for al in alerts) for t in onsets)
    runs = ", ".join(f"{t:.1f}" for t in times)
    print(
        f"rtcproctor analyze on a 1 h WAV, start to finish: median {np.median(times):.1f} s "
        f"({runs} s) on {os.cpu_count()} cores; second voices found {found}/{len(onsets)}, "
        f"{len(alerts) - found} other alerts"
    )


def _bench_throughput(
    args: argparse.Namespace, corpus: Corpus, config: DetectorConfig, rng: np.random.Generator
) -> None:
    """N concurrent students, all talking all the time (the worst case)."""
    ids = sorted(corpus.utterances)
    n = 8 if args.quick else args.students
    seconds = 30.0 if args.quick else 60.0
    streams = {
        f"student-{i}": _level(corpus.talk(ids[int(rng.integers(0, len(ids)))], seconds, rng), -26)
        + _noise(int(seconds * SR), rng)
        for i in range(n)
    }
    res = run_live(streams, config, chunk=0.5)
    ratio = res.compute_seconds / seconds
    steps = np.array(res.steps)
    print(
        f"throughput: {n} students x {seconds:.0f} s continuous speech fed in 0.5 s chunks: "
        f"compute {res.compute_seconds:.1f} s = {ratio:.2f} of real time "
        f"(step p50 {np.percentile(steps, 50):.2f} s, p95 {np.percentile(steps, 95):.2f} s, "
        f"{res.embeddings} embeddings) -> ~{n / ratio:.0f} concurrent real-time students "
        f"(all talking) on {os.cpu_count()} cores"
    )


def _bench_real(eval_dir: Path, config: DetectorConfig) -> None:
    """Real recordings with references: AMI meeting excerpts and pyannote's sample."""
    ami = eval_dir / "ami-excerpts"
    if ami.is_dir():
        print("\nAMI excerpts (analyze, same detector):")
        for line in bench_ami(ami, config):
            print(line)
    sample = eval_dir / "pyannote-sample"
    if sample.is_dir():
        print("pyannote sample:")
        for line in bench_ami(sample, config):
            print(line)
