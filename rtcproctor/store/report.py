"""A per-exam report: every student's timeline (on/off-air, chat, attention, alerts)."""

from __future__ import annotations

import csv
import io
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from rtcproctor.store.records import ExamRecord
from rtcproctor.store.store import Store

CSV_COLUMNS = ["student", "student_id", "time", "unix_time", "kind", "detail", "status", "link"]


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class Entry:
    ts: float
    kind: str
    detail: str = ""
    status: str = ""
    link: str = ""


async def build_report(store: Store, exam: ExamRecord, base_url: str = "") -> dict[str, Any]:
    students = []
    records = await store.students_of_exam(exam.id)
    ids = [student.id for student in records]
    # Everything, not only the recent history a monitor page is sent.
    events = await store.events_of(ids)
    messages = await store.messages_of(ids, limit=None)
    attention = await store.attention_of(ids, limit=None)
    alerts_of = await store.alerts_of(ids, limit=None)
    for student in records:
        entries = [Entry(e.at, e.kind, e.detail or "") for e in events[student.id]]
        entries += [Entry(m.at, f"chat_{m.sender}", m.text) for m in messages[student.id]]
        entries += [
            Entry(a.at, f"attention_{a.sender}", "", "resolved" if a.resolved_at else "open")
            for a in attention[student.id]
        ]
        alerts = alerts_of[student.id]
        entries += [
            Entry(
                a.started_at,
                f"alert_{a.type}",
                f"{a.type} until {iso(a.ended_at)}, confidence {a.confidence:.2f}",
                a.status,
                f"{base_url}/api/alerts/{a.id}/evidence" if a.evidence else "",
            )
            for a in alerts
        ]
        entries.sort(key=lambda e: e.ts)
        students.append(
            {
                "id": student.id,
                "name": student.name,
                "alerts": [
                    {
                        "id": a.id,
                        "type": a.type,
                        "start": a.started_at,
                        "end": a.ended_at,
                        "confidence": round(a.confidence, 3),
                        "status": a.status,
                        "evidence": f"{base_url}/api/alerts/{a.id}/evidence"
                        if a.evidence
                        else None,
                    }
                    for a in alerts
                ],
                "timeline": [
                    {
                        "time": iso(e.ts),
                        "ts": e.ts,
                        "kind": e.kind,
                        "detail": e.detail,
                        "status": e.status,
                        "link": e.link,
                    }
                    for e in entries
                ],
            }
        )
    return {
        "exam": {"id": exam.id, "name": exam.name, "created": iso(exam.created_at)},
        "generated": iso(time.time()),
        "students": students,
    }


def _cell(value: str) -> str:
    """Spreadsheets run cells that start with = + - @ as formulas: defuse them."""
    return "'" + value if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value


def report_csv(report: dict[str, Any]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(CSV_COLUMNS)
    for student in report["students"]:
        for e in student["timeline"]:
            writer.writerow(
                [
                    _cell(student["name"]),
                    student["id"],
                    e["time"],
                    f"{e['ts']:.3f}",
                    e["kind"],
                    _cell(e["detail"]),
                    e["status"],
                    e["link"],
                ]
            )
    return out.getvalue()
