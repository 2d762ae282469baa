"""One-off evidence for decisions already taken (experiments/README.md, "Archive").

Run from the repository root as ``python -m experiments.archive.NAME``.
"""
