"""Headless aiortc students and proctors that speak the same protocol as the pages."""
