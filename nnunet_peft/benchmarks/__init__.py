"""Benchmarks that run as modules of the package (their scripts under scripts/ are thin entry points)."""
