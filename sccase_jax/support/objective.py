r"""scCASE with Z restricted to a fixed support per cell: the objective and its gradients.

Z is kept in fixed-degree ELL form: column ``j`` of Z (the weights of the cells in the
enhanced profile of cell ``j``) is non-zero only on ``d`` cells ``S_j = idx[j, :]``
(distinct, ``idx[j, 0] = j``), with values ``V[j, s] = Z[idx[j, s], j]``.  The mask R is
restricted the same way (``mask[j, s] = R[idx[j, s], j]``), ``S = Z o R`` is ``V o mask``.

The objective is the paper's Eq. 2 with Z constrained to the support, computed exactly
without any n x n array:

* ``||X S - W H||^2 = sum_j s_j^T L_j s_j - 2 sum_j s_j . c_j + <W^T W, H H^T>`` with the
  local Gram blocks ``L_j = X_{S_j}^T X_{S_j}`` (n x d x d, formed once on the host:
  :mod:`sccase_jax.support.build`) and ``c_j[s] = (W^T X)[:, idx[j, s]] . h_j``.
* ``||Z - H^T H||^2 = sum_{supp} (v - t)^2 + (||H H^T||^2 - sum_{supp} t^2)``, with
  ``t[j, s] = h_{idx[j, s]} . h_j``: the off-support part ``sum t^2`` outside the support
  is the whole ``||H^T H||^2 = ||H H^T||^2`` (k x k) less its on-support part.

Gradients (the restriction of paper Eq. 5 to the support):

* ``dF/dV = 2 (L_j s_j - c_j) o mask + 2 lam (V - T)``
* ``dF/dH = -2 B S + 2 W^T W H - 2 lam (H Z + H Z^T - 2 H H^T H) + 2 gamma2 H``
  (``H Z`` a gather of H's columns, ``H Z^T`` a segment sum over the support's entries)

``SupportData.off`` weighs the off-support part (1, the default: paper Eq. 2 restricted;
0: only the on-support part, so Z fits H^T H on the support and H is not pulled towards
``H^T H = 0`` off it; docs/atlas.md explains why that matters at the paper's lam).
* ``dF/dW`` as in the dense model with ``E = X S H^T`` (``S H^T`` a segment sum).

Memory: O(n d^2 + n d k + nnz(X) + (m + n) k).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp

from sccase_jax.objectives.sccase import grad_w_gram
from sccase_jax.ops import wt_x, x_matmul

__all__ = [
    "SupportData",
    "apply_ell",
    "apply_ell_t",
    "dense_z",
    "grad_h_support",
    "grad_v_support",
    "local_quad",
    "pair_products",
    "reconstruction_support",
    "similarity_support",
    "support_loss",
    "to_sparse",
]


class SupportData(NamedTuple):
    """Everything fixed during a support-restricted fit (cells on the leading axis)."""

    X: Any  # m x n, dense or BCOO
    idx: Any  # n x d int32: the support of each column of Z (idx[j, 0] = j)
    mask: Any  # n x d bool: R on the support
    L: Any  # n x d x d: local Gram blocks X_{S_j}^T X_{S_j}
    P: Any  # m x k reference loadings (zero outside the reference block)
    M: Any  # k, 1.0 on reference columns
    off: Any = 1.0  # weight of the off-support part of ||Z - H^T H||^2 (1: paper Eq. 2)


def _sq(A):
    return jnp.vdot(A, A)


def _gathered(A, idx):
    """``A[:, idx]`` as (n, d, k): the columns of ``A`` (k x n) on each cell's support."""
    return jnp.take(A.T, idx, axis=0)


def pair_products(A, Bm, idx):
    """``t[j, s] = A[:, idx[j, s]] . Bm[:, j]`` (n x d) for k x n ``A`` and ``Bm``."""
    return jnp.einsum("jsk,kj->js", _gathered(A, idx), Bm)


def apply_ell(A, V, idx):
    """``A Z`` (k x n): column j is ``sum_s V[j, s] A[:, idx[j, s]]``."""
    return jnp.einsum("jsk,js->kj", _gathered(A, idx), V)


def apply_ell_t(A, V, idx):
    """``A Z^T`` (k x n): column i is ``sum over (j, s) with idx[j, s] = i of V[j, s] A[:, j]``."""
    n = idx.shape[0]
    contrib = (V[:, :, None] * A.T[:, None, :]).reshape(-1, A.shape[0])
    return jax.ops.segment_sum(contrib, idx.reshape(-1), num_segments=n).T


def local_quad(L, A, Bm=None):
    """``sum_j a_j^T L_j b_j`` (``Bm`` defaults to ``A``), both n x d."""
    Bm = A if Bm is None else Bm
    return jnp.einsum("ja,jab,jb->", A, L, Bm)


def reconstruction_support(data: SupportData, S, B, W, H):
    """``||X S - W H||^2`` from the local Grams and ``B = W^T X``."""
    return (local_quad(data.L, S) - 2.0 * jnp.vdot(S, pair_products(B, H, data.idx))
            + jnp.vdot(W.T @ W, H @ H.T))


def similarity_support(V, H, idx, off=1.0):
    """``||Z - H^T H||^2`` for Z supported on ``idx``: on-support squares plus ``off`` times
    the exact off-support part ``||H H^T||^2 - sum_supp t^2`` (``off = 1``: the whole term;
    ``0``: its on-support part only)."""
    T = pair_products(H, H, idx)
    HHt = H @ H.T
    return _sq(V - T) + off * (_sq(HHt) - _sq(T))


def support_loss(data: SupportData, W, H, V, hp, B=None):
    """F (paper Eq. 2 with the scCASER term) with Z restricted to the support."""
    B = wt_x(data.X, W) if B is None else B
    S = jnp.where(data.mask, V, 0)
    return (reconstruction_support(data, S, B, W, H) + hp.lam * similarity_support(V, H, data.idx, data.off)
            + hp.gamma1 * _sq(W) + hp.gamma2 * _sq(H) + hp.alpha * _sq(data.P - W * data.M[None, :]))


def grad_v_support(data: SupportData, V, B, H, lam):
    """``dF/dV`` (n x d)."""
    S = jnp.where(data.mask, V, 0)
    LS = jnp.einsum("jab,jb->ja", data.L, S)
    R = jnp.where(data.mask, LS - pair_products(B, H, data.idx), 0)
    return 2.0 * R + 2.0 * lam * (V - pair_products(H, H, data.idx))


def grad_h_support(data: SupportData, V, B, W, H, lam, gamma2):
    """``dF/dH`` (k x n)."""
    S = jnp.where(data.mask, V, 0)
    BS = apply_ell(B, S, data.idx)
    # sim = sum_supp (v^2 - 2 v t + (1 - off) t^2) + off ||H H^T||^2
    U = V - (1.0 - data.off) * pair_products(H, H, data.idx)
    HU = apply_ell(H, U, data.idx) + apply_ell_t(H, U, data.idx)
    return (-2.0 * BS + 2.0 * (W.T @ W) @ H - 2.0 * lam * (HU - 2.0 * data.off * (H @ H.T) @ H)
            + 2.0 * gamma2 * H)


def grad_w_support(data: SupportData, V, W, H, hp):
    """``dF/dW`` (m x k)."""
    S = jnp.where(data.mask, V, 0)
    E = x_matmul(data.X, apply_ell_t(H, S, data.idx).T)
    return grad_w_gram(W, E, H @ H.T, data.P, data.M, hp.gamma1, hp.alpha)


# -- host conversions ------------------------------------------------------------------------

def to_sparse(V, idx, n: int | None = None) -> sp.csc_matrix:
    """Z (cells x cells, CSC) from its ELL values and support."""
    V, idx = np.array(V), np.array(idx)
    n = idx.shape[0] if n is None else n
    d = idx.shape[1]
    indptr = np.arange(0, n * d + 1, d)
    Z = sp.csc_matrix((V.ravel(), idx.ravel(), indptr), shape=(n, n))
    Z.eliminate_zeros()
    return Z


def dense_z(V, idx):
    """Dense n x n Z of ELL values (tests and small problems only)."""
    n = idx.shape[0]
    cols = jnp.broadcast_to(jnp.arange(n)[:, None], idx.shape)
    return jnp.zeros((n, n), V.dtype).at[idx, cols].set(V)
