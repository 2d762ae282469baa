r"""The batch term: each column of Z may not favour one batch (between-batch variance).

``Z[:, j]`` holds the weights of every cell in the enhanced profile of cell ``j``.  With
the batch means of a column, ``m_c[j] = mean of Z[i, j] over the cells i of batch c``, and
its overall mean ``m[j]``, the batch term is the between-batch variance of every column,

.. math::

    \mu \|A Z\|_F^2 = \mu \sum_j \sum_c n_c (m_c[j] - m[j])^2 ,\qquad
    A = C - J ,\quad \mu = \beta \lambda ,

``C`` the projection onto vectors constant on each batch (``(C v)_i`` = mean of ``v`` over
``i``'s batch), ``J`` onto constant vectors (``A`` is an orthogonal projection: symmetric,
``A^2 = A``) and ``beta`` the option ``batch_weight``.  It is zero exactly when every cell
gives each batch the same mean weight, which is what the authors' release (sccase 0.2.5,
``method="Correct batch effect"``) imposes after the fit: it multiplies the rows of batch
``c`` in column ``j`` by ``b / (a + b)`` (``a``, ``b`` the column's mean in and out of
``c``), which for two batches makes the two means equal.  Here the condition is part of
the objective, so W and H see it.  The term touches only Z: it adds ``2 mu A Z`` to the
Z gradient and ``mu ||A D||^2`` to the curvature of the exact Z step; the W and H steps are
unchanged.  At a fixed H (``lam`` dominating, as at ``lam = 1e6``) its minimiser is
``Z = H^T H - beta / (1 + beta) A H^T H``: the between-batch part of each column shrunk by
``1 / (1 + beta)``.

The batches enter as a one-hot matrix ``Ob`` (n x B, float): ``C Z = Ob diag(1/n_c) Ob^T Z``
costs thin products only (B x n x n), and no n x n matrix of the batches is ever formed.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

__all__ = ["batch_penalty", "one_hot"]


def one_hot(codes, dtype=np.float64) -> np.ndarray:
    """``Ob`` (n x B): ``Ob[i, c] = 1`` where cell ``i`` is in batch ``c`` (codes 0..B-1)."""
    codes = np.asarray(codes)
    return (codes[:, None] == np.arange(codes.max() + 1)[None, :]).astype(dtype)


def _means(Z, Ob):
    """``(batch means B x c, their sizes B, overall mean 1 x c)`` of the columns of ``Z``."""
    counts = jnp.sum(Ob, axis=0)
    means = (Ob.T @ Z) / counts[:, None]
    return means, counts, jnp.mean(Z, axis=0, keepdims=True)


def batch_penalty(Z, Ob, mu):
    r""":math:`\mu \|A Z\|^2 = \mu \sum_c n_c \|m_c - m\|^2` (thin products only)."""
    means, counts, mean = _means(Z, Ob)
    return mu * jnp.sum(counts[:, None] * (means - mean) ** 2)
