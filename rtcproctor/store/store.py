"""The store: every write the server makes goes through here, on any SQLAlchemy async URL."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import event, func, select, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine

from rtcproctor.codes import digest, generate_code, generate_key, normalize_code
from rtcproctor.store import migrate
from rtcproctor.store.models import (
    AttentionRequest,
    ChatMessage,
    Exam,
    StreamEvent,
    Student,
    VoiceAlert,
)
from rtcproctor.store.records import (
    AlertRecord,
    AttentionRecord,
    EventRecord,
    ExamRecord,
    MessageRecord,
    StudentRecord,
)

HISTORY_LIMIT = 500
SQLITE_BUSY_TIMEOUT = 30.0
ALERT_STATUSES = ("open", "reviewed", "dismissed")
# Ids are INTEGER columns: PostgreSQL refuses a larger number outright, SQLite finds nothing.
MAX_ID = 2**31 - 1
NAME_LENGTH = 200
# Ids per IN (...) list: old SQLite builds allow 999 parameters a statement.
IDS_PER_QUERY = 500

R = TypeVar("R")


def _known_id(value: int) -> bool:
    """Ids come from clients: out of the column's range means "no such row" on every engine."""
    return 1 <= value <= MAX_ID


def _clean(text: str, length: int | None = None) -> str:
    """Text every engine stores alike: no NUL (PostgreSQL refuses it), no lone surrogates
    (no engine can encode them), and names cut where PostgreSQL's VARCHAR would refuse them."""
    text = text.encode("utf-8", "replace").decode("utf-8").replace("\x00", "\ufffd")
    return text if length is None else text[:length]


class CodeInUse(ValueError):
    """The code is already registered (in this or another exam)."""


def _sqlite_pragmas(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
    cursor = dbapi_conn.cursor()
    _wal(cursor)
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _wal(cursor) -> None:  # type: ignore[no-untyped-def]
    """WAL is a property of the file, set once. Switching to it answers "locked" at once,
    without the busy timeout, while another connection opens the same new file: retry."""
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT
    while True:
        try:
            cursor.execute("PRAGMA journal_mode")
            mode = cursor.fetchone()[0]
            if str(mode).lower() not in ("wal", "memory"):
                cursor.execute("PRAGMA journal_mode=WAL")
            return
        except Exception as exc:  # the driver's OperationalError, wrapped or not
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


class Store:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._session = async_sessionmaker(engine, expire_on_commit=False)

    @classmethod
    async def open(cls, url: str, upgrade: bool = True) -> Store:
        """Connect and bring the schema to the code's revision (migrations, never create_all)."""
        parsed = make_url(url)
        if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        sqlite = parsed.get_backend_name() == "sqlite"
        # A thousand pages leaving at once queue their writes; wait rather than fail.
        connect_args = {"timeout": SQLITE_BUSY_TIMEOUT} if sqlite else {}
        engine = create_async_engine(url, pool_pre_ping=True, connect_args=connect_args)
        if sqlite:
            event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        if upgrade:
            try:
                await migrate.upgrade_engine(engine)
            except BaseException:
                await engine.dispose()
                raise
        return cls(engine)

    async def close(self) -> None:
        await self.engine.dispose()

    # Exams and codes

    async def create_exam(self, name: str = "") -> tuple[ExamRecord, str]:
        """A new exam and its proctor key; the key is returned once and kept only as a digest."""
        key = generate_key()
        exam = Exam(
            id=secrets.token_hex(6),
            name=_clean(name, NAME_LENGTH) or time.strftime("Exam %Y-%m-%d %H:%M"),
            key_digest=digest(key),
            created_at=time.time(),
        )
        async with self._session() as session, session.begin():
            session.add(exam)
        return ExamRecord(exam.id, exam.name, exam.created_at), key

    async def exam_by_key(self, key: str) -> ExamRecord | None:
        async with self._session() as session:
            exam = await session.scalar(select(Exam).where(Exam.key_digest == digest(key)))
        return None if exam is None else ExamRecord(exam.id, exam.name, exam.created_at)

    async def student(self, student_id: int) -> StudentRecord | None:
        if not _known_id(student_id):
            return None
        async with self._session() as session:
            row = await session.get(Student, student_id)
        return None if row is None else StudentRecord(row.id, row.exam_id, row.name)

    async def add_students(
        self, exam_id: str, names: Sequence[str]
    ) -> list[tuple[StudentRecord, str]]:
        """Generate a fresh code per name; returns each student with its code (shown once)."""
        now = time.time()
        created: list[tuple[Student, str]] = []
        async with self._session() as session, session.begin():
            for name in names:
                code = generate_code()
                row = Student(
                    exam_id=exam_id,
                    name=_clean(name, NAME_LENGTH),
                    code_digest=digest(normalize_code(code)),
                    created_at=now,
                )
                session.add(row)
                created.append((row, code))
        return [(StudentRecord(r.id, r.exam_id, r.name), code) for r, code in created]

    async def register_student(
        self, exam_id: str, name: str, normalized_code: str
    ) -> StudentRecord:
        """Register a code made elsewhere. Raises CodeInUse if any exam already has it."""
        name = _clean(name, NAME_LENGTH)
        row = Student(
            exam_id=exam_id,
            name=name,
            code_digest=digest(normalized_code),
            created_at=time.time(),
        )
        try:
            async with self._session() as session, session.begin():
                existing = await session.scalar(
                    select(Student).where(Student.code_digest == row.code_digest)
                )
                if existing is not None:
                    if existing.exam_id == exam_id:
                        existing.name = name
                        return StudentRecord(existing.id, existing.exam_id, existing.name)
                    raise CodeInUse("this code is already in use")
                session.add(row)
        except IntegrityError as exc:
            raise CodeInUse("this code is already in use") from exc
        return StudentRecord(row.id, row.exam_id, row.name)

    async def students_by_codes(self, normalized_codes: Iterable[str]) -> dict[str, StudentRecord]:
        by_digest = {digest(code): code for code in normalized_codes}
        if not by_digest:
            return {}
        async with self._session() as session:
            rows = await session.scalars(
                select(Student).where(Student.code_digest.in_(list(by_digest)))
            )
            return {by_digest[r.code_digest]: StudentRecord(r.id, r.exam_id, r.name) for r in rows}

    async def student_by_code(self, normalized_code: str) -> StudentRecord | None:
        return (await self.students_by_codes([normalized_code])).get(normalized_code)

    async def students_of_exam(self, exam_id: str) -> list[StudentRecord]:
        async with self._session() as session:
            rows = await session.scalars(
                select(Student).where(Student.exam_id == exam_id).order_by(Student.id)
            )
            return [StudentRecord(r.id, r.exam_id, r.name) for r in rows]

    # Presence

    async def record_event(self, student_id: int, kind: str, detail: str | None = None) -> None:
        async with self._session() as session, session.begin():
            session.add(
                StreamEvent(
                    student_id=student_id,
                    kind=kind,
                    at=time.time(),
                    detail=None if detail is None else _clean(detail, NAME_LENGTH),
                )
            )

    async def _latest(
        self,
        model: Any,
        at: Any,
        student_ids: Iterable[int],
        limit: int | None,
        record: Callable[[Any], R],
    ) -> dict[int, list[R]]:
        """The last `limit` rows (all with None) of each student, oldest first, in one query
        per IDS_PER_QUERY students: a monitor opening 500 students must not wait 1500 queries."""
        ids = list(dict.fromkeys(student_ids))
        out: dict[int, list[R]] = {i: [] for i in ids}
        order = (at, model.id)
        async with self._session() as session:
            for start in range(0, len(ids), IDS_PER_QUERY):
                chunk = ids[start : start + IDS_PER_QUERY]
                query = select(model).where(model.student_id.in_(chunk))
                if limit is not None:
                    rank = (
                        func.row_number()
                        .over(
                            partition_by=model.student_id,
                            order_by=[column.desc() for column in order],
                        )
                        .label("rank")
                    )
                    ranked = select(model.id, rank).where(model.student_id.in_(chunk)).subquery()
                    query = query.join(ranked, ranked.c.id == model.id).where(
                        ranked.c.rank <= limit
                    )
                for row in await session.scalars(query.order_by(*order)):
                    out[row.student_id].append(record(row))
        return out

    async def events_of(self, student_ids: Iterable[int]) -> dict[int, list[EventRecord]]:
        return await self._latest(
            StreamEvent,
            StreamEvent.at,
            student_ids,
            None,
            lambda r: EventRecord(r.id, r.student_id, r.kind, r.at, r.detail),
        )

    async def events(self, student_id: int) -> list[EventRecord]:
        return (await self.events_of([student_id]))[student_id]

    # Chat

    async def add_message(self, student_id: int, sender: str, text: str) -> MessageRecord:
        row = ChatMessage(student_id=student_id, sender=sender, text=_clean(text), at=time.time())
        async with self._session() as session, session.begin():
            session.add(row)
        return MessageRecord(row.id, row.student_id, row.sender, row.text, row.at)

    async def messages_of(
        self, student_ids: Iterable[int], limit: int | None = HISTORY_LIMIT
    ) -> dict[int, list[MessageRecord]]:
        return await self._latest(
            ChatMessage,
            ChatMessage.at,
            student_ids,
            limit,
            lambda r: MessageRecord(r.id, r.student_id, r.sender, r.text, r.at),
        )

    async def messages(
        self, student_id: int, limit: int | None = HISTORY_LIMIT
    ) -> list[MessageRecord]:
        return (await self.messages_of([student_id], limit))[student_id]

    # Attention

    async def add_attention(self, student_id: int, sender: str) -> AttentionRecord:
        row = AttentionRequest(student_id=student_id, sender=sender, at=time.time())
        async with self._session() as session, session.begin():
            session.add(row)
        return AttentionRecord(row.id, row.student_id, row.sender, row.at, None)

    async def resolve_attention(self, student_id: int, attention_id: int) -> bool:
        if not _known_id(attention_id):
            return False
        async with self._session() as session, session.begin():
            result = await session.execute(
                update(AttentionRequest)
                .where(
                    AttentionRequest.id == attention_id,
                    AttentionRequest.student_id == student_id,
                    AttentionRequest.resolved_at.is_(None),
                )
                .values(resolved_at=time.time())
            )
            return (result.rowcount or 0) > 0

    async def attention_of(
        self, student_ids: Iterable[int], limit: int | None = HISTORY_LIMIT
    ) -> dict[int, list[AttentionRecord]]:
        return await self._latest(
            AttentionRequest,
            AttentionRequest.at,
            student_ids,
            limit,
            lambda r: AttentionRecord(r.id, r.student_id, r.sender, r.at, r.resolved_at),
        )

    async def attention(
        self, student_id: int, limit: int | None = HISTORY_LIMIT
    ) -> list[AttentionRecord]:
        return (await self.attention_of([student_id], limit))[student_id]

    # Alerts

    @staticmethod
    def _alert(r: VoiceAlert) -> AlertRecord:
        return AlertRecord(
            r.id,
            r.student_id,
            r.type,
            r.started_at,
            r.ended_at,
            r.confidence,
            r.evidence,
            r.status,
            r.created_at,
            r.updated_at,
        )

    async def add_alert(
        self,
        student_id: int,
        type_: str,
        started_at: float,
        ended_at: float,
        confidence: float,
        evidence: str | None = None,
    ) -> AlertRecord:
        now = time.time()
        row = VoiceAlert(
            student_id=student_id,
            type=type_,
            started_at=started_at,
            ended_at=ended_at,
            confidence=confidence,
            evidence=evidence,
            status="open",
            created_at=now,
            updated_at=now,
        )
        async with self._session() as session, session.begin():
            session.add(row)
        return self._alert(row)

    async def extend_alert(
        self, alert_id: int, ended_at: float, confidence: float, evidence: str | None
    ) -> AlertRecord | None:
        """A repeat within the cooldown: the open alert grows instead of a new one."""
        if not _known_id(alert_id):
            return None
        async with self._session() as session, session.begin():
            row = await session.get(VoiceAlert, alert_id)
            if row is None:
                return None
            row.ended_at = max(row.ended_at, ended_at)
            row.confidence = max(row.confidence, confidence)
            if evidence:
                row.evidence = evidence
            row.updated_at = time.time()
            return self._alert(row)

    async def set_alert_status(
        self, student_id: int, alert_id: int, status: str
    ) -> AlertRecord | None:
        if status not in ALERT_STATUSES:
            raise ValueError(f"status must be one of {ALERT_STATUSES}")
        if not _known_id(alert_id):
            return None
        async with self._session() as session, session.begin():
            row = await session.get(VoiceAlert, alert_id)
            if row is None or row.student_id != student_id:
                return None
            row.status = status
            row.updated_at = time.time()
            return self._alert(row)

    async def alert(self, alert_id: int) -> AlertRecord | None:
        if not _known_id(alert_id):
            return None
        async with self._session() as session:
            row = await session.get(VoiceAlert, alert_id)
            return None if row is None else self._alert(row)

    async def alerts_of(
        self, student_ids: Iterable[int], limit: int | None = HISTORY_LIMIT
    ) -> dict[int, list[AlertRecord]]:
        return await self._latest(
            VoiceAlert, VoiceAlert.started_at, student_ids, limit, self._alert
        )

    async def alerts(self, student_id: int, limit: int | None = HISTORY_LIMIT) -> list[AlertRecord]:
        return (await self.alerts_of([student_id], limit))[student_id]
