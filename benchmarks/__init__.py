"""Benchmarks (`python -m benchmarks.<name>`); each writes its section of benchmarks/results.md."""
