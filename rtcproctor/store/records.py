"""Plain data handed out by the store, so callers never hold ORM objects."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ExamRecord:
    id: str
    name: str
    created_at: float


@dataclass(frozen=True)
class StudentRecord:
    id: int
    exam_id: str
    name: str


@dataclass(frozen=True)
class MessageRecord:
    id: int
    student_id: int
    sender: str
    text: str
    at: float


@dataclass(frozen=True)
class AttentionRecord:
    id: int
    student_id: int
    sender: str
    at: float
    resolved_at: float | None


@dataclass(frozen=True)
class EventRecord:
    id: int
    student_id: int
    kind: str
    at: float
    detail: str | None


@dataclass(frozen=True)
class AlertRecord:
    id: int
    student_id: int
    type: str
    started_at: float
    ended_at: float
    confidence: float
    evidence: str | None
    status: str
    created_at: float
    updated_at: float
