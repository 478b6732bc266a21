"""Check a TURN server the way WebRTC peers will use it: allocate, relay, and be refused.

Two allocations are made with the server's own short-lived credentials; one sends a
datagram to the other's relayed address through the server (which also proves the
relay may reach this server's own public address). Optionally a permission towards a
forbidden address (loopback, a private range) must be refused.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

from aioice import stun
from aioice.turn import TurnClientTcpProtocol, TurnClientUdpProtocol

PROBE = b"rtcproctor check-turn"


@dataclass(frozen=True)
class TurnUrl:
    secure: bool
    host: str
    port: int
    transport: str

    @classmethod
    def parse(cls, url: str) -> TurnUrl:
        scheme, _, rest = url.partition(":")
        if scheme not in ("turn", "turns"):
            raise ValueError(f"not a turn: or turns: URL: {url}")
        address, _, query = rest.partition("?")
        transport = parse_qs(query).get("transport", ["tcp" if scheme == "turns" else "udp"])[0]
        if address.startswith("["):
            host, _, port_text = address[1:].partition("]")
            port_text = port_text.lstrip(":")
        else:
            host, _, port_text = address.partition(":")
        port = int(port_text) if port_text else (5349 if scheme == "turns" else 3478)
        if transport not in ("udp", "tcp"):
            raise ValueError(f"unknown transport {transport!r} in {url}")
        return cls(scheme == "turns", host, port, transport)


@dataclass
class TurnReport:
    url: str
    ok: bool = False
    relayed: tuple[str, int] | None = None
    mapped: tuple[str, int] | None = None
    relay_roundtrip: bool = False
    refused: dict[str, bool] = field(default_factory=dict)
    error: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "ok": self.ok,
            "relayed": list(self.relayed) if self.relayed else None,
            "mapped": list(self.mapped) if self.mapped else None,
            "relay_roundtrip": self.relay_roundtrip,
            "refused": self.refused,
            "error": self.error,
        }


class _Inbox(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.received: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.received.put_nowait(data)


@dataclass
class _Allocation:
    protocol: TurnClientUdpProtocol | TurnClientTcpProtocol
    inbox: _Inbox
    relayed: tuple[str, int]

    async def close(self) -> None:
        try:
            await self.protocol.delete()
        finally:
            if self.protocol.transport is not None:
                self.protocol.transport.close()


async def _allocate(url: TurnUrl, username: str, password: str) -> _Allocation:
    loop = asyncio.get_running_loop()
    server = (url.host, url.port)
    options: dict[str, Any] = {
        "username": username,
        "password": password,
        "lifetime": 120,
        "channel_refresh_time": 300,
    }
    protocol: TurnClientUdpProtocol | TurnClientTcpProtocol
    if url.transport == "tcp":
        context = ssl.create_default_context() if url.secure else None
        _, protocol = await loop.create_connection(
            lambda: TurnClientTcpProtocol(server, **options), url.host, url.port, ssl=context
        )
    else:
        _, protocol = await loop.create_datagram_endpoint(
            lambda: TurnClientUdpProtocol(server, **options), remote_addr=server
        )
    try:
        relayed = await protocol.connect()
    except BaseException:
        protocol.transport.close()
        raise
    inbox = _Inbox()
    protocol.receiver = inbox
    return _Allocation(protocol, inbox, relayed)


async def permission_refused(
    url: TurnUrl, username: str, password: str, peer: tuple[str, int]
) -> bool:
    """Whether the server refuses to relay to `peer` (a 403 on CreatePermission/ChannelBind)."""
    allocation = await _allocate(url, username, password)
    try:
        await allocation.protocol.channel_bind(0x4000, peer)
    except stun.TransactionFailed as exc:
        return exc.response.attributes.get("ERROR-CODE", (0, ""))[0] == 403
    finally:
        await allocation.close()
    return False


async def check_url(
    raw: str,
    username: str,
    password: str,
    forbidden: tuple[tuple[str, int], ...] = (),
    within: float = 10.0,
) -> TurnReport:
    """Allocate twice on `raw`, relay one datagram between the allocations, try `forbidden`."""
    report = TurnReport(raw)
    try:
        url = TurnUrl.parse(raw)
        async with asyncio.timeout(within):
            first = await _allocate(url, username, password)
            second = await _allocate(url, username, password)
            try:
                report.relayed = first.relayed
                report.mapped = first.protocol.mapped_address
                # The receiver must permit the sender's relay before data gets through;
                # sending towards it binds a channel (and so a permission) with bookkeeping.
                await second.protocol.send_data(b"", first.relayed)
                for _ in range(5):
                    await first.protocol.send_data(PROBE, second.relayed)
                    try:
                        async with asyncio.timeout(1):
                            report.relay_roundtrip = await second.inbox.received.get() == PROBE
                        break
                    except TimeoutError:
                        continue
            finally:
                await first.close()
                await second.close()
            for peer in forbidden:
                refused = await permission_refused(url, username, password, peer)
                report.refused[f"{peer[0]}:{peer[1]}"] = refused
        report.ok = report.relay_roundtrip and all(report.refused.values())
    except stun.TransactionFailed as exc:
        code, reason = exc.response.attributes.get("ERROR-CODE", (0, "unknown"))
        report.error = f"TURN error {code} {reason}"
    except (OSError, ValueError, ConnectionError, TimeoutError) as exc:
        report.error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return report
