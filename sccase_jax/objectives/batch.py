r"""The batch term: a penalty on each cell's similarity mass within its own batch.

With batch labels ``b`` (one integer per cell) and ``A[i, j] = 1`` where ``b_i = b_j``
(the diagonal included), scCASE with batch correction minimises

.. math::

    F_b = F + \mu \|A \circ Z\|_F^2 ,\qquad \mu = \beta \lambda ,

``F`` the scCASE (or scCASER) objective and ``beta`` the option ``batch_weight``.  The
term touches only Z: it adds ``2 mu A o Z`` to the Z gradient and ``mu <A o D, D>`` to the
curvature of the exact Z step, and nothing to the W and H steps.  At a fixed H its
minimiser over Z (with ``lam`` dominating the reconstruction, as at ``lam = 1e6``) is
``Z = (H^T H) / (1 + beta)`` within a batch and ``H^T H`` across batches: each cell's
neighbours of another batch gain weight ``1 + beta`` relative to those of its own.  The
authors' release (sccase 0.2.5, ``method="Correct batch effect"``) instead fits plain
scCASE and multiplies ``Z[i, j]`` afterwards by ``b / (a + b)``, ``a`` and ``b`` the mean
of column ``j`` of Z over the cells in and out of ``i``'s batch: outside the objective.

``A`` is never stored: it is formed from the label vector where it is used
(``b[:, None] == b[None, :]``, fused by XLA into the pass that needs it).
"""

from __future__ import annotations

import jax.numpy as jnp

from sccase_jax.objectives.sccase import sccase_loss

__all__ = ["batch_curvature", "batch_grad", "batch_move", "batch_penalty", "same_batch",
           "sccase_batch_loss"]


def same_batch(batch, cols=None):
    """``A`` (n x n, bool), or its columns ``cols``: the pairs of cells in one batch."""
    other = batch if cols is None else batch[cols]
    return batch[:, None] == other[None, :]


def batch_penalty(Z, batch, mu):
    r""":math:`\mu \|A \circ Z\|^2`."""
    return mu * jnp.sum(jnp.where(same_batch(batch), Z * Z, jnp.zeros((), Z.dtype)))


def batch_grad(Z, batch, mu, cols=None):
    """``2 mu A o Z`` (``Z`` the columns ``cols`` of the iterate when given)."""
    return 2.0 * mu * jnp.where(same_batch(batch, cols), Z, jnp.zeros((), Z.dtype))


def batch_move(dZ, batch, mu):
    """``mu A o dZ``: added to ``D + lam dZ``, the change of F along a move ``dZ`` is
    ``<dZ, D + lam dZ + mu A o dZ> + <dS, G dS>`` (the batch term is quadratic in Z)."""
    return mu * jnp.where(same_batch(batch), dZ, jnp.zeros((), dZ.dtype))


def batch_curvature(P, batch, mu, mask=None):
    """``mu <A o P, P>`` (on ``mask`` only, when given): the batch term's part of the
    curvature of F along a Z direction P."""
    A = same_batch(batch)
    if mask is not None:
        A = A & mask
    return mu * jnp.sum(jnp.where(A, P * P, jnp.zeros((), P.dtype)))


def sccase_batch_loss(X, Z, R, W, H, batch, *, lam, gamma1, gamma2, mu):
    """scCASE with the batch term, dense ``X`` (the reference the tests differentiate)."""
    return sccase_loss(X, Z, R, W, H, lam=lam, gamma1=gamma1, gamma2=gamma2) + batch_penalty(
        Z, batch, mu)
