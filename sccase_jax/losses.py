r"""The scCASE and scCASER objectives as pure functions.

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
"""

from __future__ import annotations

import jax.numpy as jnp

from sccase_jax.ops import inner

__all__ = [
    "gram_loss",
    "reconstruction_gram",
    "sccase_loss",
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


def similarity_term(Z, H):
    r""":math:`\|Z - H^\top H\|^2`, computed directly (the expanded form cancels badly)."""
    Q = Z - H.T @ H
    return inner(Q, Q)


def gram_loss(S, GS, B, W, H, Z, P, M, hp, similarity=None):
    """The objective in Gram form; ``M`` is the length-k reference column mask.

    ``similarity``, when given, is ``||Z - H^T H||^2`` already known to the caller
    (the solver has it from its H step) and replaces :func:`similarity_term`.
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
