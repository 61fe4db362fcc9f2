"""Benchmarks and reference implementations; never imported by the library (docs/development.md)."""
