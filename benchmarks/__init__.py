"""Benchmarks of the awpo_kernels ops against the baselines they replace.

`pytest benchmarks/ --benchmark-only` times every case with pytest-benchmark; `python -m benchmarks.report`
times them again, measures peak memory, and writes the markdown tables of `benchmarks/RESULTS.md`.
Both measure whatever the library's backends are when they run: they only call the public API.
"""
