"""Benchmarks and reference implementations; never imported by the library (style guide §15)."""
