"""The HTTP side: pages, static files, the JSON API and the Socket.IO endpoint."""

from rtcproctor.web.app import create_app

__all__ = ["create_app"]
