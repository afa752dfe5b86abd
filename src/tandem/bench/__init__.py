"""Benchmarks: graders, the code sandbox."""
