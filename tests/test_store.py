"""The store, method by method, on a real SQLite file and on a real PostgreSQL server.

`database_url` (tests/conftest.py) runs every test once per engine; the schema comes
from the migrations, as in production.
"""

from __future__ import annotations

import asyncio
import csv
import io

import pytest
from sqlalchemy.exc import IntegrityError

from rtcproctor import codes
from rtcproctor.store import CodeInUse, Store
from rtcproctor.store.report import build_report, report_csv
from rtcproctor.store.store import MAX_ID
from tests.sioclient import Peer
from tests.support import Server


@pytest.fixture
async def store(database_url):
    opened = await Store.open(database_url)
    yield opened
    await opened.close()


async def test_exams_are_found_by_their_key_only(store):
    exam, key = await store.create_exam("Physics")
    other, other_key = await store.create_exam()
    assert exam.name == "Physics" and other.name.startswith("Exam ")
    assert key != other_key and exam.id != other.id
    assert await store.exam_by_key(key) == exam
    assert await store.exam_by_key(other_key) == other
    assert await store.exam_by_key("not-a-key") is None


async def test_generated_codes_find_their_students(store):
    exam, _ = await store.create_exam()
    created = await store.add_students(exam.id, ["Ann", "Bob", "Cy"])
    assert [s.name for s, _ in created] == ["Ann", "Bob", "Cy"]
    assert len({code for _, code in created}) == 3
    ann, ann_code = created[0]
    assert await store.student_by_code(codes.normalize_code(ann_code)) == ann
    assert await store.student(ann.id) == ann
    normalized = {codes.normalize_code(code): s for s, code in created}
    assert await store.students_by_codes([*normalized, "UNKNOWNCODE"]) == normalized
    assert await store.students_by_codes([]) == {}
    assert await store.student_by_code("UNKNOWNCODE") is None
    assert await store.students_of_exam(exam.id) == [s for s, _ in created]
    assert await store.students_of_exam("no-such-exam") == []


async def test_registered_codes_belong_to_one_exam(store):
    exam, _ = await store.create_exam()
    other, _ = await store.create_exam()
    code = codes.check_external_code("ab12-cd34-ef56-gh78")
    ann = await store.register_student(exam.id, "Ann", code)
    renamed = await store.register_student(exam.id, "Ann Lee", code)
    assert renamed.id == ann.id and renamed.name == "Ann Lee"
    assert await store.student_by_code(code) == renamed
    with pytest.raises(CodeInUse):
        await store.register_student(other.id, "Mallory", code)
    [(bob, bob_code)] = await store.add_students(exam.id, ["Bob"])
    with pytest.raises(CodeInUse):
        await store.register_student(other.id, "Mallory", codes.normalize_code(bob_code))
    assert await store.students_of_exam(other.id) == []
    assert await store.student_by_code(codes.normalize_code(bob_code)) == bob


async def test_one_code_races_into_two_exams_from_two_stores(store, database_url):
    """Two server processes register one code at once: exactly one exam gets it."""
    second = await Store.open(database_url)
    try:
        exam, _ = await store.create_exam()
        other, _ = await second.create_exam()
        for i in range(5):
            code = f"RACE{i}XXXXXXXXXXXX"
            results = await asyncio.gather(
                store.register_student(exam.id, "Ann", code),
                second.register_student(other.id, "Bob", code),
                return_exceptions=True,
            )
            assert sorted(type(r).__name__ for r in results) == ["CodeInUse", "StudentRecord"]
            owner = next(r for r in results if not isinstance(r, Exception))
            assert await second.student_by_code(code) == owner == await store.student_by_code(code)
    finally:
        await second.close()


async def test_two_stores_on_one_database_see_each_others_writes(store, database_url):
    exam, key = await store.create_exam()
    [(ann, _)] = await store.add_students(exam.id, ["Ann"])
    second = await Store.open(database_url)
    try:
        assert await second.exam_by_key(key) == exam
        written = await asyncio.gather(
            *(
                (store if i % 2 else second).add_message(ann.id, "student", f"m{i}")
                for i in range(20)
            )
        )
        assert len({m.id for m in written}) == 20
        assert sorted(m.text for m in await store.messages(ann.id)) == sorted(
            f"m{i}" for i in range(20)
        )
    finally:
        await second.close()


async def test_stream_events_in_order(store):
    exam, _ = await store.create_exam()
    [(ann, _), (bob, _)] = await store.add_students(exam.id, ["Ann", "Bob"])
    for kind in ("connected", "live", "background", "offline"):
        await store.record_event(ann.id, kind, "replaced" if kind == "offline" else None)
    await store.record_event(bob.id, "connected")
    events = await store.events(ann.id)
    assert [(e.kind, e.detail) for e in events] == [
        ("connected", None),
        ("live", None),
        ("background", None),
        ("offline", "replaced"),
    ]
    assert all(e.student_id == ann.id for e in events)
    assert [e.at for e in events] == sorted(e.at for e in events)


async def test_chat_history_is_the_newest_in_order(store):
    exam, _ = await store.create_exam()
    [(ann, _), (bob, _)] = await store.add_students(exam.id, ["Ann", "Bob"])
    sent = [
        await store.add_message(ann.id, "student" if i % 2 else "proctor", f"m{i}")
        for i in range(6)
    ]
    await store.add_message(bob.id, "student", "bob's")
    assert await store.messages(ann.id) == sent
    assert [m.text for m in await store.messages(ann.id, limit=2)] == ["m4", "m5"]
    assert [m.text for m in await store.messages(bob.id)] == ["bob's"]
    long = "é✓" * 1000
    assert (await store.add_message(ann.id, "student", long)).text == long
    assert (await store.messages(ann.id))[-1].text == long


async def test_many_students_history_comes_at_once_newest_per_student(store, monkeypatch):
    monkeypatch.setattr("rtcproctor.store.store.IDS_PER_QUERY", 2)  # several IN lists
    exam, _ = await store.create_exam()
    students = [s for s, _ in await store.add_students(exam.id, ["A", "B", "C", "D", "E"])]
    quiet = students[-1]
    for n, student in enumerate(students[:-1]):
        for i in range(n + 2):
            await store.add_message(student.id, "student", f"{student.name}{i}")
            await store.add_attention(student.id, "proctor")
            await store.add_alert(student.id, "unknown_voice", 10.0 * i, 10.0 * i + 1, 0.9, None)
    ids = [s.id for s in students]
    chat = await store.messages_of(ids, limit=3)
    attention = await store.attention_of(ids, limit=3)
    alerts = await store.alerts_of(ids, limit=3)
    for n, student in enumerate(students[:-1]):
        kept = range(max(0, n - 1), n + 2)  # the last three of n + 2
        assert [m.text for m in chat[student.id]] == [f"{student.name}{i}" for i in kept]
        assert chat[student.id] == await store.messages(student.id, limit=3)
        assert attention[student.id] == (await store.attention(student.id))[-3:]
        assert [a.started_at for a in alerts[student.id]] == [10.0 * i for i in kept]
    assert chat[quiet.id] == attention[quiet.id] == alerts[quiet.id] == []
    everything = await store.messages_of(ids, limit=None)
    assert sum(map(len, everything.values())) == sum(n + 2 for n in range(4))
    assert await store.messages_of([]) == {}


async def test_text_is_stored_alike_on_every_engine(store):
    """NUL, lone surrogates and overlong names: what one engine refuses, none stores differently."""
    exam, _ = await store.create_exam("E" * 300)
    assert len(exam.name) == 200
    [(ann, _)] = await store.add_students(exam.id, ["A" * 250])
    assert (await store.student(ann.id)).name == "A" * 200
    message = await store.add_message(ann.id, "student", "a\x00b\ud800c")
    assert message.text == "a\ufffdb?c"
    assert [m.text for m in await store.messages(ann.id)] == ["a\ufffdb?c"]
    await store.record_event(ann.id, "offline", "x\x00" * 150)
    assert (await store.events(ann.id))[0].detail == "x\ufffd" * 100


async def test_rows_for_unknown_students_are_refused(store):
    with pytest.raises(IntegrityError):
        await store.add_message(999_999, "student", "orphan")
    with pytest.raises(IntegrityError):
        await store.record_event(999_999, "connected")


async def test_ids_out_of_range_are_simply_unknown(store):
    """Ids arrive from clients; a huge one is "not found" on PostgreSQL as on SQLite."""
    exam, _ = await store.create_exam()
    [(ann, _)] = await store.add_students(exam.id, ["Ann"])
    for bad in (MAX_ID + 1, 2**63, 0, -1):
        assert await store.student(bad) is None
        assert await store.alert(bad) is None
        assert await store.resolve_attention(ann.id, bad) is False
        assert await store.set_alert_status(ann.id, bad, "reviewed") is None
        assert await store.extend_alert(bad, 1.0, 0.5, None) is None


async def test_attention_requests_resolve_once(store):
    exam, _ = await store.create_exam()
    [(ann, _), (bob, _)] = await store.add_students(exam.id, ["Ann", "Bob"])
    first = await store.add_attention(ann.id, "student")
    second = await store.add_attention(ann.id, "proctor")
    assert first.resolved_at is None
    assert not await store.resolve_attention(bob.id, first.id)  # another student's request
    assert await store.resolve_attention(ann.id, first.id)
    assert not await store.resolve_attention(ann.id, first.id)
    listed = await store.attention(ann.id)
    assert [(a.id, a.sender, a.resolved_at is not None) for a in listed] == [
        (first.id, "student", True),
        (second.id, "proctor", False),
    ]
    assert [a.id for a in await store.attention(ann.id, limit=1)] == [second.id]
    assert await store.attention(bob.id) == []


async def test_alerts_grow_change_status_and_stay_per_student(store):
    exam, _ = await store.create_exam()
    [(ann, _), (bob, _)] = await store.add_students(exam.id, ["Ann", "Bob"])
    alert = await store.add_alert(ann.id, "multiple_voices", 100.0, 104.0, 0.7, "evidence/a.wav")
    assert (alert.status, alert.evidence, alert.created_at) == (
        "open",
        "evidence/a.wav",
        alert.updated_at,
    )
    grown = await store.extend_alert(alert.id, 110.0, 0.6, None)
    assert (grown.started_at, grown.ended_at, grown.confidence) == (100.0, 110.0, 0.7)
    assert grown.evidence == "evidence/a.wav" and grown.updated_at >= alert.updated_at
    grown = await store.extend_alert(alert.id, 105.0, 0.9, "evidence/b.wav")
    assert (grown.ended_at, grown.confidence, grown.evidence) == (110.0, 0.9, "evidence/b.wav")
    assert await store.extend_alert(alert.id + 1000, 1.0, 1.0, None) is None

    assert await store.set_alert_status(bob.id, alert.id, "reviewed") is None
    with pytest.raises(ValueError):
        await store.set_alert_status(ann.id, alert.id, "deleted")
    reviewed = await store.set_alert_status(ann.id, alert.id, "reviewed")
    assert reviewed.status == "reviewed"
    assert await store.alert(alert.id) == reviewed

    earlier = await store.add_alert(ann.id, "mic_silent", 50.0, 80.0, 1.0)
    assert earlier.evidence is None
    assert [a.id for a in await store.alerts(ann.id)] == [earlier.id, alert.id]
    assert [a.id for a in await store.alerts(ann.id, limit=1)] == [alert.id]
    assert await store.alerts(bob.id) == []


async def test_report_holds_every_students_timeline(store):
    exam, _ = await store.create_exam("Final")
    [(ann, _), _] = await store.add_students(exam.id, ["=HYPERLINK(1)", "Bob"])
    await store.record_event(ann.id, "live")
    await store.add_message(ann.id, "student", "hello")
    attention = await store.add_attention(ann.id, "student")
    await store.resolve_attention(ann.id, attention.id)
    alert = await store.add_alert(ann.id, "unknown_voice", 1.0, 2.0, 0.8, "evidence/x.wav")

    report = await build_report(store, exam, "https://exam.example")
    assert report["exam"]["name"] == "Final"
    first, second = report["students"]
    assert (first["name"], second["name"], second["timeline"]) == ("=HYPERLINK(1)", "Bob", [])
    assert [e["kind"] for e in first["timeline"]] == [
        "alert_unknown_voice",  # started at t=1.0, long before the rest
        "live",
        "chat_student",
        "attention_student",
    ]
    assert first["timeline"][3]["status"] == "resolved"
    link = f"https://exam.example/api/alerts/{alert.id}/evidence"
    assert first["alerts"][0]["evidence"] == link
    rows = list(csv.DictReader(io.StringIO(report_csv(report))))
    assert [r["student"] for r in rows] == ["'=HYPERLINK(1)"] * 4
    assert rows[0]["link"] == link


async def test_a_server_on_postgresql_keeps_chat_across_restarts(postgres, tmp_path):
    """The whole server on PostgreSQL: codes from the CLI, a student's chat, a restart."""
    url = postgres.database()
    server = Server(data_dir=tmp_path / "data", env={"RTCPROCTOR_DATABASE_URL": url}).start()
    try:
        assert server.health()["database"] == "ok"
        exam = server.codes("Ann")
        code = exam["students"][0]["code"]
        student = await Peer(server.url).connect()
        try:
            assert (await student.call("student:join", {"code": code}))["ok"]
            assert (await student.call("chat:send", {"text": "on postgres"}))["message"]
        finally:
            await student.close()
        server.stop()
        server.start()
        proctor = await Peer(server.url).connect()
        try:
            ack = await proctor.call("proctor:watch", {"codes": [code], "key": exam["proctor_key"]})
            history = ack["history"][ack["students"][0]["code"]]
            assert [m["text"] for m in history["chat"]] == ["on postgres"]
        finally:
            await proctor.close()
    finally:
        server.stop()
    assert not (tmp_path / "data" / "rtcproctor.db").exists()  # nothing went to SQLite
