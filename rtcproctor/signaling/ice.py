"""The ICE servers handed to pages and to the server's own peers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class IceServers:
    stun_urls: tuple[str, ...] = ()

    def for_client(self) -> list[dict[str, Any]]:
        """An explicit list, possibly empty: no public STUN host is ever implied."""
        return [{"urls": list(self.stun_urls)}] if self.stun_urls else []
