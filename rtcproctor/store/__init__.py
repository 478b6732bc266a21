"""Persistence: exams, students, on/off-air events, chat and attention requests."""

from rtcproctor.store.records import (
    AlertRecord,
    AttentionRecord,
    EventRecord,
    ExamRecord,
    MessageRecord,
    StudentRecord,
)
from rtcproctor.store.store import CodeInUse, Store

__all__ = [
    "AlertRecord",
    "AttentionRecord",
    "CodeInUse",
    "EventRecord",
    "ExamRecord",
    "MessageRecord",
    "Store",
    "StudentRecord",
]
