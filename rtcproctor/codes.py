"""Stream codes and proctor keys: generation, normalisation, strength.

A stream code is a bearer secret (it lets a page go live as, or watch, a student), so
it must be unguessable: 15 symbols from a 31-symbol alphabet without look-alikes
(no 0/O, 1/I/L) carry ~74 bits. Codes are grouped by 5 for reading aloud.
"""

from __future__ import annotations

import hashlib
import math
import re
import secrets

ALPHABET = "23456789ABCDEFGHJKMNPQRSTUVWXYZ"
CODE_LENGTH = 15
GROUP = 5
MIN_BITS = 60
MAX_CODE_LENGTH = 64

_SEPARATORS = re.compile(r"[\s\-_.]+")
_VALID = re.compile(r"^[A-Z0-9]+$")


class CodeError(ValueError):
    """A code that is malformed or too weak to be a secret."""


def generate_code() -> str:
    raw = "".join(secrets.choice(ALPHABET) for _ in range(CODE_LENGTH))
    return format_code(raw)


def format_code(code: str) -> str:
    raw = normalize_code(code)
    return "-".join(raw[i : i + GROUP] for i in range(0, len(raw), GROUP))


def normalize_code(code: str) -> str:
    """Upper-case and drop separators, so `k7qm4 xh9td-2rfwn` matches `K7QM4-XH9TD-2RFWN`."""
    if not isinstance(code, str):
        raise CodeError("a code must be text")
    if len(code) > MAX_CODE_LENGTH:
        raise CodeError(f"a code has at most {MAX_CODE_LENGTH} characters")
    raw = _SEPARATORS.sub("", code).upper()
    if not raw:
        raise CodeError("the code is empty")
    if not _VALID.match(raw):
        raise CodeError("a code has only letters and digits")
    return raw


def code_bits(code: str) -> float:
    """Entropy a random code of this length and symbol class would carry."""
    raw = normalize_code(code)
    if raw.isdigit():
        symbols = 10
    elif raw.isalpha():
        symbols = 26
    else:
        symbols = 36
    return len(raw) * math.log2(symbols)


def check_external_code(code: str) -> str:
    """Accept a code made elsewhere only if it is long and varied enough to be secret."""
    raw = normalize_code(code)
    if code_bits(raw) < MIN_BITS:
        raise CodeError(
            f"too short to be secret: a code needs at least {MIN_BITS} bits "
            "(for example 12 letters and digits, or 19 digits)"
        )
    if len(set(raw)) < 6:
        raise CodeError("too repetitive to be secret")
    return raw


def generate_key() -> str:
    """A proctor key: 128 random bits, URL-safe, never starting with "-": one key in 64
    did, and a command line then read `--key -Xyz…` as an option (`rtcproctor codes`
    and `report` exited with a usage error)."""
    while True:
        key = secrets.token_urlsafe(16)
        if not key.startswith("-"):
            return key


def digest(secret: str) -> str:
    """What the database keeps instead of a code or key."""
    return hashlib.sha256(secret.encode()).hexdigest()
