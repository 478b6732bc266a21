"""Persistence: exams, students, on/off-air events, chat and attention requests."""

from rtcproctor.store.records import (
    AttentionRecord,
    ExamRecord,
    MessageRecord,
    StudentRecord,
)
from rtcproctor.store.store import CodeInUse, Store

__all__ = [
    "AttentionRecord",
    "CodeInUse",
    "ExamRecord",
    "MessageRecord",
    "Store",
    "StudentRecord",
]
