"""Benchmarks of kern-events against the raw drivers, printed as ratios measured side by side in one run.

``python -m benchmarks`` runs every subject (one module each, e.g. :mod:`benchmarks.append`); each
case runs in a fresh process. Absolute numbers on shared machines mean little; the ratios do.
"""
