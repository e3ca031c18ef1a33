"""Benchmarks: run each as a module, ``python -m bench.NAME``; see bench/README.md."""
