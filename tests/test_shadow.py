"""The shadow proctor over real WebRTC: speech in, alerts out, only for the key holder."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import sys
import time
import urllib.error
import urllib.request

from tests.sioclient import Peer
from tests.support import rtcproctor

ENV = {**os.environ, "RTCPROCTOR_ICE_LOOPBACK": "1"}


async def spawn(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "rtcproctor",
        "simulate",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        env=ENV,
    )


async def lines_until(proc: asyncio.subprocess.Process, found, within: float) -> list[dict]:
    """Proctor events until `found(event)` is true or time runs out."""
    seen: list[dict] = []
    try:
        async with asyncio.timeout(within):
            while line := await proc.stdout.readline():
                seen.append(json.loads(line))
                if found(seen[-1]):
                    break
    except TimeoutError:
        pass
    return seen


async def stop(*procs: asyncio.subprocess.Process) -> None:
    for proc in procs:
        proc.terminate()
    for proc in procs:
        await proc.wait()


def voice_alert(event: dict) -> bool:
    return event["type"] == "alert" and event["alert"]["type"] in (
        "multiple_voices",
        "unknown_voice",
    )


def get(url: str, key: str | None = None) -> tuple[int, dict, bytes]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers)) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


async def test_two_voices_raise_an_alert_only_the_key_holder_sees(voice_server, voices):
    exam = voice_server.codes("Ann")
    code, key = exam["students"][0]["code"], exam["proctor_key"]
    without_key = await Peer(voice_server.url).connect()
    await without_key.call("proctor:watch", {"codes": [code]})
    proctor = await spawn("proctor", "--server", voice_server.url, "--code", code, "--key", key)
    student = await spawn(
        "student", "--server", voice_server.url, "--code", code, "--audio", str(voices["two"])
    )
    try:
        events = await lines_until(proctor, lambda e: voice_alert(e), within=120)
        alerts = [e for e in events if voice_alert(e)]
        assert alerts, [e["type"] for e in events]
        alert = alerts[0]["alert"]
        assert alert["type"] == "multiple_voices"
        assert 0 < alert["confidence"] <= 1 and alert["start"] <= alert["end"]
        assert voice_server.health()["shadow_peers"] == 1
    finally:
        await stop(student, proctor)
    assert without_key.events["alert"] == []

    # Evidence needs the key of this exam.
    evidence = voice_server.url + alert["evidence"]
    assert get(evidence)[0] == 401
    assert get(evidence, "not-the-key")[0] == 401
    other = voice_server.codes("Other")
    assert get(evidence, other["proctor_key"])[0] == 404
    status, headers, body = get(evidence, key)
    assert status == 200 and headers["Content-Type"] == "audio/wav"
    assert body[:4] == b"RIFF" and len(body) > 16000 * 2

    # A proctor with the key sees it in the history and can review it.
    reviewer = await Peer(voice_server.url).connect()
    ack = await reviewer.call("proctor:watch", {"codes": [code], "key": key})
    history = ack["history"][code.replace("-", "")]["alerts"]
    assert alert["id"] in [a["id"] for a in history]
    ack = await reviewer.call(
        "alert:review", {"code": code, "id": alert["id"], "status": "reviewed"}
    )
    assert ack["ok"] and ack["alert"]["status"] == "reviewed"
    denied = await without_key.call(
        "alert:review", {"code": code, "id": alert["id"], "status": "dismissed"}
    )
    assert denied["error"]["code"] == "unauthorized"
    await reviewer.close()
    await without_key.close()

    # The report lists it, from the CLI and over HTTP with the key.
    out = rtcproctor("report", "--key", key, "--data-dir", str(voice_server.data_dir))
    rows = list(csv.DictReader(io.StringIO(out.stdout)))
    flagged = [r for r in rows if r["kind"] == "alert_multiple_voices"]
    assert flagged and flagged[0]["status"] == "reviewed"
    assert flagged[0]["link"].endswith(alert["evidence"])
    assert {"live", "chat_student"} & {r["kind"] for r in rows} == {"live"}
    status, _, body = get(voice_server.url + "/api/report?format=json", key)
    report = json.loads(body)
    assert status == 200
    assert alert["id"] in [a["id"] for a in report["students"][0]["alerts"]]
    assert get(voice_server.url + "/api/report")[0] == 401

    # The hidden peer goes away with the student.
    await asyncio.to_thread(voice_server.wait_no_shadow_peers, 10)


async def test_one_voice_raises_no_voice_alert(voice_server, voices):
    exam = voice_server.codes("Ann")
    code, key = exam["students"][0]["code"], exam["proctor_key"]
    proctor = await spawn("proctor", "--server", voice_server.url, "--code", code, "--key", key)
    student = await spawn(
        "student",
        "--server",
        voice_server.url,
        "--code",
        code,
        "--audio",
        str(voices["one"]),
        # The 21 s text once and its start again: enrollment, then about six identity checks
        # (one per 4 s of speech), each window of 6 s analysed; a false alert shows within one.
        "--duration",
        "30",
    )
    try:
        events = await lines_until(proctor, lambda e: e["type"] == "media", within=60)
        await asyncio.to_thread(voice_server.wait_shadow_peers, 1, 30)  # audio analysed
        await student.wait()
        # The peer is gone: the stream's last partial window is analysed at the next step.
        await asyncio.to_thread(voice_server.wait_no_shadow_peers, 10)
        events += await lines_until(proctor, lambda e: False, within=5)
    finally:
        proctor.terminate()
        await proctor.wait()
    assert [e for e in events if voice_alert(e)] == []


def worker_pids(server) -> set[int]:
    """The server's voice worker processes (spawned by multiprocessing), by command line."""
    pid = server.process.pid
    children: set[int] = set()
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            children |= {int(c) for c in f.read().split()}
    found = set()
    for child in children:
        try:
            with open(f"/proc/{child}/cmdline", "rb") as f:
                if b"spawn_main" in f.read():
                    found.add(child)
        except FileNotFoundError:
            continue
    return found


async def test_a_killed_voice_worker_is_replaced_and_alerts_come_again(voice_server, voices):
    """Inference runs in processes of its own: if the kernel kills one (out of memory),
    the server starts them again and renews the students' hidden peers; alerts resume."""
    exam = voice_server.codes("Ann")
    code, key = exam["students"][0]["code"], exam["proctor_key"]
    proctor = await spawn("proctor", "--server", voice_server.url, "--code", code, "--key", key)
    student = await spawn(
        "student", "--server", voice_server.url, "--code", code, "--audio", str(voices["two"])
    )
    try:
        await lines_until(proctor, lambda e: e["type"] == "media", within=60)
        before = worker_pids(voice_server)
        old = min(before)
        killed_at = time.time()
        os.kill(old, 9)
        for _ in range(200):
            health = voice_server.health()
            pids = worker_pids(voice_server)
            if health["voice"] == "ready" and len(pids) == len(before) and old not in pids:
                break
            await asyncio.sleep(0.5)
        assert len(pids) == len(before) and old not in pids

        # Only an alert on audio heard after the kill counts: the new worker raised it.
        def new(event: dict) -> bool:
            return voice_alert(event) and event["alert"]["start"] >= killed_at

        events = await lines_until(proctor, new, within=120)
        assert [e for e in events if new(e)], [e["type"] for e in events]
        assert voice_server.health()["shadow_peers"] == 1
    finally:
        await stop(student, proctor)
    await asyncio.to_thread(voice_server.wait_no_shadow_peers, 10)


async def test_a_worker_of_two_processes_shares_the_streams_out_and_hears_each(voices):
    """Streams go to the worker process with the fewest; each process raises its own
    students' alerts, which one step brings back as each is concluded; a closed
    stream's place is the next one's."""
    from rtcproctor.voice.audio import SAMPLE_RATE, load_audio
    from rtcproctor.voice.worker import AnalysisWorker

    worker = AnalysisWorker(processes=2)
    await worker.start()
    try:
        two, one = load_audio(voices["two"]), load_audio(voices["one"])
        streams = {"two-a": two, "two-b": two, "one": one}
        alerts, windows = [], 0
        chunk = SAMPLE_RATE // 2
        for start in range(0, min(s.size for s in streams.values()), chunk):
            for name, samples in streams.items():
                worker.submit(name, samples[start : start + chunk])
            parts = [part async for part in worker.steps()]
            assert all(parts)  # no empty hand-outs
            alerts += [alert for part in parts for alert in part]
            windows += worker.last.windows
        homes = dict(worker._home)
        assert set(homes.values()) == {0, 1}
        assert homes["two-a"] != homes["two-b"]
        voiced = {a.stream for a in alerts if a.type != "mic_silent"}
        assert voiced == {"two-a", "two-b"}, [(a.stream, a.type) for a in alerts]
        assert windows > 0 and worker.pacer.stride >= 1

        worker.close("two-a")
        await worker.step()
        worker.submit("late", one[:chunk])
        assert worker._home["late"] == homes["two-a"]
    finally:
        await worker.stop()
