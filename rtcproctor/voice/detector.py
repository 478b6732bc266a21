"""Per-student streaming state: ring buffer, rolling windows, verdicts, alerts.

Why it is shaped this way
- Segmentation (cheap, batched across students) runs on every rolling window and
  *proposes*: how many local speakers, and when each is active.
- Speaker embeddings (expensive) *confirm*, and are computed only when needed:
  enrolling the student, a window where segmentation sees two speakers, a voice that
  cannot be linked to one already known (e.g. speech after a silence), and a periodic
  identity check. Continuous speech of one person is linked window to window through
  the overlap of consecutive windows (the segmentation's local speaker is consistent
  inside a window), so it costs no embedding at all.
- Verdicts repeat while an episode lasts; repeats of one type within `cooldown`
  extend the open alert (same id, higher revision) instead of raising a new one.

The detector never runs a model itself: `ready_windows()` hands windows to an
`Analyzer`, which batches the models across students and calls back `assess()`
(segmentation result → embedding requests) and `conclude()` (embeddings → alerts).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from rtcproctor.voice.alerts import Alert, AlertType
from rtcproctor.voice.audio import SAMPLE_RATE, block_rms, sanitize
from rtcproctor.voice.embedding import cosine
from rtcproctor.voice.segmentation import Activity

STUDENT = 0  # label of the enrolled student; foreign voices get 1, 2, ...
# What a window's verdicts change, put back after an early second look that raised
# nothing (`DetectorConfig.second_look`).
_DECISION_STATE = (
    "_history",
    "_foreign",
    "enrolled",
    "_enroll_count",
    "_since_check",
    "_suspect",
    "_suspect_from",
    "_overlaps",
    "_likely",
    "_processed_end",
    "_last_mode",
    "turns",
)


@dataclass(frozen=True)
class DetectorConfig:
    """Every knob in one place. The few that decide verdicts are marked (tuned on eval set).

    window, hop: segmentation window and its step. 6 s gives the model context to tell two
        voices apart; the hop bounds the detection delay (a second voice needs ~1-2 s of
        speech, then waits at most one hop). A 1 s hop costs 6x real time of segmentation
        per student (2 s: 3x); it brought the p95 audio delay of every eval condition with
        recall >= 0.8 under 4 s.
    min_speech (verdict): a local speaker counts only if active this long in a window;
        filters the segmentation's short spurious speakers (breaths, clicks).
    overlap_min, overlap_sure (verdict): simultaneous speech is a second voice by itself if
        one window holds `overlap_sure` of it, or two consecutive windows agree on
        `overlap_min` of it. Embeddings cannot confirm overlap (the quieter voice's frames
        are dominated by the louder one), but the segmentation model, unlike for speaker
        changes, rarely claims overlap in single-speaker speech: one window of the eval
        set's single speakers held 0.51 s, and it was alone.
    soft_overlap (verdict): frames where the model gives overlapped speech at least this
        probability count as overlap too (1 = off). A helper 10-20 dB under the student
        often never becomes a local speaker of its own, yet raises this probability;
        agreement of two windows keeps single-speaker speech (with or without Opus)
        free of false alerts.
    likely_overlap (verdict): a window whose expected seconds of overlapped speech (the
        model's overlap probability summed over its frames) reach this holds a second
        voice by itself. A quiet helper raises this sum windows before any frame crosses
        `soft_overlap` for long; half of it takes a thinned stream's next window at full
        pace. In 7.7 h of single speakers (seeds 0 and 7, half through Opus; 27.7k
        windows) no window summed more than 0.45 s; half the windows 1-4 s into a helper
        10 dB under the student summed over 1.1 s. Two consecutive windows over 0.45 s
        each found no helper sooner; 0.5 in one window did (p95 0.8 s sooner), but sits
        too near the single speakers' tail, and AMI's far-field ones reached 0.45 s too.
    embed_min (verdict): shortest speech worth an embedding on its own; CAM++ on less is
        unreliable.
    pair_min (verdict): in a window with two local speakers, the shorter voice is embedded
        from this much speech, and so is a voice after a silence. Segmentation often gives
        a hand-over's new voice, or a quiet helper, only 0.8-1.5 s per window; a mismatch
        on less than `embed_min` needs a second window unless under `short_sure` (without
        that, 1.0 s raised false alerts). A whisper after a silence waited for 1.5 s of
        it in one window before: p95 4.16 s of audio, now 3.27 s (80 trials).
    same_speaker (verdict): cosine similarity at or above which a voice is the enrolled
        student (or two voices are one person, before enrollment). One threshold for every
        comparison. On the eval set, a 2.5 s piece of the student's speech scored >= 0.648
        against the enrollment in 741 checks, while 2.5 s of another LibriSpeech speaker
        scores >= 0.55 in 0.7% of pairs: 0.55 keeps a margin on both sides.
    doubt_band (verdict): a voice scoring within this much below same_speaker is only a
        suspect: no alert until a second check at the next window also fails. Removes the
        false alerts of speakers whose enrollment happened to be atypical. In 4.4 h of
        single speakers (2.2 h through Opus) no check nor voice of `embed_min` or more
        scored under 0.576, while many of the hand-overs' first mismatches lay in
        0.45-0.55: 0.05 (not 0.1) took the hand-overs' p95 delay from 4.36 to 3.58 s
        (80 trials), with the eval set's false alerts unchanged (1 in 7.09 h). The
        second look embeds the suspected speech and all the voice said after it, not the
        whole window: after a hand-over that held the student too, and the diluted second
        look cleared the newcomer (2 of 5 hand-overs missed in 80 trials).
    second_look: live, a doubtful mismatch is looked at again in a window ending this
        long after the doubtful one, not only a whole hop later (hop: off). Many of the
        slowest second voices through WebRTC were a short first piece of a newcomer or
        a whisper (under `embed_min`, scoring above `short_sure`), looked at again a
        hop later. The early look can only bring an alert forward: if it raises none,
        the detector forgets it, and the grid's next window decides as it would have
        (without that, the look's links made one whisper pass for the student for 5 s).
        Offline analysis takes windows ahead of the verdicts, so it keeps the hop.
    short_sure (verdict): a voice heard for less than `embed_min` alerts without a second
        look if it scores under this. Single speakers' short pieces scored down to 0.364
        (4.4 h), a hand-over's newcomer often under 0.3 (22 of its 148 short pieces).
    enroll_min: clean single-speaker speech needed in one window to enroll the student.
    enroll_refine: how many embeddings the enrollment averages (1 = the first clean window
        only). Averaging verified pieces sounds robust but pulls the enrollment towards
        the average voice, raising its similarity to other people: measured worse.
    check_every (cost/recall): seconds of linked speech between identity checks of the newest
        speech. Segmentation keeps two voices of one level under one label in about half of
        the abrupt handoffs of the eval set (no window ever shows a second local speaker in
        a quarter of them); only these checks catch them. Each costs one embedding.
    check_seconds: how much of the newest speech an identity check embeds. Equal to
        check_every, consecutive checks tile the speech: a 3 s voice between two checks
        cannot slip through (4 s / 2.5 s missed them: handoff recall 0.70 vs 0.825 at a
        1 s hop), for 1.6x the embedded audio.
    link_min: activity shared with an already-labelled voice (in the overlap with earlier
        windows) to inherit its label without an embedding.
    silence_rms, silent_after: "mic silent" = no 100 ms block above silence_rms (-60 dBFS)
        for silent_after seconds.
    cooldown: repeats of one alert type within this many seconds extend the open alert.
    """

    window: float = 6.0
    hop: float = 1.0
    min_speech: float = 0.5
    overlap_min: float = 0.5
    overlap_sure: float = 1.0
    soft_overlap: float = 0.3
    likely_overlap: float = 0.6
    embed_min: float = 1.5
    pair_min: float = 0.8
    same_speaker: float = 0.55
    doubt_band: float = 0.05
    second_look: float = 0.5
    short_sure: float = 0.3
    enroll_min: float = 3.0
    enroll_refine: int = 1
    check_every: float = 2.0
    check_seconds: float = 2.0
    link_min: float = 0.5
    silence_rms: float = 1e-3
    silent_after: float = 30.0
    cooldown: float = 30.0
    evidence_pad: float = 3.0
    evidence_max: float = 60.0
    buffer_seconds: float = 90.0
    keep_turns: bool = False


class RingBuffer:
    """Fixed-capacity sample buffer addressed by absolute sample index."""

    def __init__(self, capacity: int) -> None:
        self.data = np.zeros(capacity, np.float32)
        self.capacity = capacity
        self.total = 0  # samples ever written

    @property
    def oldest(self) -> int:
        return max(0, self.total - self.capacity)

    def push(self, samples: np.ndarray) -> None:
        n = samples.size
        if n > self.capacity:  # only the newest `capacity` samples can be kept
            self.total += n - self.capacity
            samples, n = samples[-self.capacity :], self.capacity
        pos = self.total % self.capacity
        first = min(n, self.capacity - pos)
        self.data[pos : pos + first] = samples[:first]
        self.data[: n - first] = samples[first:]
        self.total += n

    def read(self, start: int, end: int) -> np.ndarray:
        """Samples [start, end); zeros where not (or no longer) available."""
        out = np.zeros(max(0, end - start), np.float32)
        lo, hi = max(start, self.oldest), min(end, self.total)
        if hi <= lo:
            return out
        a, b = lo % self.capacity, hi % self.capacity
        chunk = (
            self.data[a : a + (hi - lo)]
            if a < b or hi - lo == 0
            else np.concatenate([self.data[a:], self.data[:b]])
        )
        out[lo - start : hi - start] = chunk
        return out


Mode = Literal["none", "overlap", "pair", "enroll", "check", "identify", "known"]


@dataclass
class Window:
    """One rolling window of one stream, and what the detector decided to do with it."""

    stream: str
    start: float
    end: float
    samples: np.ndarray = field(repr=False)
    silent: bool = False
    final: bool = False
    look: bool = False  # an early second look's, off the hop's grid (`second_look`)
    # filled by Detector.assess():
    mode: Mode = "none"
    speakers: list[int] = field(default_factory=list)
    links: dict[int, int] = field(default_factory=dict)
    requests: list[int] = field(default_factory=list)  # local speakers to embed
    activity: Activity | None = field(default=None, repr=False)
    both: np.ndarray | None = field(default=None, repr=False)  # frames of overlapped speech
    since: dict[int, float] = field(default_factory=dict)  # where each embedded piece starts


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) frame index pairs of consecutive True."""
    padded = np.concatenate([[False], mask, [False]])
    diff = np.diff(padded.astype(np.int8))
    return list(zip(np.flatnonzero(diff == 1), np.flatnonzero(diff == -1), strict=True))


def _overlap(a: list[tuple[float, float]], b: list[tuple[float, float]]) -> float:
    total = 0.0
    for s1, e1 in a:
        for s2, e2 in b:
            total += max(0.0, min(e1, e2) - max(s1, s2))
    return total


class Detector:
    """Streaming verdicts for one student's microphone (not thread-safe: one owner)."""

    def __init__(self, stream: str, config: DetectorConfig | None = None) -> None:
        self.stream = stream
        self.config = c = config or DetectorConfig()
        self.buffer = RingBuffer(int(c.buffer_seconds * SAMPLE_RATE))
        self._win = int(c.window * SAMPLE_RATE + 0.5)
        self._hop = int(c.hop * SAMPLE_RATE + 0.5)
        self._next_end = self._win
        self._last_window_end = 0  # samples: end of the last window handed out
        self._processed_end = 0.0  # seconds: end of the last concluded window
        self._history: list[tuple[int, float, float]] = []  # (label, start, end), recent
        self.turns: list[tuple[int, float, float]] = []
        self.enrolled: np.ndarray | None = None
        self._enroll_count = 0
        self._foreign: list[np.ndarray] = []  # centroid of foreign label i+1
        self._since_check = 0.0
        self._suspect = False  # a doubtful mismatch awaits a second check
        self._suspect_from = 0.0  # seconds: where the suspected speech began
        self._overlaps: list[tuple[float, float]] = []  # overlap seen in the last window
        self._likely = 0.0  # expected seconds of overlap in the last window
        self._open: dict[AlertType, Alert] = {}
        self._last_energy = 0.0
        self._energy_tail = np.zeros(0, np.float32)
        self.alerts: list[Alert] = []  # every alert ever raised (offline reports)
        self.windows_seen = 0
        self.windows_skipped = 0
        self.finished = False
        self.trace: list[dict[str, object]] | None = None  # set to [] to record decisions
        # Set by a live analyzer that cannot keep up (voice.pacing): only every stride-th
        # window is analysed and identity checks are spaced out alike.
        self.stride = 1
        self._last_mode: Mode = "none"
        # Set by an analyzer that takes windows as the audio comes (live): a doubtful
        # mismatch gets its second look `second_look` after the window that raised it.
        self.live = False
        self._look_end = 0  # samples: end of the window of a pending second look, or 0
        self._before_look: dict[str, object] = {}  # decision state as the look began

    # ---------------------------------------------------------------- audio in
    @property
    def now(self) -> float:
        """Seconds of audio received so far (the stream's clock)."""
        return self.buffer.total / SAMPLE_RATE

    @property
    def focused(self) -> bool:
        """A second voice may be starting (two speakers or likely overlap in the last
        window, or a mismatch awaiting its second look): the next windows are taken at
        full pace even when the server thins them, so that thinning delays the alerts
        of quiet streams, not the confirmation of suspicious ones."""
        return (
            self._suspect
            or bool(self._overlaps)
            or self._likely >= self.config.likely_overlap / 2
            or self._last_mode in ("pair", "overlap")
        )

    @property
    def look_due(self) -> float | None:
        """Seconds of audio at which a pending second look's window is complete."""
        return self._look_end / SAMPLE_RATE if self._look_end else None

    def push(self, samples: np.ndarray) -> None:
        """Append 16 kHz mono float32 samples (any chunk size; lost packets: push zeros)."""
        x = sanitize(np.asarray(samples).reshape(-1))
        if x.size == 0:
            return
        start_total = self.buffer.total
        self.buffer.push(x)
        block = SAMPLE_RATE // 10
        tail = np.concatenate([self._energy_tail, x])
        rms = block_rms(tail, block)
        loud = np.flatnonzero(rms > self.config.silence_rms)
        if loud.size:
            tail_start = start_total - self._energy_tail.size
            self._last_energy = (tail_start + (loud[-1] + 1) * block) / SAMPLE_RATE
        self._energy_tail = tail[rms.size * block :]

    def re_enroll(self) -> None:
        """Forget the enrolled voice; the next clean single-speaker speech enrolls again."""
        self.enrolled = None
        self._enroll_count = 0
        self._foreign.clear()
        self._history.clear()
        self._since_check = 0.0

    # ---------------------------------------------------------------- windows out
    def _make_window(self, end: int, final: bool = False, regular: bool = True) -> Window:
        """`regular`: a window of the hop's grid (a second look's is not)."""
        start = end - self._win
        samples = self.buffer.read(start, end)
        rms = block_rms(samples, SAMPLE_RATE // 10)
        silent = rms.size == 0 or float(rms.max()) <= self.config.silence_rms
        if regular:
            self._last_window_end = end
        self.windows_seen += 1
        return Window(
            self.stream, start / SAMPLE_RATE, end / SAMPLE_RATE, samples, silent, final, not regular
        )

    def ready_windows(self, limit: int | None = None, newest: bool = False) -> list[Window]:
        """Windows whose audio is complete, oldest first. If the analyzer fell behind by
        more than the ring buffer holds, the oldest are skipped (counted). `newest`: with
        more than `limit` ready, skip the oldest so that analysis catches up with now."""
        out: list[Window] = []
        total = self.buffer.total
        hop = self._hop * (1 if self.focused else self.stride)
        if self._last_window_end:  # the pace may have changed since the last window
            due = self._last_window_end + hop
            self._next_end = min(self._next_end, due) if self.focused else max(self._next_end, due)
        if self._look_end and self._look_end <= total:  # a second look's audio is all in
            if total < self._next_end and self._suspect:  # and the grid's window is not
                out.append(self._make_window(self._look_end, regular=False))
            self._look_end = 0
        if self._next_end - self._win < self.buffer.oldest:
            behind = self.buffer.oldest - (self._next_end - self._win)
            skip = math.ceil(behind / hop)
            self._next_end += skip * hop
            self.windows_skipped += skip
        if newest and limit is not None and self._next_end <= total:
            skip = (total - self._next_end) // hop + 1 - limit
            if skip > 0:
                self._next_end += skip * hop
                self.windows_skipped += skip
        while self._next_end <= total and (limit is None or len(out) < limit):
            out.append(self._make_window(self._next_end))
            self._next_end += hop
        return out

    def finish(self) -> list[Window]:
        """The stream ended: remaining windows plus one that ends exactly at the last sample
        (zero-padded in front if the whole stream is shorter than a window)."""
        out = self.ready_windows()
        total = self.buffer.total
        if total > self._last_window_end:
            out.append(self._make_window(total, final=True))
        self.finished = True
        return out

    # ---------------------------------------------------------------- speculation
    def fork(self) -> Detector:
        """A copy to run decisions ahead on (see Analyzer): it shares the audio buffer,
        which it only reads, and starts with no alert history, turns or trace."""
        memo: dict[int, object] = {id(self.buffer): self.buffer, id(self.alerts): []}
        memo[id(self.turns)] = []
        if self.trace is not None:
            memo[id(self.trace)] = None
        return copy.deepcopy(self, memo)

    def expected(self, count: int, dim: int) -> np.ndarray:
        """`count` embeddings of the voice the detector expects to hear: the enrolled
        student's (any fixed voice before enrollment)."""
        voice = self.enrolled if self.enrolled is not None else np.full(dim, dim**-0.5)
        return np.tile(np.asarray(voice, np.float32), (count, 1))

    # ---------------------------------------------------------------- verdicts
    def _segments(self, win: Window, mask: np.ndarray) -> list[tuple[float, float]]:
        fs = win.activity.frame_seconds if win.activity else 0.0
        return [(win.start + a * fs, win.start + b * fs) for a, b in _runs(mask)]

    def _speaker_audio(
        self, win: Window, k: int, newest: float | None = None, since: float | None = None
    ) -> np.ndarray:
        """The speaker's exclusive speech if long enough, else all of its speech: only the
        last `newest` seconds of it, or only from time `since`, if given. Notes in
        `win.since` where the piece starts."""
        assert win.activity is not None
        frames = win.activity.frames
        fs = win.activity.frame_seconds
        exclusive = frames[:, k] & (frames.sum(axis=1) == 1)
        mask = exclusive if exclusive.sum() * fs >= self.config.embed_min else frames[:, k]
        if since is not None:
            mask = mask.copy()
            mask[: max(0, int((since - win.start) / fs))] = False
        spf = win.samples.size / frames.shape[0]
        runs = [(int(a * spf), int(b * spf)) for a, b in _runs(mask)]
        if newest is not None:
            left, kept = int(newest * SAMPLE_RATE), []
            for a, b in reversed(runs):
                if left <= 0:
                    break
                kept.append((max(a, b - left), b))
                left -= b - a
            runs = kept[::-1]
        win.since[k] = win.start + (runs[0][0] / SAMPLE_RATE if runs else 0.0)
        parts = [win.samples[a:b] for a, b in runs]
        return np.concatenate(parts) if parts else np.zeros(0, np.float32)

    def _embeddable(self, win: Window, k: int) -> bool:
        assert win.activity is not None
        return bool(win.activity.seconds()[k] >= self.config.embed_min)

    def _link(self, win: Window, speakers: list[int]) -> dict[int, int]:
        """Label each local speaker by its shared activity with labelled earlier speech."""
        assert win.activity is not None
        cutoff = self._processed_end
        scores: list[tuple[float, int, int]] = []
        for k in speakers:
            segs = [(s, min(e, cutoff)) for s, e in self._segments(win, win.activity.frames[:, k])]
            segs = [(s, e) for s, e in segs if e > s]
            if not segs:
                continue
            by_label: dict[int, list[tuple[float, float]]] = {}
            for label, s, e in self._history:
                if e > win.start:
                    by_label.setdefault(label, []).append((s, e))
            for label, hist in by_label.items():
                shared = _overlap(segs, hist)
                if shared >= self.config.link_min:
                    scores.append((shared, k, label))
        links: dict[int, int] = {}
        for _shared, k, label in sorted(scores, reverse=True):
            if k not in links and label not in links.values():
                links[k] = label
        return links

    def _centroid(self, label: int) -> np.ndarray | None:
        if label == STUDENT:
            return self.enrolled
        return self._foreign[label - 1] if 0 < label <= len(self._foreign) else None

    def assess(self, win: Window, activity: Activity | None) -> list[np.ndarray]:
        """Segmentation result in; audio segments to embed out (often none)."""
        c = self.config
        if win.look:
            self._before_look = {name: copy.copy(getattr(self, name)) for name in _DECISION_STATE}
        win.activity = activity
        if activity is None or win.silent:
            win.mode = "none"
            self._overlaps = []
            self._likely = 0.0
            return []
        seconds = activity.seconds()
        win.speakers = [int(k) for k in np.argsort(-seconds) if seconds[k] >= c.min_speech]
        win.links = self._link(win, win.speakers)
        both = self._overlapped(win)
        if not win.speakers:
            win.mode = "none"
        elif both is not None:
            win.both = both
            win.mode = "overlap"
        elif len(win.speakers) >= 2:
            win.mode = "pair"
            # Embed every voice long enough: a label inherited by linking may be wrong
            # (two similar voices merged earlier), so it is not trusted as a reference.
            win.requests = [k for k in win.speakers if seconds[k] >= c.pair_min]
        else:
            k = win.speakers[0]
            label = win.links.get(k)
            share = min(1.0, (win.end - self._processed_end) / max(win.end - win.start, 1e-9))
            new_speech = float(activity.frames[:, k].sum() * activity.frame_seconds * share)
            if self.enrolled is None:
                win.mode = "enroll" if seconds[k] >= c.enroll_min else "none"
            elif label is None:
                win.mode = "identify"
            else:
                self._since_check += new_speech
                due = c.check_every * self.stride
                win.mode = "check" if self._since_check >= due else "known"
            if win.mode in ("enroll", "check", "identify") and self._embeddable(win, k):
                win.requests = [k]
            elif win.mode == "identify" and seconds[k] >= c.pair_min:
                win.requests = [k]  # short: alerts only if far off, else looks again
            elif win.mode in ("enroll", "identify"):
                win.mode = "none"  # wait: the next window will hold more of this voice
            elif win.mode == "check":
                win.mode = "known"
        if win.mode == "check" and self._suspect:
            # The second look: the suspected speech and all the voice said after it.
            pieces = []
            for k in win.requests:
                audio = self._speaker_audio(win, k, since=self._suspect_from)
                if audio.size < c.embed_min * SAMPLE_RATE:
                    audio = self._speaker_audio(win, k)
                pieces.append(audio)
            return pieces
        newest = c.check_seconds if win.mode == "check" else None
        return [self._speaker_audio(win, k, newest) for k in win.requests]

    def _overlapped(self, win: Window) -> np.ndarray | None:
        """The frames of overlapped speech, if there is a second voice by overlap alone:
        `overlap_sure` of it in this window, or `overlap_min` that this window and the
        previous one agree on. Overlap is two local speakers at once, or, with
        `soft_overlap` below 1, frames where the model finds it that likely (a quiet
        helper under the student's voice is often never a speaker of its own). Failing
        those, enough expected overlap in this window (`likely_overlap`): then the frames
        where it is likeliest."""
        act = win.activity
        c = self.config
        assert act is not None
        hard = act.frames.sum(axis=1) > 1
        if len(win.speakers) < 2:
            hard = np.zeros_like(hard)
        mask = hard
        likely = 0.0
        if act.overlap is not None:
            likely = float(act.overlap.sum() * act.frame_seconds)
            if c.soft_overlap < 1.0:
                mask = hard | (act.overlap > c.soft_overlap)
        self._likely = likely
        segs = self._segments(win, mask)
        agreed = _overlap(segs, self._overlaps)
        self._overlaps = segs
        if hard.sum() * act.frame_seconds >= c.overlap_sure:
            return hard
        if agreed >= c.overlap_min:
            return mask
        if act.overlap is not None and likely >= c.likely_overlap:
            return act.overlap >= min(c.soft_overlap, float(act.overlap.max()) / 2)
        return None

    def _label_for(self, emb: np.ndarray) -> tuple[int, float]:
        """(label, similarity to the enrolled student): the student if it matches the
        enrollment, else the closest known foreign voice, else a new foreign label."""
        c = self.config
        to_student = cosine(emb, self.enrolled) if self.enrolled is not None else -1.0
        if to_student >= c.same_speaker:
            return STUDENT, to_student
        best, best_sim = -1, -1.0
        for i, centroid in enumerate(self._foreign):
            sim = cosine(emb, centroid)
            if sim > best_sim:
                best, best_sim = i + 1, sim
        if best > 0 and best_sim >= c.same_speaker:
            return best, to_student
        self._foreign.append(emb)
        return len(self._foreign), to_student

    def _record(self, win: Window, k: int, label: int, whole: bool) -> None:
        assert win.activity is not None
        lo = win.start if whole else self._processed_end
        for s, e in self._segments(win, win.activity.frames[:, k]):
            s, e = max(s, lo, 0.0), e
            if e > s:
                self._history.append((label, s, e))
                if self.config.keep_turns:
                    self.turns.append((label, s, e))

    def _doubt(
        self, similarity: float, since: float, short: bool = False, early: bool = False
    ) -> bool:
        """True (and check again at the next window) if a mismatch is only marginal, or
        rests on less than `embed_min` of speech without scoring under `short_sure`, and
        is not already suspected: such a first mismatch never alerts by itself. `since`:
        where the suspected speech began. An `early` second look (`second_look`) that
        still has less than `embed_min` of the voice decides nothing: the next window
        of the grid looks again, as it would have without it (on the eval set, letting
        it alert added 2 false alerts in 7.1 h of single speakers)."""
        c = self.config
        if similarity < (c.short_sure if short else c.same_speaker - c.doubt_band):
            return False
        if self._suspect:
            return early and short
        self._suspect = True
        self._suspect_from = since
        self._since_check = c.check_every * self.stride
        return True

    def _confidence(self, similarity: float) -> float:
        """0.5 at the same-speaker threshold, 1.0 a quarter of cosine below it."""
        return float(np.clip(0.5 + 2.0 * (self.config.same_speaker - similarity), 0.5, 1.0))

    def _foreign_voice(
        self, win: Window, k: int, emb: np.ndarray, whole: bool
    ) -> tuple[list[Alert], int]:
        """Label a voice by its embedding; a voice that is not the enrolled student's
        raises (or extends) `unknown_voice`."""
        assert win.activity is not None
        known = len(self._foreign)
        label, sim = self._label_for(emb)
        alerts: list[Alert] = []
        short = not self._embeddable(win, k)
        if label != STUDENT and self._doubt(sim, win.since.get(k, win.start), short, win.look):
            del self._foreign[known:]  # not a new voice after all (yet)
            label = STUDENT
        elif label == STUDENT:
            self._suspect = False
            if self._enroll_count < self.config.enroll_refine:  # refine with verified speech
                assert self.enrolled is not None
                total = self.enrolled * self._enroll_count + emb
                self.enrolled = total / np.linalg.norm(total)
                self._enroll_count += 1
        elif self.enrolled is not None:
            segs = self._segments(win, win.activity.frames[:, k])
            start = segs[0][0] if segs else win.start
            end = segs[-1][1] if segs else win.end
            alerts = self._raise(
                AlertType.UNKNOWN_VOICE, win, start, end, self._confidence(sim), sim
            )
        self._record(win, k, label, whole=whole)
        return alerts, label

    def conclude(self, win: Window, embeddings: np.ndarray) -> list[Alert]:
        """Embeddings for `win.requests` in; new or extended alerts out."""
        c = self.config
        suspected = self._suspect
        alerts: list[Alert] = []
        embs = {k: embeddings[i] for i, k in enumerate(win.requests)}
        act = win.activity
        if act is None or win.mode == "none":
            pass
        elif win.mode == "overlap":
            both = win.both
            assert both is not None  # assess() sets it with the overlap mode
            segs = self._segments(win, both)
            overlap = float(both.sum() * act.frame_seconds)
            conf = float(np.clip(0.5 + 0.25 * (overlap - c.overlap_min), 0.5, 1.0))
            alerts += self._raise(AlertType.MULTIPLE_VOICES, win, segs[0][0], segs[-1][1], conf)
            for k, label in win.links.items():
                self._record(win, k, label, whole=False)
        elif win.mode == "pair":
            vectors: dict[int, np.ndarray] = dict(embs)
            for k, label in win.links.items():
                centroid = self._centroid(label)
                if k not in vectors and centroid is not None:
                    vectors[k] = centroid
            keys = list(vectors)
            if self.enrolled is not None:
                # Compare each voice with the enrollment (seconds of speech, averaged):
                # far steadier than two short pieces of this window against each other.
                sims = [(cosine(embs[k], self.enrolled), k, k) for k in embs]
            else:
                sims = [
                    (cosine(vectors[a], vectors[b]), a, b)
                    for i, a in enumerate(keys)
                    for b in keys[i + 1 :]
                ]
            sim, a, b = min(sims) if sims else (1.0, -1, -1)
            mismatch = sim < c.same_speaker
            short = any(k in embs and not self._embeddable(win, k) for k in (a, b))
            since = min((win.since.get(k, win.start) for k in (a, b)), default=win.start)
            doubtful = mismatch and self._doubt(sim, since, short, win.look)
            if mismatch and not doubtful:
                second = a if a == b else (b if act.seconds()[b] <= act.seconds()[a] else a)
                segs = self._segments(win, act.frames[:, second])
                start = segs[0][0] if segs else win.start
                alerts += self._raise(
                    AlertType.MULTIPLE_VOICES, win, start, win.end, self._confidence(sim), sim
                )
                for k in win.speakers:
                    if k in embs and self.enrolled is not None:
                        self._record(win, k, self._label_for(embs[k])[0], whole=True)
                    elif k in win.links:
                        self._record(win, k, win.links[k], whole=False)
            elif embs and self.enrolled is not None and not doubtful:
                # One person whose voice varies: is it the student?
                k = max(embs, key=lambda j: act.seconds()[j])
                found, label = self._foreign_voice(win, k, embs[k], whole=True)
                alerts += found
                for j in win.speakers:  # voices too short to embed keep their own links
                    if j != k and j in embs:
                        self._record(win, j, label, whole=True)
                    elif j != k and j in win.links:
                        self._record(win, j, win.links[j], whole=False)
            else:  # cannot tell yet (second voice too short): keep what is known
                for k, label in win.links.items():
                    self._record(win, k, label, whole=False)
        elif win.mode == "enroll":
            k = win.requests[0]
            self.enrolled = embs[k]
            self._enroll_count = 1
            self._record(win, k, STUDENT, whole=True)
        elif win.mode in ("check", "identify"):
            k = win.requests[0]
            self._since_check = 0.0
            found, _label = self._foreign_voice(win, k, embs[k], whole=win.mode == "identify")
            alerts += found
        elif win.mode == "known":
            k = win.speakers[0]
            label = win.links[k]
            self._record(win, k, label, whole=False)
            opened = self._open.get(AlertType.UNKNOWN_VOICE)
            segs = self._segments(win, act.frames[:, k])
            if label != STUDENT and opened is not None and segs:
                alerts += self._raise(
                    AlertType.UNKNOWN_VOICE, win, segs[0][0], segs[-1][1], opened.confidence
                )
        if self.trace is not None and act is not None:
            self.trace.append(
                {
                    "end": win.end,
                    "mode": win.mode,
                    "seconds": [round(float(v), 2) for v in act.seconds()],
                    "overlap": round(float((act.frames.sum(1) > 1).sum() * act.frame_seconds), 2),
                    "likely": round(self._likely, 2),
                    "links": dict(win.links),
                    "requests": list(win.requests),
                    "sims": {
                        f"{a}-{b}": round(cosine(embs[a], embs[b]), 3)
                        for a in embs
                        for b in embs
                        if a < b
                    }
                    | {
                        f"{a}-enr": round(cosine(embs[a], self.enrolled), 3)
                        for a in embs
                        if self.enrolled is not None
                    },
                    "alerts": [str(a.type) for a in alerts],
                }
            )
        if self.live and self._suspect and not suspected:
            look = round(win.end * SAMPLE_RATE) + round(c.second_look * SAMPLE_RATE)
            self._look_end = look if look < self._next_end else 0
        self._processed_end = max(self._processed_end, win.end)
        self._last_mode = win.mode
        if win.look and not alerts:
            for name, value in self._before_look.items():
                setattr(self, name, value)
        self._before_look = {}
        horizon = win.end - 2 * c.window
        self._history = [h for h in self._history if h[2] > horizon]
        return alerts

    def poll_silence(self) -> list[Alert]:
        """A `mic_silent` alert (or its extension) if the microphone has been silent too long."""
        c = self.config
        now = self.now
        if now - self._last_energy < c.silent_after:
            return []
        opened = self._open.get(AlertType.MIC_SILENT)
        if opened is not None and opened.end >= now:
            return []
        return self._raise(AlertType.MIC_SILENT, None, self._last_energy, now, 1.0)

    # ---------------------------------------------------------------- alerts
    def _raise(
        self,
        kind: AlertType,
        win: Window | None,
        start: float,
        end: float,
        confidence: float,
        similarity: float | None = None,
    ) -> list[Alert]:
        c = self.config
        detected = win.end if win is not None else self.now
        opened = self._open.get(kind)
        if opened is not None and start - opened.end <= c.cooldown:
            if end <= opened.end and confidence <= opened.confidence:
                return []
            opened.end = max(opened.end, end)
            opened.confidence = max(opened.confidence, confidence)
            opened.revision += 1
            opened.updated_at = detected
            self._extend_evidence(opened, detected)
            return [opened]
        pad = c.evidence_pad
        ev_start = max(
            0.0, (win.start if win is not None else start) - pad, detected - c.evidence_max
        )
        if kind is AlertType.MIC_SILENT:
            ev_start = max(ev_start, detected - 5.0)
        evidence = self.buffer.read(int(ev_start * SAMPLE_RATE), int(detected * SAMPLE_RATE))
        alert = Alert(
            type=kind,
            stream=self.stream,
            start=max(0.0, start),
            end=end,
            confidence=confidence,
            evidence=evidence,
            evidence_start=ev_start,
            detected_at=detected,
            updated_at=detected,
        )
        if similarity is not None:
            alert.details["similarity"] = round(float(similarity), 3)
        self._open[kind] = alert
        self.alerts.append(alert)
        return [alert]

    def _extend_evidence(self, alert: Alert, upto: float) -> None:
        have_end = alert.evidence_start + alert.evidence.size / SAMPLE_RATE
        room = self.config.evidence_max - alert.evidence.size / SAMPLE_RATE
        if upto <= have_end or room <= 0 or alert.type is AlertType.MIC_SILENT:
            return
        upto = min(upto, have_end + room)
        extra = self.buffer.read(int(have_end * SAMPLE_RATE), int(upto * SAMPLE_RATE))
        alert.evidence = np.concatenate([alert.evidence, extra])

    def speaker_turns(self, merge_gap: float = 0.5) -> list[tuple[float, float, str]]:
        """Merged (start, end, speaker) turns; SPEAKER_00 is the enrolled student."""
        out: list[list] = []
        for label, s, e in sorted(self.turns, key=lambda t: (t[0], t[1])):
            if out and out[-1][2] == label and s - out[-1][1] <= merge_gap:
                out[-1][1] = max(out[-1][1], e)
            else:
                out.append([s, e, label])
        out.sort()
        return [(round(s, 2), round(e, 2), f"SPEAKER_{label:02d}") for s, e, label in out]
