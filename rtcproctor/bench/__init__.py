"""Benchmarks that print figures (medians, percentiles, the machine's core count)."""
