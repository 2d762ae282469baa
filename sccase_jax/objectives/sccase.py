r"""The scCASE and scCASER objectives and their analytic gradients, as pure functions.

scCASE (paper Eq. 2), with :math:`S = Z \circ R`:

.. math::

    F = \|X S - W H\|_F^2 + \lambda \|Z - H^\top H\|_F^2
        + \gamma_1 \|W\|_F^2 + \gamma_2 \|H\|_F^2

scCASER (paper Eq. 13) splits the loadings into a reference block and a free block with
column masks ``M`` and ``N = 1 - M`` (``W_m = M \circ W_1 + N \circ W_2``) and adds
:math:`\alpha \|P - M \circ W_1\|_F^2`.

The ``*_loss`` functions take a dense ``X`` and are the reference definitions (tests
differentiate them with :func:`jax.grad`).  :func:`gram_loss` is the form the solver
evaluates: it never forms an m x n array, using ``GS = G S`` (``G = X^T X``),
``B = W^T X`` and

.. math::

    \|X S - W H\|^2 = \langle S, G S\rangle - 2 \langle B S, H\rangle
                      + \langle W^\top W, H H^\top\rangle .

Gradients (paper Eq. 5 and their masked scCASER forms).

Direct forms (dense ``X``), used as the documented reference and checked against
:func:`jax.grad` of the ``*_loss`` functions in the tests:

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

from sccase_jax.objectives.batch import batch_penalty
from sccase_jax.ops import inner, masked, minus_outer

__all__ = [
    "grad_h_gram",
    "grad_w_gram",
    "grad_z_gram",
    "gram_loss",
    "reconstruction_gram",
    "sccase_batch_loss",
    "sccase_grads",
    "sccase_loss",
    "sccaser_grads",
    "sccaser_loss",
    "similarity_term",
]


def _sq(A):
    return jnp.vdot(A, A).real


def sccase_loss(X, Z, R, W, H, *, lam, gamma1, gamma2):
    """Paper Eq. 2 with a dense ``X`` (peaks x cells)."""
    S = Z * R.astype(Z.dtype)
    return (
        _sq(X @ S - W @ H)
        + lam * _sq(Z - H.T @ H)
        + gamma1 * _sq(W)
        + gamma2 * _sq(H)
    )


def sccaser_loss(X, Z, R, W1, W2, H, P, M, N, *, lam, gamma1, gamma2, alpha):
    """Paper Eq. 13 (masked form); ``W1, W2, P, M, N`` are all peaks x k."""
    Wm = M * W1 + N * W2
    return sccase_loss(X, Z, R, Wm, H, lam=lam, gamma1=gamma1, gamma2=gamma2) + alpha * _sq(
        P - M * W1
    )


def reconstruction_gram(S, GS, B, W, H):
    r""":math:`\|X S - W H\|^2` from ``GS = X^T X S`` and ``B = W^T X`` (no m x n array)."""
    return inner(S, GS) - 2.0 * jnp.vdot(B @ S, H) + jnp.vdot(W.T @ W, H @ H.T)


def similarity_term(Z, H, depth=None):
    r""":math:`\|Z - H^\top H\|^2`, computed directly (the expanded form cancels badly); with
    ``depth`` (n) the depth term's :math:`\|Z - \mathrm{diag}(p) H^\top H\|^2`."""
    Q = Z - H.T @ H if depth is None else Z - depth[:, None] * (H.T @ H)
    return inner(Q, Q)


def gram_loss(S, GS, B, W, H, Z, P, M, hp, similarity=None):
    """The objective of scCASE and scCASER in Gram form (the Gram-form solver's); ``M`` is
    the length-k reference column mask.

    ``similarity``, when given, is ``||Z - H^T H||^2`` already known to the caller
    (the solver has it from its H step) and replaces :func:`similarity_term`.  The batch
    and depth terms are :mod:`sccase_jax.terms` (``Batch``, ``Depth``).
    """
    if similarity is None:
        similarity = similarity_term(Z, H)
    return (
        reconstruction_gram(S, GS, B, W, H)
        + hp.lam * similarity
        + hp.gamma1 * _sq(W)
        + hp.gamma2 * _sq(H)
        + hp.alpha * _sq(P - W * M[None, :])
    )


def sccase_grads(X, Z, R, W, H, *, lam, gamma1, gamma2):
    """``(dF/dW, dF/dH, dF/dZ)`` of :func:`sccase_loss`."""
    Rf = R.astype(Z.dtype)
    S = Z * Rf
    resid = W @ H - X @ S  # m x n: this reference form is for small, dense inputs
    Q = Z - H.T @ H
    dW = 2.0 * resid @ H.T + 2.0 * gamma1 * W
    dH = 2.0 * W.T @ resid - 2.0 * lam * H @ (Q + Q.T) + 2.0 * gamma2 * H
    dZ = -2.0 * (X.T @ resid) * Rf + 2.0 * lam * Q
    return dW, dH, dZ


def sccaser_grads(X, Z, R, W1, W2, H, P, M, N, *, lam, gamma1, gamma2, alpha):
    """``(dF/dW1, dF/dW2, dF/dH, dF/dZ)`` of :func:`sccaser_loss`."""
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


def grad_h_gram(BS, WtW, H, Q, lam, gamma2, HQ=None):
    """``dF/dH = -2 B S + 2 W^T W H - 2 lam H (Q + Q^T) + 2 gamma2 H``; ``HQ = H Q`` when the
    caller has it already."""
    HQ = H @ Q if HQ is None else HQ
    return -2.0 * BS + 2.0 * WtW @ H - 2.0 * lam * (HQ + H @ Q.T) + 2.0 * gamma2 * H


def sccase_batch_loss(X, Z, R, W, H, Ob, *, lam, gamma1, gamma2, mu):
    """scCASE with the batch term, dense ``X`` (the reference the tests differentiate)."""
    return sccase_loss(X, Z, R, W, H, lam=lam, gamma1=gamma1, gamma2=gamma2) + batch_penalty(Z, Ob, mu)
