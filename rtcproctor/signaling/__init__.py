"""Signaling: pairs students with proctors over Socket.IO and relays between them."""

from rtcproctor.signaling.server import SignalingServer

__all__ = ["SignalingServer"]
