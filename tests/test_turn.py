"""TURN with a real coturn on the project's own config: credentials, relaying, refusals."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import subprocess
import sys
import time
import urllib.request

import pytest

from rtcproctor.rtc.turncheck import TurnUrl, check_url, permission_refused
from rtcproctor.signaling.ice import turn_password
from tests.support import Server


def credentials(turn, ttl: int = 3600, secret: str | None = None) -> tuple[str, str]:
    username = f"{int(time.time()) + ttl}:tester"
    return username, turn_password(secret or turn.secret, username)


@pytest.fixture
def turn_server(tmp_path, turn):
    env = {
        "RTCPROCTOR_TURN_SECRET": turn.secret,
        "RTCPROCTOR_TURN_URLS": f"{turn.url},{turn.url}?transport=tcp",
        "RTCPROCTOR_TURN_TTL": "7200",
    }
    srv = Server(data_dir=tmp_path / "data", env=env).start()
    yield srv
    srv.stop()


async def test_ice_servers_hand_out_credentials_that_verify_and_expire(turn_server, turn):
    with urllib.request.urlopen(turn_server.url + "/ice-servers") as r:
        body = json.load(r)
        assert r.headers["Cache-Control"] == "no-store"
    assert body["ttl"] == 7200
    [server] = body["iceServers"]
    assert server["urls"] == [turn.url, f"{turn.url}?transport=tcp"]
    expiry, _, ident = server["username"].partition(":")
    assert ident and abs(int(expiry) - (time.time() + 7200)) < 60
    mac = hmac.new(turn.secret.encode(), server["username"].encode(), hashlib.sha1).digest()
    assert server["credential"] == base64.b64encode(mac).decode()
    # The real coturn accepts them, over UDP and TCP.
    for url in server["urls"]:
        report = await check_url(url, server["username"], server["credential"])
        assert report.ok, report.error


async def test_expired_and_forged_credentials_are_rejected(turn):
    url = TurnUrl.parse(turn.url)
    expired = credentials(turn, ttl=-60)
    forged = credentials(turn, secret="not-the-secret")
    for username, password in (expired, forged):
        report = await check_url(turn.url, username, password)
        assert not report.ok and report.error.startswith("TURN error 401"), report.error
    good = credentials(turn)
    assert not await permission_refused(url, *good, ("127.0.0.1", 9))


async def test_production_config_refuses_loopback_and_private_peers(production_turn):
    url = TurnUrl.parse(production_turn.url)
    good = credentials(production_turn)
    for peer in (
        "127.0.0.1",
        "10.0.0.1",
        "172.16.5.4",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
    ):
        assert await permission_refused(url, *good, (peer, 9)), peer
    # …while a public peer (a phone on mobile data) is still allowed.
    for peer in ("8.8.8.8", "81.2.69.160"):
        assert not await permission_refused(url, *good, (peer, 9)), peer


def test_check_turn_command_reports_success_and_failure(turn):
    base = [sys.executable, "-m", "rtcproctor", "check-turn", "--url", turn.url]
    ok = subprocess.run(
        [*base, "--secret", turn.secret, "--expect-refused", "10.0.0.1"],
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.startswith("OK") and "10.0.0.1:9 refused" in ok.stdout
    bad = subprocess.run([*base, "--secret", "wrong"], capture_output=True, text=True)
    assert bad.returncode == 1 and "401" in bad.stdout
    unset = subprocess.run(base, capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})
    assert unset.returncode == 2 and "RTCPROCTOR_TURN_SECRET" in unset.stderr


@pytest.fixture
def relay_server(tmp_path, turn):
    env = {
        "RTCPROCTOR_TURN_SECRET": turn.secret,
        "RTCPROCTOR_TURN_URLS": turn.url,
        "RTCPROCTOR_ICE_TRANSPORT_POLICY": "relay",
        "RTCPROCTOR_VOICE": "1",
    }
    srv = Server(data_dir=tmp_path / "data", env=env).start()
    srv.wait_voice_ready()
    yield srv
    srv.stop()


@pytest.mark.browser
@pytest.mark.asyncio(loop_scope="session")
async def test_chromium_streams_through_coturn_with_relay_only(relay_server, browser):
    from tests.test_pages import live_student, monitor, video_playing

    exam = relay_server.codes("Ann")
    code = exam["students"][0]["code"]
    student = await live_student(browser, relay_server, code)
    proctor = await monitor(browser, relay_server, [("Ann", code)])
    await video_playing(proctor, code)
    selected = """async () => {
        const result = [];
        for (const pc of window.rtcproctor.peers.values()) {
            const stats = [...(await pc.getStats()).values()];
            const pair = stats.find((s) => s.type === 'candidate-pair' && s.nominated
                                           && s.state === 'succeeded');
            if (!pair) { result.push([null, null, null]); continue; }
            const local = stats.find((s) => s.id === pair.localCandidateId);
            const remote = stats.find((s) => s.id === pair.remoteCandidateId);
            result.push([local.candidateType, remote.candidateType,
                         pc.getConfiguration().iceTransportPolicy]);
        }
        return result;
    }"""
    # Two peers, both relayed by coturn: the monitor's and the shadow proctor's (audio only).
    await student.page.wait_for_function("() => window.rtcproctor.peers.size === 2")
    for _ in range(100):
        pairs = await student.page.evaluate(selected)
        if len(pairs) == 2 and all(p[0] for p in pairs):
            break
        await asyncio.sleep(0.1)
    assert pairs == [["relay", "relay", "relay"]] * 2
    for _ in range(100):
        if relay_server.health()["shadow_audio_frames"] > 0:
            break
        await asyncio.sleep(0.1)
    assert relay_server.health()["shadow_audio_frames"] > 0
