"""Two server processes sharing a real Redis (and one database): whatever process a page
reaches, it sees the others; when a process dies, its students come back on the other."""

from __future__ import annotations

import secrets
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.sioclient import Peer
from tests.support import Balancer, Server

FAKE_OFFER = {"type": "offer", "sdp": "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"}
FAKE_ANSWER = {"type": "answer", "sdp": FAKE_OFFER["sdp"]}

pytestmark = pytest.mark.skipif(not shutil.which("redis-server"), reason="needs redis-server")


def norm(code: str) -> str:
    return code.replace("-", "")


@pytest.fixture
def cluster(redis_server, tmp_path: Path):
    """`cluster(voice_a=False)` starts processes A and B on one Redis and one data dir."""
    started: list[Server] = []

    def start(voice_a: bool = False) -> tuple[Server, Server]:
        env = {
            "RTCPROCTOR_REDIS_URL": redis_server.url,
            "RTCPROCTOR_REDIS_PREFIX": f"test-{secrets.token_hex(4)}:",
        }
        a = Server(tmp_path / "data", env={**env, "RTCPROCTOR_VOICE": "1" if voice_a else "0"})
        b = Server(tmp_path / "data", env=env)
        for server in (a, b):
            started.append(server.start())
        if voice_a:
            a.wait_voice_ready()
        return a, b

    yield start
    for server in started:
        server.stop()


@pytest.fixture
async def clients():
    made: list[Peer] = []

    async def make(url: str) -> Peer:
        peer = await Peer(url).connect()
        made.append(peer)
        return peer

    yield make
    for peer in made:
        await peer.close()


async def test_a_student_on_one_process_and_a_proctor_on_the_other(cluster, clients):
    a, b = cluster()
    exam = a.codes("Ann")
    code, key = exam["students"][0]["code"], exam["proctor_key"]
    student = await clients(a.url)
    proctor = await clients(b.url)
    assert (await student.call("student:join", {"code": code}))["ok"]
    watched = await proctor.call("proctor:watch", {"codes": [code], "key": key})
    assert watched["students"][0]["state"] == "connected"

    # Going live on A asks for a peer to the proctor on B, and signals cross both ways.
    assert (await student.call("student:live", {"live": True}))["ok"]
    await proctor.wait_for("student:status", lambda d: d["state"] == "live")
    request = await student.wait_for("peer:request")
    assert (await student.call("signal", {"peer": request["peer"], "description": FAKE_OFFER}))[
        "ok"
    ]
    offer = await proctor.wait_for("signal", lambda d: "description" in d)
    assert offer["code"] == norm(code) and offer["peer"] == request["peer"]
    assert (await proctor.call("signal", {"peer": request["peer"], "description": FAKE_ANSWER}))[
        "ok"
    ]
    await student.wait_for("signal", lambda d: d.get("description", {}).get("type") == "answer")

    # Chat and attention both ways.
    await student.call("chat:send", {"text": "hello from A"})
    await proctor.wait_for("chat:message", lambda d: d["message"]["text"] == "hello from A")
    await proctor.call("chat:send", {"code": code, "text": "hello from B"})
    await student.wait_for("chat:message", lambda d: d["message"]["text"] == "hello from B")
    await student.call("attention:raise", {})
    await proctor.wait_for("attention", lambda d: d["attention"]["from"] == "student")
    await proctor.call("attention:raise", {"code": code})
    await student.wait_for("attention", lambda d: d["attention"]["from"] == "proctor")

    # A proctor page on A without the key sees the student live, but never an alert room.
    keyless = await clients(a.url)
    ack = await keyless.call("proctor:watch", {"codes": [code]})
    assert ack["students"][0]["state"] == "live" and "history" not in ack
    await student.wait_for("peer:request", lambda d: d["peer"] != request["peer"])

    # A second device on B takes over the code from the first on A.
    device = await clients(b.url)
    assert (await device.call("student:join", {"code": code}))["ok"]
    await student.wait_for("student:replaced")
    await proctor.wait_for("peer:close", lambda d: d["peer"] == request["peer"])
    await proctor.wait_for("student:status", lambda d: d["state"] == "offline")
    await proctor.wait_for("student:status", lambda d: d["state"] == "connected", within=5)
    ack = await student.call("student:live", {"live": True})
    assert ack["ok"] is False and ack["error"]["code"] == "not_joined"

    # Wrong codes count against the address on every process.
    guesser = await clients(a.url)
    for i in range(12):
        await guesser.call("student:join", {"code": f"ZZZZZ-ZZZZZ-ZZZ{i:02d}"})
    elsewhere = await clients(b.url)
    ack = await elsewhere.call("student:join", {"code": code})
    assert ack["ok"] is False and ack["error"]["code"] == "rate_limited"


async def test_a_dead_process_hands_its_students_to_the_survivor(cluster, clients):
    a, b = cluster()
    exam = a.codes("Ann")
    code = exam["students"][0]["code"]
    student = await clients(a.url)
    proctor = await clients(b.url)
    await student.call("student:join", {"code": code})
    await student.call("student:live", {"live": True})
    ack = await proctor.call("proctor:watch", {"codes": [code]})
    assert ack["students"][0]["state"] == "live"
    assert a.process is not None
    a.process.kill()  # no goodbye: only the missing heartbeat tells
    offline = await proctor.wait_for("student:status", lambda d: d["state"] == "offline", within=30)
    assert offline["code"] == norm(code)

    # The student's page reconnects to B and is live again; the proctor is asked for a peer.
    again = await clients(b.url)
    assert (await again.call("student:join", {"code": code}))["ok"]
    assert (await again.call("student:live", {"live": True}))["ok"]
    await proctor.wait_for("student:status", lambda d: d["state"] == "live" and d["since"] > 0)
    await again.wait_for("peer:request")
    assert b.health()["live"] == 1


@pytest.mark.browser
@pytest.mark.asyncio(loop_scope="session")
@pytest.mark.timeout(600)
@pytest.mark.skipif(
    not shutil.which("espeak-ng") or not shutil.which("sox"), reason="needs espeak-ng and sox"
)
async def test_pages_on_two_processes_then_one_dies(browser, cluster, tmp_path):
    from tests.test_pages import clean, monitor, student_chat, tile_state, video_playing
    from tests.test_pages_alerts import (
        LINES_A,
        LINES_B,
        VOICE_A,
        VOICE_B,
        alert_of_type,
        make_wav,
        student_with_audio,
    )

    a, b = cluster(voice_a=True)
    balancer = await Balancer([a.port, b.port]).start()
    audio = make_wav(
        tmp_path,
        "two-voices",
        [(VOICE_A, LINES_A[0]), (VOICE_B, LINES_B[0]), (VOICE_A, LINES_A[1])],
    )
    exam = a.codes("Ann")
    code, key = exam["students"][0]["code"], exam["proctor_key"]
    proctor = await monitor(browser, b, [("Ann Lee", code)], key=key)
    playwright, student_browser, student = await student_with_audio(
        SimpleNamespace(url=balancer.url), code, audio
    )
    try:
        # The student page is on A (through the balancer), the monitor on B.
        assert set(balancer.accepted) == {a.port}
        await video_playing(proctor, code)
        await student_chat(student, "before the crash")
        await proctor.page.wait_for_function(
            "(code) => window.rtcproctor.tiles.get(code).unread > 0", arg=norm(code)
        )
        await proctor.page.locator(".tile-button", has_text="Ann Lee").click()
        await proctor.page.wait_for_selector("#large-view[open]")
        await proctor.page.fill("#lv-chat-input", "seen from B")
        await proctor.page.press("#lv-chat-input", "Enter")
        await student.page.locator("#chat-list").get_by_text("seen from B").wait_for()
        await proctor.page.click("#lv-attention")
        await student.page.wait_for_selector("#attention-banner:not([hidden])")
        await proctor.page.click("#lv-close")
        await student.page.click("#attention-dismiss")
        await student.page.click("#raise-attention")
        await proctor.page.wait_for_function(
            "(code) => window.rtcproctor.tiles.get(code).attention.size > 0", arg=norm(code)
        )

        # A's shadow proctor hears two voices; the alert reaches the monitor on B.
        alert = await alert_of_type(proctor, "multiple_voices")
        assert alert["code"] == norm(code)
        old_peer = await proctor.page.evaluate(
            "(code) => window.rtcproctor.tiles.get(code).peer", norm(code)
        )

        # A dies mid-stream. The page reconnects through the balancer to B by itself.
        assert a.process is not None
        a.process.kill()
        await student.page.wait_for_function(
            "() => window.rtcproctor.state === 'live'", timeout=60_000
        )
        await proctor.page.wait_for_function(
            "([code, old]) => { const t = window.rtcproctor.tiles.get(code);"
            " return t.peer !== null && t.peer !== old; }",
            arg=[norm(code), old_peer],
            timeout=60_000,
        )
        assert balancer.accepted[-1] == b.port
        await tile_state(proctor, code, "live", within=30_000)
        await video_playing(proctor, code, within=30_000)
        assert b.health()["live"] == 1

        # Nothing stored was lost: a monitor opened now on B gets chat and alert history.
        later = await monitor(browser, b, [("Ann Lee", code)], key=key)
        await video_playing(later, code, within=30_000)
        await later.page.wait_for_function(
            "(id) => window.rtcproctor.alerts.has(id)", arg=alert["id"]
        )
        await later.page.locator(".tile-button", has_text="Ann Lee").click()
        await later.page.wait_for_selector("#large-view[open]")
        await later.page.locator("#lv-chat-list").get_by_text("before the crash").wait_for()
        await student.page.locator("#chat-list").get_by_text("seen from B").wait_for()
        assert clean(proctor) == [] and clean(later) == []
    finally:
        await student_browser.close()
        await playwright.stop()
        await balancer.stop()


def test_an_unreachable_redis_is_a_clear_error_at_start(tmp_path):
    import subprocess

    from tests.support import free_port, rtcproctor

    port = free_port()  # nothing listens there
    env = {"RTCPROCTOR_VOICE": "0", "RTCPROCTOR_REDIS_URL": f"redis://127.0.0.1:{port}/0"}
    with pytest.raises(subprocess.CalledProcessError) as failed:
        rtcproctor(
            "serve", "--port", str(free_port()), "--data-dir", str(tmp_path), env=env, timeout=60
        )
    out = failed.value.stdout + failed.value.stderr
    assert failed.value.returncode == 2
    assert f"cannot reach Redis at 127.0.0.1:{port} (RTCPROCTOR_REDIS_URL)" in out
    assert "Traceback" not in out
