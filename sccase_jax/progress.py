"""Host-side progress lines for long fits (fed by ``jax.debug.callback``)."""

from __future__ import annotations

import sys

import numpy as np

__all__ = ["report", "stage"]

_STATUS = {0: "", 1: "  converged", 2: "  iteration budget reached (max_iter)",
           3: "  non-finite F, stopped"}


def report(iteration, loss, rel_change, status) -> None:
    """Print one line per iteration to stderr; vmapped fits print the batch's range."""
    it = np.atleast_1d(np.asarray(iteration))
    F = np.atleast_1d(np.asarray(loss, dtype=float))
    rel = np.atleast_1d(np.asarray(rel_change, dtype=float))
    st = np.atleast_1d(np.asarray(status))
    if it.size == 1:
        msg = f"iter {int(it[0]):4d}  F = {F[0]:.6e}  rel. change = {rel[0]:.3e}{_STATUS.get(int(st[0]), '')}"
    else:
        msg = (
            f"iter {int(it.max()):4d}  batch of {it.size}: F in [{np.nanmin(F):.4e}, {np.nanmax(F):.4e}]"
            f"  running {int(np.sum(st == 0))}"
        )
    print(msg, file=sys.stderr, flush=True)


def stage(message: str) -> None:
    """One line on stderr for a stage before the iterations (the start can take minutes on
    large data: the K estimate, the Gram matrix, the NMF start, compiling the solver)."""
    print(message, file=sys.stderr, flush=True)
