"""The ICE servers handed to pages and to the server's own peers.

TURN credentials follow the TURN REST API that coturn's `use-auth-secret` checks:
username `"<expiry unix time>:<id>"`, password `base64(HMAC-SHA1(secret, username))`.
They are minted per client and expire, so a leaked page config is useless the next day
and the shared secret never leaves the server.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from typing import Any

from rtcproctor.config import Settings

DEFAULT_TTL = 6 * 3600


def turn_password(secret: str, username: str) -> str:
    mac = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return base64.b64encode(mac).decode()


def turn_username(ttl: int, identity: str | None = None, now: float | None = None) -> str:
    expiry = int((time.time() if now is None else now) + ttl)
    return f"{expiry}:{identity or secrets.token_hex(6)}"


def credential_expiry(username: str) -> int:
    return int(username.split(":", 1)[0])


@dataclass(frozen=True)
class IceServers:
    stun_urls: tuple[str, ...] = ()
    turn_urls: tuple[str, ...] = ()
    turn_secret: str | None = None
    ttl: int = DEFAULT_TTL
    policy: str = "all"

    @classmethod
    def from_settings(cls, settings: Settings) -> IceServers:
        return cls(
            stun_urls=settings.stun_urls,
            turn_urls=settings.turn_urls,
            turn_secret=settings.turn_secret,
            ttl=settings.turn_ttl,
            policy=settings.ice_transport_policy,
        )

    @property
    def has_turn(self) -> bool:
        return bool(self.turn_secret and self.turn_urls)

    def rtc_configuration(self, identity: str | None = None) -> dict[str, Any]:
        """What a page passes to `new RTCPeerConnection(...)`."""
        return {
            "iceServers": self.for_client(identity),
            "iceTransportPolicy": self.policy,
            "ttl": self.ttl,
        }

    def for_client(self, identity: str | None = None) -> list[dict[str, Any]]:
        """An explicit list, possibly empty: no public STUN host is ever implied."""
        servers: list[dict[str, Any]] = []
        if self.stun_urls:
            servers.append({"urls": list(self.stun_urls)})
        if self.has_turn:
            assert self.turn_secret is not None
            username = turn_username(self.ttl, identity)
            servers.append(
                {
                    "urls": list(self.turn_urls),
                    "username": username,
                    "credential": turn_password(self.turn_secret, username),
                }
            )
        return servers
