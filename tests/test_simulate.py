"""`rtcproctor simulate student|proctor` against a real server, with real aiortc peers.

Run in a network namespace with only `lo` (see TESTING.md); the simulators get
RTCPROCTOR_ICE_LOOPBACK=1 so aioice offers 127.0.0.1. Everything waits for behaviour
with generous timeouts; nothing here asserts a duration.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
import wave
from array import array
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import socketio

from tests.support import Server

WAIT = 60.0  # generous: behaviour, not speed, is under test

Event = dict[str, Any]


def normal(code: str) -> str:
    return code.replace("-", "").replace(" ", "").upper()


class Sim:
    """A `rtcproctor simulate` process; its stdout JSON lines are collected by a thread."""

    def __init__(self, tmp: Path, role: str, *args: str) -> None:
        self.stderr_path = tmp / f"{role}-{time.monotonic_ns()}.log"
        self._stderr = open(self.stderr_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "rtcproctor", "simulate", role, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            env={**os.environ, "RTCPROCTOR_ICE_LOOPBACK": "1"},
        )
        self.events: list[Event] = []
        self._eof = False
        self._changed = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            event = json.loads(line)
            with self._changed:
                self.events.append(event)
                self._changed.notify_all()
        with self._changed:
            self._eof = True
            self._changed.notify_all()

    def wait_for(
        self, match: Callable[[Event], bool], after: int = 0, timeout: float = WAIT
    ) -> int:
        """Index of the first event from `after` on that matches."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for index in range(after, len(self.events)):
                    if match(self.events[index]):
                        return index
                left = deadline - time.monotonic()
                if left <= 0 or self._eof:
                    raise AssertionError(
                        f"no matching event; got {self.events[after:]}\n{self.stderr()}"
                    )
                self._changed.wait(min(left, 0.5))

    async def await_for(self, match: Callable[[Event], bool], after: int = 0) -> int:
        return await asyncio.to_thread(self.wait_for, match, after)

    def send(self, command: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")[-6000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._stderr.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[Server]:
    """One server for the module: each test makes its own exam, and its simulators are
    stopped before the next test starts."""
    srv = Server(data_dir=tmp_path_factory.mktemp("simulate") / "data").start()
    yield srv
    srv.stop()


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[Server]:
    """A server that the test may stop and start again."""
    srv = Server(data_dir=tmp_path / "data").start()
    yield srv
    srv.stop()


@pytest.fixture
def sims(tmp_path: Path) -> Iterator[Callable[..., Sim]]:
    started: list[Sim] = []

    def start(role: str, *args: str) -> Sim:
        sim = Sim(tmp_path, role, *args)
        started.append(sim)
        return sim

    yield start
    for sim in started:  # all at once: each takes a moment to close its peers
        if sim.proc.poll() is None:
            sim.proc.send_signal(signal.SIGTERM)
    for sim in started:
        sim.stop()


def student(sims: Callable[..., Sim], server: Server, code: str, *extra: str) -> Sim:
    return sims("student", "--server", server.url, "--code", code, *extra)


def proctor(sims: Callable[..., Sim], server: Server, *codes: str) -> Sim:
    return sims("proctor", "--server", server.url, "--code", ",".join(codes))


def is_(type_: str, code: str, **fields: Any) -> Callable[[Event], bool]:
    def match(event: Event) -> bool:
        return (
            event["type"] == type_
            and event["code"] == normal(code)
            and all(event.get(k) == v for k, v in fields.items())
        )

    return match


def media(code: str, kind: str) -> Callable[[Event], bool]:
    return is_("media", code, kind=kind)


def wait_media(proc: Sim, code: str, after: int = 0) -> tuple[Event, Event]:
    audio = proc.events[proc.wait_for(media(code, "audio"), after)]
    video = proc.events[proc.wait_for(media(code, "video"), after)]
    return audio, video


class Direct:
    """A plain python-socketio client standing in for a page."""

    def __init__(self) -> None:
        self.sio = socketio.AsyncClient(reconnection=False)
        self.received: list[tuple[str, Any]] = []
        self._changed = asyncio.Event()
        self.sio.on("*", self._any)

    async def _any(self, event: str, data: Any = None) -> None:
        self.received.append((event, data))
        self._changed.set()

    async def connect(self, url: str) -> Direct:
        await self.sio.connect(url, transports=["websocket"])
        return self

    async def call(self, event: str, data: dict[str, Any]) -> dict[str, Any]:
        ack = await self.sio.call(event, data, timeout=5)
        assert ack["ok"], ack
        return ack

    async def wait_for(self, name: str, match: Callable[[Any], bool]) -> Any:
        async def find() -> Any:
            while True:
                for event, data in self.received:
                    if event == name and match(data):
                        return data
                self._changed.clear()
                await self._changed.wait()

        return await asyncio.wait_for(find(), WAIT)


def test_student_goes_live_and_proctor_gets_audio_and_video(server: Server, sims) -> None:
    code = server.codes("Ann")["students"][0]["code"]
    # The proctor types the code loosely; events carry it normalised, as the server sends it.
    watcher = proctor(sims, server, code.lower().replace("-", " "))
    first = watcher.wait_for(is_("offline", code))
    assert watcher.events[first]["name"] == "Student 1"

    student(sims, server, code, "--name", "Ann")
    live = watcher.wait_for(is_("live", code), first)
    audio, video = wait_media(watcher, code, live)
    assert audio["peer"] == video["peer"]
    assert all(e["code"] == normal(code) for e in watcher.events)
    assert all(isinstance(e["ts"], float) for e in watcher.events)


def _tone_wav(path: Path) -> Path:
    rate = 48_000
    samples = array("h", (int(8000 * math.sin(2 * math.pi * 300 * i / rate)) for i in range(rate)))
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(samples.tobytes())
    return path


def _small_webm(path: Path) -> Path:
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libvpx", rate=8)
        stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
        for index in range(16):
            frame = av.VideoFrame(320, 240, "yuv420p")
            for plane, value in zip(frame.planes, (index * 12, 90, 160), strict=True):
                plane.update(bytes([value]) * plane.buffer_size)
            frame.pts = index
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def test_student_streams_audio_and_video_files(server: Server, sims, tmp_path: Path) -> None:
    code = server.codes("Ann")["students"][0]["code"]
    wav = _tone_wav(tmp_path / "voice.wav")
    webm = _small_webm(tmp_path / "camera.webm")
    watcher = proctor(sims, server, code)
    streaming = student(sims, server, code, "--audio", str(wav), "--video", str(webm))
    live = watcher.wait_for(is_("live", code))
    wait_media(watcher, code, live)
    assert str(wav) in streaming.stderr() and str(webm) in streaming.stderr()


async def test_chat_and_attention_both_ways(server: Server, sims) -> None:
    code = server.codes("Ann")["students"][0]["code"]
    watcher = proctor(sims, server, code)
    await watcher.await_for(is_("offline", code))

    # A page acting as the student, talking to the simulated proctor.
    page = await Direct().connect(server.url)
    try:
        await page.call("student:join", {"code": code})
        await watcher.await_for(is_("connected", code))

        await page.call("chat:send", {"text": "may I ask something?"})
        index = await watcher.await_for(
            lambda e: e["type"] == "chat" and e["message"]["text"] == "may I ask something?"
        )
        assert watcher.events[index]["message"]["from"] == "student"
        assert watcher.events[index]["code"] == normal(code)

        watcher.send({"chat": {"code": code, "text": "go ahead"}})
        ack = watcher.events[
            await watcher.await_for(lambda e: e["type"] == "ack" and e["command"] == "chat")
        ]
        assert ack["ok"] is True and ack["message"]["text"] == "go ahead"
        got = await page.wait_for("chat:message", lambda d: d["message"]["text"] == "go ahead")
        assert got["message"]["from"] == "proctor"

        await page.call("attention:raise", {})
        index = await watcher.await_for(lambda e: e["type"] == "attention")
        raised = watcher.events[index]["attention"]
        assert raised["from"] == "student" and raised["resolved"] is False
        watcher.send({"resolve": {"code": code, "id": raised["id"]}})
        await watcher.await_for(lambda e: e["type"] == "resolved" and e["id"] == raised["id"])

        watcher.send({"attention": {"code": code}})
        ack = watcher.events[
            await watcher.await_for(lambda e: e["type"] == "ack" and e["command"] == "attention")
        ]
        assert ack["ok"] is True and ack["attention"]["from"] == "proctor"
        got = await page.wait_for("attention", lambda d: d["attention"]["from"] == "proctor")
        assert got["code"] == normal(code)
    finally:
        await page.sio.disconnect()

    # A page acting as a second proctor of the same student.
    other = await Direct().connect(server.url)
    try:
        await other.call("proctor:watch", {"codes": [code]})
        await other.call("chat:send", {"code": code, "text": "from the other proctor"})
        index = await watcher.await_for(
            lambda e: e["type"] == "chat" and e["message"]["text"] == "from the other proctor"
        )
        assert watcher.events[index]["message"]["from"] == "proctor"

        await other.call("attention:raise", {"code": code})
        await watcher.await_for(
            lambda e: e["type"] == "attention" and e["attention"]["from"] == "proctor"
        )

        watcher.send({"chat": {"code": code, "text": "seen it"}})
        got = await other.wait_for("chat:message", lambda d: d["message"]["text"] == "seen it")
        assert got["code"] == normal(code)
    finally:
        await other.sio.disconnect()


def test_two_proctors_on_one_student_both_get_media(server: Server, sims) -> None:
    code = server.codes("Ann")["students"][0]["code"]
    first, second = proctor(sims, server, code), proctor(sims, server, code)
    first.wait_for(is_("offline", code))
    second.wait_for(is_("offline", code))
    student(sims, server, code)
    audio_1, _ = wait_media(first, code)
    audio_2, _ = wait_media(second, code)
    assert audio_1["peer"] != audio_2["peer"]  # one peer per watcher


def test_proctor_never_sees_events_of_another_code(server: Server, sims) -> None:
    ann, bob = (s["code"] for s in server.codes("Ann", "Bob")["students"])
    of_ann, of_bob = proctor(sims, server, ann), proctor(sims, server, bob)
    of_ann.wait_for(is_("offline", ann))
    of_bob.wait_for(is_("offline", bob))
    student(sims, server, ann)
    student(sims, server, bob)
    wait_media(of_ann, ann)
    wait_media(of_bob, bob)
    of_bob.send({"chat": {"code": bob, "text": "only for Bob"}})
    of_bob.send({"attention": {"code": bob}})
    of_bob.wait_for(lambda e: e["type"] == "chat" and e["message"]["text"] == "only for Bob")
    of_bob.wait_for(lambda e: e["type"] == "ack" and e["command"] == "attention")
    # Bob's proctor cannot act on Ann either.
    of_bob.send({"chat": {"code": ann, "text": "not mine"}})
    refused = of_bob.events[
        of_bob.wait_for(lambda e: e["type"] == "ack" and e["code"] == normal(ann))
    ]
    assert refused["ok"] is False and refused["error"]["code"] == "not_watching"
    # Ann's proctor, still receiving, has only Ann's events.
    after = len(of_ann.events)
    of_ann.send({"chat": {"code": ann, "text": "marker"}})
    of_ann.wait_for(lambda e: e["type"] == "chat" and e["message"]["text"] == "marker", after)
    assert {e["code"] for e in of_ann.events} == {normal(ann)}
    assert not any(
        e["type"] == "chat" and e["message"]["text"] == "only for Bob" for e in of_ann.events
    )


def test_proctor_reports_unknown_codes(server: Server, sims) -> None:
    code = server.codes("Ann")["students"][0]["code"]
    watcher = proctor(sims, server, code, "NOSUCHCODE234")
    error = watcher.events[watcher.wait_for(lambda e: e["type"] == "error")]
    assert error["code"] == "NOSUCHCODE234" and error["error"]["code"] == "unknown_code"
    watcher.wait_for(is_("offline", code))


def test_killed_and_restarted_student_comes_back_by_itself(server: Server, sims) -> None:
    code = server.codes("Ann")["students"][0]["code"]
    watcher = proctor(sims, server, code)
    first = student(sims, server, code)
    live = watcher.wait_for(is_("live", code))
    wait_media(watcher, code, live)

    first.proc.kill()
    first.proc.wait()
    gone = watcher.wait_for(is_("offline", code), live)

    student(sims, server, code)
    back = watcher.wait_for(is_("live", code), gone)
    wait_media(watcher, code, back)


def test_second_device_replaces_the_first(server: Server, sims) -> None:
    code = server.codes("Ann")["students"][0]["code"]
    watcher = proctor(sims, server, code)
    phone = student(sims, server, code, "--name", "phone")
    live = watcher.wait_for(is_("live", code))
    before, _ = wait_media(watcher, code, live)

    mark = len(watcher.events)
    tablet = student(sims, server, code, "--name", "tablet")
    assert phone.proc.wait(WAIT) != 0
    assert "replaced" in phone.stderr()
    audio, video = wait_media(watcher, code, mark)
    assert audio["peer"] == video["peer"] != before["peer"]
    assert tablet.proc.poll() is None


def test_both_simulators_reconnect_after_a_server_restart(own_server: Server, sims) -> None:
    server = own_server
    code = server.codes("Ann")["students"][0]["code"]
    watcher = proctor(sims, server, code)
    student(sims, server, code)
    wait_media(watcher, code, watcher.wait_for(is_("live", code)))

    server.stop()
    mark = len(watcher.events)
    server.start()
    # The proctor watches again and the student joins and goes live again, by themselves.
    back = watcher.wait_for(is_("live", code), mark)
    wait_media(watcher, code, back)


def test_student_with_an_unknown_code_exits_with_the_reason(server: Server, sims) -> None:
    wrong = student(sims, server, "NOSUCHCODE234")
    assert wrong.proc.wait(WAIT) != 0
    assert "unknown_code" in wrong.stderr()
