"""Benchmarks: figures printed side by side with baselines run in the same process."""
