"""Benchmarks of issue 8: one command per figure, results recorded in docs/benchmarks.md."""
