r"""Analytic gradients (paper Eq. 5 and their masked scCASER forms).

Direct forms (dense ``X``), used as the documented reference and checked against
:func:`jax.grad` of :mod:`sccase_jax.losses` in the tests:

.. math::

    \partial_W F &= 2 (W H - X S) H^\top + 2 \gamma_1 W \\
    \partial_H F &= -2 W^\top X S + 2 W^\top W H - 2 \lambda H (Q + Q^\top) + 2 \gamma_2 H \\
    \partial_Z F &= 2 [X^\top (X S - W H)] \circ R + 2 \lambda Q

with :math:`Q = Z - H^\top H`.  Writing the H gradient through ``Q`` is the same as the
paper's :math:`-2\lambda H (Z + Z^\top) + 4 \lambda H H^\top H` but avoids subtracting two
numbers of size ``lam`` that nearly cancel once ``Z`` is close to ``H^T H``.

The ``*_gram`` forms are what the solver uses: they take ``GS = G S``, ``B = W^T X``,
``E = X S H^T`` and never form an m x n array.
"""

from __future__ import annotations

import jax.numpy as jnp

from sccase_jax.ops import masked, minus_outer

__all__ = [
    "grad_h_gram",
    "grad_w_gram",
    "grad_z_gram",
    "sccase_grads",
    "sccaser_grads",
]


def sccase_grads(X, Z, R, W, H, *, lam, gamma1, gamma2):
    """``(dF/dW, dF/dH, dF/dZ)`` of :func:`sccase_jax.losses.sccase_loss`."""
    Rf = R.astype(Z.dtype)
    S = Z * Rf
    resid = W @ H - X @ S  # m x n: this reference form is for small, dense inputs
    Q = Z - H.T @ H
    dW = 2.0 * resid @ H.T + 2.0 * gamma1 * W
    dH = 2.0 * W.T @ resid - 2.0 * lam * H @ (Q + Q.T) + 2.0 * gamma2 * H
    dZ = -2.0 * (X.T @ resid) * Rf + 2.0 * lam * Q
    return dW, dH, dZ


def sccaser_grads(X, Z, R, W1, W2, H, P, M, N, *, lam, gamma1, gamma2, alpha):
    """``(dF/dW1, dF/dW2, dF/dH, dF/dZ)`` of :func:`sccase_jax.losses.sccaser_loss`."""
    Wm = M * W1 + N * W2
    dWm, dH, dZ = sccase_grads(X, Z, R, Wm, H, lam=lam, gamma1=gamma1, gamma2=gamma2)
    dW1 = M * dWm + 2.0 * alpha * M * (M * W1 - P)
    dW2 = N * dWm
    return dW1, dW2, dH, dZ


def grad_z_gram(GS, B, H, Q, R, lam):
    """``dF/dZ = 2 (G S - B^T H) o R + 2 lam Q``; ``R`` a boolean (or 0/1) mask."""
    return 2.0 * masked(minus_outer(GS, B, H), R) + 2.0 * lam * Q


def grad_w_gram(W, E, HHt, P, M, gamma1, alpha):
    """``dF/dW`` for the stacked loadings ``W = [W1 | W2]``; ``M`` is the k column mask.

    ``E = X S H^T``.  Restricted to the reference columns this is ``dF/dW1``, to the
    others ``dF/dW2`` (paper Eq. 14).
    """
    Mr = M[None, :]
    return 2.0 * (W @ HHt - E) + 2.0 * gamma1 * W + 2.0 * alpha * Mr * (W * Mr - P)


def grad_h_gram(BS, WtW, H, Q, lam, gamma2):
    """``dF/dH = -2 B S + 2 W^T W H - 2 lam H (Q + Q^T) + 2 gamma2 H``."""
    return -2.0 * BS + 2.0 * WtW @ H - 2.0 * lam * (H @ Q + H @ Q.T) + 2.0 * gamma2 * H
