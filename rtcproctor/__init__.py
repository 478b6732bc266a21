"""RTCProctor: self-hosted, real-time exam proctoring over WebRTC."""

__version__ = "0.1.0"
