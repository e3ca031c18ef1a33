"""Benchmarks: run them as scripts (``python bench/delivery.py``); see bench/README.md."""
