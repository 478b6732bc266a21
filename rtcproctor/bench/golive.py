"""Go Live → the proctor's first video frame, over real WebRTC between two aiortc peers.

The clock starts when the simulated student sends `student:live {live:true}` (a proctor
already watches) and stops when the simulated proctor decodes the first video frame:
the server's `peer:request`, the student's complete offer, the answer, ICE, DTLS and
the first VP8 key frame are all inside. With several servers the proctor and the student
are on different ones, so the signaling crosses processes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from rtcproctor.sim.media import open_media
from rtcproctor.sim.proctor import STATES, SimProctor
from rtcproctor.sim.student import SimStudent

log = logging.getLogger(__name__)

RUN_TIMEOUT = 20.0


@dataclass
class Recorder:
    """An EventSink that keeps the proctor's events and wakes whoever waits for one."""

    events: list[dict[str, Any]] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def event(self, type: str, code: str | None, **fields: Any) -> None:
        self.events.append({"type": type, "code": code, "ts": time.time(), **fields})
        self.changed.set()

    async def first(self, match: Any) -> dict[str, Any]:
        while True:
            for event in self.events:
                if match(event):
                    return event
            self.changed.clear()
            await self.changed.wait()


async def _stop(stop: asyncio.Event, task: asyncio.Task[int]) -> None:
    stop.set()
    try:
        await asyncio.wait_for(task, 10)
    except (TimeoutError, asyncio.CancelledError):
        log.warning("a simulator did not stop in time")


async def one_run(proctor_url: str, student_url: str, code: str, label: str) -> float:
    """Seconds from Go Live to the first decoded video frame at the proctor."""
    recorder = Recorder()
    proctor = SimProctor(proctor_url, [code], recorder)
    proctor_stop = asyncio.Event()
    proctor_task = asyncio.ensure_future(proctor.run(proctor_stop))
    live_sent: list[float] = []
    student_stop = asyncio.Event()
    student_task: asyncio.Task[int] | None = None
    try:
        await asyncio.wait_for(recorder.first(lambda e: e["type"] in STATES), RUN_TIMEOUT)
        student = SimStudent(
            student_url,
            code,
            open_media(None, None, label),
            label=label,
            on_live_sent=live_sent.append,
        )
        student_task = asyncio.ensure_future(student.run(student_stop))
        frame = await asyncio.wait_for(
            recorder.first(lambda e: e["type"] == "media" and e.get("kind") == "video"),
            RUN_TIMEOUT,
        )
        return float(frame["ts"]) - live_sent[-1]
    finally:
        if student_task is not None:
            await _stop(student_stop, student_task)
        await _stop(proctor_stop, proctor_task)


async def measure(urls: list[str], codes: list[str]) -> tuple[list[float], int]:
    """One run per code; the times of the runs that succeeded, and how many failed."""
    times: list[float] = []
    failed = 0
    n = len(urls)
    for index, code in enumerate(codes, 1):
        proctor_url, student_url = urls[index % n], urls[(index + 1) % n]
        try:
            seconds = await one_run(proctor_url, student_url, code, f"bench run {index}")
        except (TimeoutError, IndexError) as exc:
            failed += 1
            log.warning("go-live run %d failed: %r", index, exc)
            continue
        times.append(seconds)
        log.info("go-live run %d: %.3f s", index, seconds)
    return times, failed
