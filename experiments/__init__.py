"""Experiments behind docs/performance.md, docs/results.md and docs/reference.md.

Run each from the repository root as a module, ``python -m experiments.NAME``; the index
is experiments/README.md.
"""
