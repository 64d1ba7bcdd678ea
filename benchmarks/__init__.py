"""Benchmarks of jaxsweep: stage throughput, whole sweeps, precision, cost growth.

Run them with ``make bench`` (or ``make bench-quick``); results land in ``benchmarks/results``.
"""
