"""Helpers shared by every aiortc peer the project runs (simulators, shadow proctor)."""
