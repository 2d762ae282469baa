r"""The sequencing-depth term of the authors' release, made exact.

sccase 0.2.5's ``method="Correct seq depth"`` replaces the similarity term by

.. math::

    \lambda \|Z - P H^\top H\|_F^2 ,\qquad P = \mathrm{diag}(p),\quad
    p_i = d_i / \mathrm{median}(d),

``d_i`` the reads of cell ``i`` over the kept peaks.  ``Z[i, j]`` is the weight of cell
``i`` in the profile of cell ``j``, so the target of column ``j`` weights each neighbour by
its relative depth.  Exact gradients (with ``Q = Z - P H^T H``):

.. math::

    \partial_Z = 2 [X^\top (X S - W H)] \circ R + 2 \lambda Q ,\qquad
    \partial_H = -2 W^\top X S + 2 W^\top W H - 2 \lambda H (Q^\top P + P Q) + 2 \gamma_2 H .

The release takes its Z step by backtracking from 1 and its H step by backtracking (its
H gradient is this one expanded); here the Z step keeps the exact quadratic step (the term
changes only the constant target, not the curvature in Z) and the H step its guarded
backtracking with the exact change of F (:func:`sccase_jax.solver.wh_steps.h_move`).
"""

from __future__ import annotations

import numpy as np

from sccase_jax.objectives.sccase import _sq
from sccase_jax.validate import InputError

__all__ = ["relative_depth", "sccase_depth_grads", "sccase_depth_loss"]


def relative_depth(counts_per_cell) -> np.ndarray:
    """``p = d / median(d)`` (float64) of the reads ``d`` of each cell; every cell needs reads."""
    d = np.asarray(counts_per_cell, np.float64).ravel()
    if d.size == 0 or not np.all(np.isfinite(d)) or d.min() <= 0:
        raise InputError("correct_depth needs every cell to have reads in the kept peaks "
                         "(drop empty cells with drop_empty_cells=True)")
    return d / np.median(d)


def sccase_depth_loss(X, Z, R, W, H, p, *, lam, gamma1, gamma2):
    """scCASE with the depth term, dense ``X`` (the reference the tests differentiate)."""
    S = Z * R.astype(Z.dtype)
    return (_sq(X @ S - W @ H) + lam * _sq(Z - p[:, None] * (H.T @ H)) + gamma1 * _sq(W)
            + gamma2 * _sq(H))


def sccase_depth_grads(X, Z, R, W, H, p, *, lam, gamma1, gamma2):
    """``(dF/dW, dF/dH, dF/dZ)`` of :func:`sccase_depth_loss`."""
    Rf = R.astype(Z.dtype)
    resid = W @ H - X @ (Z * Rf)
    Q = Z - p[:, None] * (H.T @ H)
    PQ = p[:, None] * Q
    dW = 2.0 * resid @ H.T + 2.0 * gamma1 * W
    dH = 2.0 * W.T @ resid - 2.0 * lam * H @ (PQ + PQ.T) + 2.0 * gamma2 * H
    dZ = -2.0 * (X.T @ resid) * Rf + 2.0 * lam * Q
    return dW, dH, dZ
