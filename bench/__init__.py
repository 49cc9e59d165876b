"""Benchmarks; see bench/README.md for the commands and what they measure."""
