"""The shadow proctor: a hidden, receive-only aiortc peer per live student that listens.

It sits between signaling (above: it is asked to answer offers) and the voice
detector (below: it feeds it 16 kHz mono samples and reports what it found).
"""

from rtcproctor.shadow.peer import ShadowPeer
from rtcproctor.shadow.proctor import ShadowAlert, ShadowProctor, live_worker

__all__ = ["ShadowAlert", "ShadowPeer", "ShadowProctor", "live_worker"]
