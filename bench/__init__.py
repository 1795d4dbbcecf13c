"""Benchmarks: `make bench` runs them and prints figures beside baselines measured in the same run."""
