"""Translate between the protocol's JSON (RTCIceServer, RTCIceCandidateInit) and aiortc objects."""

from __future__ import annotations

import logging
from typing import Any

from aiortc import RTCConfiguration, RTCIceCandidate, RTCIceServer, RTCSessionDescription
from aiortc.rtcconfiguration import RTCIceTransportPolicy
from aiortc.sdp import candidate_from_sdp

log = logging.getLogger(__name__)


def configuration(ice_servers: Any, policy: Any = None) -> RTCConfiguration:
    """What the server sent with `iceServers` and `iceTransportPolicy`, for aiortc.

    The list is always explicit, possibly empty: with `None` aiortc would fall back to
    a public STUN host. The policy is aiortc's enum (it does not take the string).
    """
    servers: list[RTCIceServer] = []
    if not isinstance(ice_servers, list):
        ice_servers = []
    for entry in ice_servers:
        if not isinstance(entry, dict) or not entry.get("urls"):
            log.warning("ignoring malformed ICE server %r", entry)
            continue
        servers.append(
            RTCIceServer(
                urls=entry["urls"],
                username=entry.get("username"),
                credential=entry.get("credential"),
            )
        )
    relay = policy == RTCIceTransportPolicy.RELAY.value
    return RTCConfiguration(
        iceServers=servers,
        iceTransportPolicy=RTCIceTransportPolicy.RELAY if relay else RTCIceTransportPolicy.ALL,
    )


def candidate_from_init(init: dict[str, Any] | None) -> RTCIceCandidate | None:
    """An RTCIceCandidateInit as browsers send it; `None` (or an empty line) ends the candidates."""
    if not init or not init.get("candidate"):
        return None
    line = str(init["candidate"])
    if line.startswith("candidate:"):
        line = line[len("candidate:") :]
    candidate = candidate_from_sdp(line)
    candidate.sdpMid = init.get("sdpMid")
    candidate.sdpMLineIndex = init.get("sdpMLineIndex")
    return candidate


def description_json(description: RTCSessionDescription) -> dict[str, str]:
    return {"type": description.type, "sdp": description.sdp}


def description_from_json(data: dict[str, Any]) -> RTCSessionDescription:
    return RTCSessionDescription(sdp=str(data["sdp"]), type=str(data["type"]))
