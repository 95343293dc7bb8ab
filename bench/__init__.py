"""Benchmarks, each run as `python -m bench NAME [--quick]`; kept apart from the tests."""
