"""Voice alerts end to end: a real Chromium student whose microphone plays speech,
the server's shadow proctor, and the monitor page (feed, evidence, review, report).

`voice_server` (conftest) waits until /healthz says the voice detector is ready."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import shutil
import subprocess
import time
import urllib.request
import wave
from pathlib import Path

import pytest

from rtcproctor.shadow.peer import OPUS_BITRATE, PTIME_MS
from tests.browser import Tab, launch
from tests.test_pages import clean, live_student, monitor, norm, shot, video_playing

pytestmark = [
    pytest.mark.browser,
    pytest.mark.asyncio(loop_scope="session"),
    pytest.mark.timeout(600),
    pytest.mark.skipif(
        not shutil.which("espeak-ng") or not shutil.which("sox"), reason="needs espeak-ng and sox"
    ),
]

VOICE_A = ["-v", "en+m3"]
VOICE_B = ["-v", "en+f4", "-p", "80"]
LINES_A = [
    "Good morning. I am working on the second question now, and I think the answer is forty two.",
    "The integral of this function from zero to one gives exactly that value, times the constant.",
    "Let me check my notes once more before I write the final result on the answer sheet.",
    "I will start with the definition and then apply the rule we practised in the last lecture.",
    "After that I only need to simplify the fraction and compare it with the first estimate.",
    "Then the third part asks for a short explanation, which I will write in two sentences.",
]
LINES_B = [
    "No, no, you should use the other formula. Look at page twelve of the book, in the table.",
    "The middle row shows the right numbers, then add the two results and divide them by three.",
    "Write it quickly, the teacher cannot hear us, and then go on with the last question.",
]


def speak(path: Path, voice: list[str], text: str) -> Path:
    subprocess.run(["espeak-ng", *voice, "-w", str(path), text], check=True)
    return path


def wav_seconds(path: Path) -> float:
    with wave.open(str(path)) as w:
        return w.getnframes() / w.getframerate()


def make_wav(tmp_path: Path, name: str, parts: list[tuple[list[str], str]]) -> Path:
    """Speech by espeak-ng, joined and resampled to 48 kHz mono 16-bit for Chromium's fake mic."""
    pieces = [
        speak(tmp_path / f"{name}-{i}.wav", voice, text) for i, (voice, text) in enumerate(parts)
    ]
    out = tmp_path / f"{name}.wav"
    subprocess.run(
        ["sox", *map(str, pieces), "-r", "48000", "-c", "1", "-b", "16", str(out)], check=True
    )
    return out


async def shadow_heard(server, seconds: float, within: float = 300.0) -> None:
    """Until the shadow proctor has received `seconds` of the student's audio."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if server.health()["shadow_audio_seconds"] >= seconds:
            return
        await asyncio.sleep(0.5)
    raise AssertionError(f"the shadow proctor did not hear {seconds:.0f} s: {server.health()}")


def report(server, key: str, fmt: str) -> str:
    request = urllib.request.Request(
        f"{server.url}/api/report?format={fmt}", headers={"Authorization": f"Bearer {key}"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.read().decode()


async def student_with_audio(server, code: str, audio: Path):
    """A Chromium of its own, so that its fake microphone plays `audio`."""
    from playwright.async_api import async_playwright

    playwright = await async_playwright().start()
    browser = await launch(playwright, audio=audio)
    tab = await live_student(browser, server, code)
    return playwright, browser, tab


async def alert_of_type(tab: Tab, kind: str, within: float = 180_000) -> dict:
    await tab.page.wait_for_function(
        "(kind) => [...window.rtcproctor.alerts.values()].some((a) => a.type === kind)",
        arg=kind,
        timeout=within,
    )
    return await tab.page.evaluate(
        "(kind) => [...window.rtcproctor.alerts.values()].find((a) => a.type === kind)", kind
    )


async def test_two_voices_raise_an_alert_with_evidence_review_and_report(
    voice_server, browser, tmp_path
):
    server = voice_server  # its models have loaded: the student goes live with voice detection on
    parts = [
        (VOICE_A, LINES_A[0]),
        (VOICE_B, LINES_B[0]),
        (VOICE_A, LINES_A[1]),
        (VOICE_B, LINES_B[1]),
        (VOICE_A, LINES_A[2]),
    ]
    audio = make_wav(tmp_path, "two-voices", parts)
    exam = server.codes("Ann")
    code, key = exam["students"][0]["code"], exam["proctor_key"]
    proctor = await monitor(browser, server, [("Ann Lee", code)], key=key)
    playwright, student_browser, student = await student_with_audio(server, code, audio)
    try:
        await video_playing(proctor, code)
        alert = await alert_of_type(proctor, "multiple_voices")
        assert alert["status"] == "open" and alert["evidence"]
        assert alert["code"] == norm(code)

        # The feed shows it once (upserts never duplicate), the tile counts it.
        item = proctor.page.locator("#alert-list > li[data-type='multiple_voices']").first
        await item.get_by_text("Several voices").wait_for()
        assert await item.get_by_role("button", name="Ann Lee").count() == 1
        ids = await proctor.page.evaluate("() => [...window.rtcproctor.alerts.keys()]")
        assert await proctor.page.locator("#alert-list > li").count() == len(ids)
        badge = proctor.page.locator(".tile .badge.voice")
        await badge.wait_for()
        assert "open voice alert" in await badge.inner_text()

        # Evidence: fetched with the key, played from a blob: URL.
        await item.get_by_role("button", name="Play evidence").click()
        await proctor.page.wait_for_function(
            """() => { const a = document.querySelector('#alert-list audio');
                       return a && a.src.startsWith('blob:') && a.duration > 0; }""",
            timeout=30_000,
        )
        await shot(proctor, "monitor-desktop-voice-alert")

        # Review, then reopen, then dismiss from the large view.
        alert_id = alert["id"]
        status = "(id) => window.rtcproctor.alerts.get(id).status"
        await item.get_by_role("button", name="Reviewed").click()
        await proctor.page.wait_for_function(f"(id) => ({status})(id) === 'reviewed'", arg=alert_id)
        await item.get_by_role("button", name="Reopen").click()
        await proctor.page.wait_for_function(f"(id) => ({status})(id) === 'open'", arg=alert_id)
        await proctor.page.locator(".tile-button", has_text="Ann Lee").click()
        await proctor.page.wait_for_selector("#large-view[open]")
        large_item = proctor.page.locator("#lv-alert-list > li").first
        await large_item.get_by_role("button", name="Dismiss").click()
        await proctor.page.wait_for_function(
            f"(id) => ({status})(id) === 'dismissed'", arg=alert_id
        )
        await proctor.page.click("#lv-reenroll")
        await proctor.page.locator("#lv-alerts-info").get_by_text("learned again").wait_for()
        await proctor.page.click("#lv-close")

        # The report, through the page's button, lists the alert with its final status.
        async with proctor.page.expect_download() as info:
            await proctor.page.click("#report-csv")
        download = await info.value
        path = tmp_path / download.suggested_filename
        await download.save_as(path)
        rows = list(csv.DictReader(io.StringIO(path.read_text())))
        assert any(
            r["kind"] == "alert_multiple_voices"
            and r["status"] == "dismissed"
            and r["link"].endswith(f"/api/alerts/{alert_id}/evidence")
            for r in rows
        )
        data = json.loads(report(server, key, "json"))
        alerts = [a for s in data["students"] for a in s["alerts"]]
        assert any(a["id"] == alert_id and a["type"] == "multiple_voices" for a in alerts)

        # A second page with the key gets the alert from history; one without gets nothing.
        later = await monitor(browser, server, [("Ann Lee", code)], key=key)
        await video_playing(later, code)
        await later.page.wait_for_function(
            "(id) => window.rtcproctor.alerts.get(id)?.status === 'dismissed'", arg=alert_id
        )
        keyless = await monitor(browser, server, [("Ann Lee", code)])
        await keyless.page.locator("#alerts-note").get_by_text("proctor key").wait_for()
        assert await keyless.page.is_disabled("#report-csv")
        assert await keyless.page.evaluate("() => window.rtcproctor.alerts.size") == 0
        # The student never hears of it.
        text = (await student.page.content()).lower()
        assert not any(word in text for word in ("several voices", "multiple_voices", "evidence"))
        assert clean(proctor) == [] and clean(later) == [] and clean(keyless) == []
        assert clean(student) == []
    finally:
        await student_browser.close()
        await playwright.stop()


async def test_one_voice_raises_no_voice_alert(voice_server, browser, tmp_path):
    server = voice_server  # its models have loaded: the student goes live with voice detection on
    audio = make_wav(tmp_path, "one-voice", [(VOICE_A, line) for line in LINES_A[:4]])
    length = wav_seconds(audio)
    exam = server.codes("Ann")
    code, key = exam["students"][0]["code"], exam["proctor_key"]
    proctor = await monitor(browser, server, [("Ann Lee", code)], key=key)
    playwright, student_browser, student = await student_with_audio(server, code, audio)
    try:
        await video_playing(proctor, code)
        # A false alert would show within a 6 s window and a 2 s hop of the speech behind
        # it (an unknown voice after one more 4 s check). One pass of the looping ~20 s file
        # (enrollment, then about five identity checks, and the loop's seam) and 10 s more,
        # for the last windows to be analysed, leave time for any.
        await shadow_heard(server, length + 10)
        kinds = await proctor.page.evaluate(
            "() => [...window.rtcproctor.alerts.values()].map((a) => a.type)"
        )
        assert "multiple_voices" not in kinds and "unknown_voice" not in kinds
        data = json.loads(report(server, key, "json"))
        reported = [a["type"] for s in data["students"] for a in s["alerts"]]
        assert "multiple_voices" not in reported and "unknown_voice" not in reported
        assert clean(proctor) == [] and clean(student) == []
        # Chromium follows the shadow peer's answer: Opus in 60 ms packets, not its 20 ms,
        # and at the bitrate asked for, not its own 32 kbit/s.
        health = server.health()
        packet = health["shadow_audio_seconds"] / health["shadow_audio_frames"]
        assert abs(packet - PTIME_MS / 1000) < 0.005, health
        bitrate = 8 * health["shadow_audio_bytes"] / health["shadow_audio_seconds"]
        assert 0.75 * OPUS_BITRATE < bitrate < 1.25 * OPUS_BITRATE, health
    finally:
        await student_browser.close()
        await playwright.stop()
