"""The signaling protocol against a real server process, with real Socket.IO clients."""

from __future__ import annotations

import asyncio
import json
import urllib.request

import pytest

from tests.sioclient import Peer
from tests.support import Server

FAKE_OFFER = {"type": "offer", "sdp": "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"}
FAKE_ANSWER = {"type": "answer", "sdp": FAKE_OFFER["sdp"]}


def health(url: str) -> dict:
    with urllib.request.urlopen(url + "/healthz") as r:
        return json.load(r)


@pytest.fixture
async def clients(server):
    made: list[Peer] = []

    async def make() -> Peer:
        peer = await Peer(server.url).connect()
        made.append(peer)
        return peer

    yield make
    for peer in made:
        await peer.close()


async def test_student_joins_with_code_and_gets_settings(server, clients):
    exam = server.codes("Ann")
    student = await clients()
    ack = await student.call("student:join", {"code": exam["students"][0]["code"].lower()})
    assert ack["ok"] is True
    assert ack["student"]["name"] == "Student 1"
    assert ack["video"]["width"] > 0 and ack["iceServers"] == []
    assert ack["chat"] == []


async def test_unknown_codes_are_refused_then_rate_limited(server, clients):
    # Made first: the CLI takes seconds on a loaded machine, and the limit refills meanwhile.
    exam = server.codes("Ann")
    student = await clients()
    errors = []
    for i in range(14):
        ack = await student.call("student:join", {"code": f"ZZZZZ-ZZZZZ-ZZZ{i:02d}"})
        assert ack["ok"] is False
        errors.append(ack["error"]["code"])
    assert errors[0] == "unknown_code"
    assert "rate_limited" in errors
    # Once limited, even a right code is refused until the wait is over: no oracle.
    ack = await student.call("student:join", {"code": exam["students"][0]["code"]})
    assert ack["ok"] is False and ack["error"]["code"] == "rate_limited"
    assert ack["retry_after"] >= 1


async def test_watch_with_many_unknown_codes_reveals_nothing_after_limit(server, clients):
    exam = server.codes("Ann")
    proctor = await clients()
    guesses = [f"QQQQQ-QQQQQ-QQ{i:03d}" for i in range(30)]
    ack = await proctor.call("proctor:watch", {"codes": [*guesses, exam["students"][0]["code"]]})
    assert ack["ok"] is True
    assert ack["students"] == []  # the real code came after the guesses ran out
    assert {e["error"]["code"] for e in ack["errors"]} == {"unknown_code", "rate_limited"}


@pytest.fixture(scope="module")
def refusing_server(tmp_path_factory):
    """For messages the server refuses before they touch any state or rate limit."""
    srv = Server(data_dir=tmp_path_factory.mktemp("malformed") / "data").start()
    yield srv
    srv.stop()


@pytest.mark.parametrize(
    ("event", "payload", "error"),
    [
        ("student:join", "not an object", "invalid"),
        ("student:join", {"code": 12345}, "invalid"),
        ("student:join", {"code": "A" * 5000}, "too_large"),
        ("student:join", {}, "invalid"),
        ("student:live", {"live": True}, "not_joined"),
        ("chat:send", {"code": "X", "text": ""}, "invalid"),
        ("chat:send", {"code": "X", "text": "x" * 2001}, "too_large"),
        ("proctor:watch", {"codes": "ABC"}, "invalid"),
        ("proctor:watch", {"codes": ["A"] * 501}, "too_large"),
        ("proctor:watch", {"codes": [{"$ne": 1}]}, "invalid"),
        ("signal", {"peer": "nope", "candidate": None}, "unknown_peer"),
        ("attention:resolve", {"code": "X", "id": "1"}, "not_watching"),
        ("no:such:event", {}, "invalid"),
    ],
)
async def test_malformed_messages_get_explicit_errors(refusing_server, event, payload, error):
    peer = await Peer(refusing_server.url).connect()
    try:
        ack = await peer.call(event, payload)
    finally:
        await peer.close()
    assert ack["ok"] is False
    assert ack["error"]["code"] == error
    assert ack["error"]["message"]
    assert (await asyncio.to_thread(health, refusing_server.url))["status"] == "ok"


async def test_oversized_packet_drops_only_that_connection(server, clients):
    exam = server.codes("Ann")
    attacker = await clients()
    with pytest.raises(Exception):  # noqa: B017 - the server closes the socket; any error will do
        await attacker.call("chat:send", {"text": "x" * (1024 * 1024)}, within=3)
    other = await clients()
    ack = await other.call("student:join", {"code": exam["students"][0]["code"]})
    assert ack["ok"] is True


async def test_live_student_and_proctor_are_paired_and_signals_relayed(server, clients):
    exam = server.codes("Ann")
    code = exam["students"][0]["code"]
    student, proctor = await clients(), await clients()
    assert (await student.call("student:join", {"code": code}))["ok"]
    watch = await proctor.call("proctor:watch", {"codes": [code]})
    assert watch["ok"] and watch["students"][0]["state"] == "connected"
    assert "history" not in watch  # no key, no history
    assert (await student.call("student:live", {"live": True}))["ok"]
    status = await proctor.wait_for("student:status", lambda s: s["state"] == "live")
    normalized = status["code"]
    request = await student.wait_for("peer:request")
    peer = request["peer"]
    assert request["audioOnly"] is False

    # A student may only offer and a proctor may only answer.
    bad = await student.call("signal", {"peer": peer, "description": FAKE_ANSWER})
    assert bad["error"]["code"] == "invalid"
    assert (await student.call("signal", {"peer": peer, "description": FAKE_OFFER}))["ok"]
    offer = await proctor.wait_for("signal")
    assert offer == {"peer": peer, "description": FAKE_OFFER, "code": normalized}
    assert (await proctor.call("signal", {"peer": peer, "description": FAKE_ANSWER}))["ok"]
    answer = await student.wait_for("signal")
    assert answer["description"] == FAKE_ANSWER
    candidate = {
        "candidate": "candidate:1 1 udp 1 127.0.0.1 9 typ host",
        "sdpMid": "0",
        "sdpMLineIndex": 0,
    }
    assert (await proctor.call("signal", {"peer": peer, "candidate": candidate}))["ok"]
    await student.wait_for("signal", lambda s: s.get("candidate") == candidate)

    # The proctor's connection failed: it asks again, the old peer closes, a new one opens.
    assert (await proctor.call("peer:renew", {"code": code}))["ok"]
    await student.wait_for("peer:close", lambda d: d["peer"] == peer)
    renewed = await student.wait_for("peer:request", lambda d: d["peer"] != peer)
    # The proctor leaves: the student is told to close that peer.
    await proctor.close()
    await student.wait_for("peer:close", lambda d: d["peer"] == renewed["peer"])


async def test_page_with_one_code_sees_nothing_of_another(server, clients):
    exam = server.codes("Ann", "Bob")
    ann, bob = (s["code"] for s in exam["students"])
    ann_page, bob_page, ann_proctor = await clients(), await clients(), await clients()
    await ann_page.call("student:join", {"code": ann})
    await bob_page.call("student:join", {"code": bob})
    watch = await ann_proctor.call("proctor:watch", {"codes": [ann]})
    assert [s["name"] for s in watch["students"]] == ["Student 1"]
    await bob_page.call("student:live", {"live": True})
    await bob_page.call("chat:send", {"text": "secret from bob"})
    await bob_page.call("attention:raise", {})
    # Ann's proctor cannot act on Bob either.
    ack = await ann_proctor.call("chat:send", {"code": bob, "text": "hi"})
    assert ack["error"]["code"] == "not_watching"
    await ann_page.call("chat:send", {"text": "from ann"})
    await ann_proctor.wait_for("chat:message")
    await asyncio.sleep(0.5)
    seen = json.dumps(ann_proctor.events) + json.dumps(ann_page.events)
    assert "secret from bob" not in seen
    assert bob.replace("-", "") not in seen
    assert "Student 2" not in seen
    assert all(s["code"] == ann.replace("-", "") for s in ann_proctor.events["student:status"])


async def test_second_device_takes_over_and_the_first_is_told(server, clients):
    exam = server.codes("Ann")
    code = exam["students"][0]["code"]
    old, new, proctor = await clients(), await clients(), await clients()
    await proctor.call("proctor:watch", {"codes": [code]})
    await old.call("student:join", {"code": code})
    await old.call("student:live", {"live": True})
    first = await old.wait_for("peer:request")
    assert (await new.call("student:join", {"code": code}))["ok"]
    await old.wait_for("student:replaced")
    await proctor.wait_for("peer:close", lambda d: d["peer"] == first["peer"])
    # The replaced page is no longer joined.
    assert (await old.call("student:live", {"live": True}))["error"]["code"] == "not_joined"
    await new.call("student:live", {"live": True})
    second = await new.wait_for("peer:request")
    assert second["peer"] != first["peer"]
    assert not [r for r in old.events["peer:request"] if r["peer"] == second["peer"]]


async def test_chat_and_attention_both_ways_with_history_for_key(server, clients):
    exam = server.codes("Ann")
    code = exam["students"][0]["code"]
    student, proctor = await clients(), await clients()
    await student.call("student:join", {"code": code})
    await proctor.call("proctor:watch", {"codes": [code]})
    sent = await student.call("chat:send", {"text": "<img src=x onerror=alert(1)>"})
    assert sent["message"]["from"] == "student"
    got = await proctor.wait_for("chat:message")
    assert got["message"]["text"] == "<img src=x onerror=alert(1)>"  # stored as text, as is
    await proctor.call("chat:send", {"code": code, "text": "eyes on your paper"})
    await student.wait_for("chat:message", lambda m: m["message"]["from"] == "proctor")
    raised = await student.call("attention:raise", {})
    att = await proctor.wait_for("attention")
    assert (
        att["attention"]["from"] == "student"
        and att["attention"]["id"] == raised["attention"]["id"]
    )
    await proctor.call("attention:raise", {"code": code})
    await student.wait_for("attention", lambda a: a["attention"]["from"] == "proctor")
    resolved = await proctor.call("attention:resolve", {"code": code, "id": att["attention"]["id"]})
    assert resolved["ok"]

    late = await clients()
    wrong = await late.call("proctor:watch", {"codes": [code], "key": "not-the-key"})
    assert wrong["error"]["code"] == "unauthorized"
    ok = await late.call("proctor:watch", {"codes": [code], "key": exam["proctor_key"]})
    history = next(iter(ok["history"].values()))
    assert [m["text"] for m in history["chat"]] == [
        "<img src=x onerror=alert(1)>",
        "eyes on your paper",
    ]
    assert [(a["from"], a["resolved"]) for a in history["attention"]] == [
        ("student", True),
        ("proctor", False),
    ]


async def test_everything_survives_a_server_restart(server, clients):
    exam = server.codes("Ann")
    code = exam["students"][0]["code"]
    student = await clients()
    await student.call("student:join", {"code": code})
    await student.call("chat:send", {"text": "before restart"})
    await student.close()
    server.stop()
    server.start()
    proctor = await clients()
    ack = await proctor.call("proctor:watch", {"codes": [code], "key": exam["proctor_key"]})
    assert ack["students"][0]["state"] == "offline"
    assert [m["text"] for m in ack["history"][ack["students"][0]["code"]]["chat"]] == [
        "before restart"
    ]
    again = await clients()
    assert (await again.call("student:join", {"code": code}))["ok"]


async def test_codes_made_elsewhere_register_only_when_strong(server, clients):
    exam = server.codes("Ann")
    proctor = await clients()
    ack = await proctor.call(
        "proctor:register",
        {
            "key": exam["proctor_key"],
            "students": [
                {"name": "Weak", "code": "1234"},
                {"name": "Strong", "code": "lms-8f3k2-q9x7z-m4t1"},
                "junk",
            ],
        },
    )
    assert ack["ok"]
    assert [r["name"] for r in ack["registered"]] == ["Strong"]
    assert {e["error"]["code"] for e in ack["errors"]} == {"weak_code", "invalid"}
    student = await clients()
    joined = await student.call("student:join", {"code": "LMS8F3K2Q9X7ZM4T1"})
    assert joined["ok"] and joined["student"]["name"] == "Strong"
    other = await clients()
    denied = await other.call("proctor:register", {"key": "wrong", "students": []})
    assert denied["error"]["code"] == "unauthorized"


async def test_chat_flood_is_rate_limited(server, clients):
    exam = server.codes("Ann")
    student = await clients()
    await student.call("student:join", {"code": exam["students"][0]["code"]})
    results = [await student.call("chat:send", {"text": f"m{i}"}) for i in range(15)]
    assert results[0]["ok"]
    assert any(r.get("error", {}).get("code") == "rate_limited" for r in results)
