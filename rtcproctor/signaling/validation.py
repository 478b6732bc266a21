"""Checks for every field a client sends; a failure becomes an explicit error acknowledgement."""

from __future__ import annotations

from typing import Any

MAX_NAME = 120
MAX_CHAT = 2000
MAX_SDP = 32 * 1024
MAX_CANDIDATE = 1024
MAX_CODES = 500


class Rejected(Exception):
    """An answer to the client that its request cannot be served, and why."""

    def __init__(self, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.extra = extra

    def as_ack(self) -> dict[str, Any]:
        return {"ok": False, "error": {"code": self.code, "message": self.message}, **self.extra}

    def as_error(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


def invalid(message: str) -> Rejected:
    return Rejected("invalid", message)


def payload(data: Any) -> dict[str, Any]:
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise invalid("the message must be a JSON object")
    return data


def text(
    data: dict[str, Any],
    field: str,
    *,
    max_len: int,
    min_len: int = 1,
    strip: bool = True,
    required: bool = True,
) -> str | None:
    value = data.get(field)
    if value is None:
        if required:
            raise invalid(f"'{field}' is required")
        return None
    if not isinstance(value, str):
        raise invalid(f"'{field}' must be a string")
    if len(value) > max_len:
        raise Rejected("too_large", f"'{field}' is longer than {max_len} characters")
    if strip:
        value = value.strip()
    if len(value) < min_len:
        raise invalid(f"'{field}' is empty" if min_len == 1 else f"'{field}' is too short")
    return value


def boolean(data: dict[str, Any], field: str) -> bool:
    value = data.get(field)
    if not isinstance(value, bool):
        raise invalid(f"'{field}' must be true or false")
    return value


def integer(data: dict[str, Any], field: str) -> int:
    value = data.get(field)
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid(f"'{field}' must be an integer")
    return value


def text_list(data: dict[str, Any], field: str, *, max_items: int, max_len: int) -> list[str]:
    value = data.get(field)
    if not isinstance(value, list):
        raise invalid(f"'{field}' must be a list")
    if len(value) > max_items:
        raise Rejected("too_large", f"'{field}' has more than {max_items} entries")
    for item in value:
        if not isinstance(item, str):
            raise invalid(f"every entry of '{field}' must be a string")
        if len(item) > max_len:
            raise Rejected("too_large", f"an entry of '{field}' is longer than {max_len}")
    return value


def description(data: dict[str, Any], allowed_type: str) -> dict[str, str] | None:
    """An RTCSessionDescriptionInit; the sender's role fixes whether it is an offer or answer."""
    if "description" not in data or data["description"] is None:
        return None
    desc = data["description"]
    if not isinstance(desc, dict):
        raise invalid("'description' must be an object")
    kind = desc.get("type")
    if kind != allowed_type:
        raise invalid(f"'description.type' must be '{allowed_type}' from this side")
    sdp = desc.get("sdp")
    if not isinstance(sdp, str) or not sdp.startswith("v=0"):
        raise invalid("'description.sdp' must be an SDP string")
    if len(sdp) > MAX_SDP:
        raise Rejected("too_large", f"'description.sdp' is longer than {MAX_SDP} characters")
    return {"type": kind, "sdp": sdp}


def candidate(data: dict[str, Any]) -> tuple[bool, dict[str, Any] | None]:
    """(present, RTCIceCandidateInit or None for end-of-candidates)."""
    if "candidate" not in data:
        return False, None
    cand = data["candidate"]
    if cand is None:
        return True, None
    if not isinstance(cand, dict):
        raise invalid("'candidate' must be an object or null")
    line = cand.get("candidate")
    if not isinstance(line, str) or len(line) > MAX_CANDIDATE:
        raise invalid("'candidate.candidate' must be a string of at most 1024 characters")
    mid = cand.get("sdpMid")
    if mid is not None and (not isinstance(mid, str) or len(mid) > 32):
        raise invalid("'candidate.sdpMid' must be a short string or null")
    index = cand.get("sdpMLineIndex")
    if index is not None and (isinstance(index, bool) or not isinstance(index, int)):
        raise invalid("'candidate.sdpMLineIndex' must be an integer or null")
    if index is not None and not 0 <= index < 64:
        raise invalid("'candidate.sdpMLineIndex' is out of range")
    return True, {"candidate": line, "sdpMid": mid, "sdpMLineIndex": index}
