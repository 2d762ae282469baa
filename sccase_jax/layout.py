r"""Where Z lives: its layout, a pytree that answers the few questions the objective asks.

In the spirit of ott-jax's ``Geometry`` (docs STYLE §8), the loss terms
(:mod:`sccase_jax.terms`) never touch an n x n matrix directly: they ask Z's layout for

* ``masked(Z)``: ``S = Z o R`` (R the dropout mask, stored in the same layout);
* ``gram(S)``: ``X^T X S`` where Z is stored (dense ``G S``; on a support ``L_j s_j``);
* ``quad(S, T)``: ``<S, X^T X T>``, so ``quad(S) = ||X S||^2`` and the data term's
  curvature along a direction D is ``quad(masked(D))`` (:meth:`curvature`);
* ``pairs(A, Bm)``: ``A^T Bm`` on the layout (``pairs(H, H)`` is ``H^T H`` where Z lives);
* ``apply(A, Z)`` / ``apply_t(A, Z)``: ``A Z`` and ``A Z^T`` (k x n; on a support a gather
  and a segment sum);
* ``gap_sq(Z, A, Bm)``: ``||Z - A^T Bm||^2`` over every pair of cells (the similarity term);
* ``gather(Z)``, ``to_dense(Z)``, ``to_host(Z)``: from and to a dense n x n Z, and Z on the
  host (a NumPy array, or scipy CSC for a support);
* ``shard(mesh)``: the layout placed on a cells mesh (:func:`shard` places a whole fit).

Two layouts:

``DenseLayout(R, G)``
    Z is the n x n array; ``R`` the n x n boolean mask, ``G = X^T X``.
``SupportLayout(idx, mask, L, off)``
    Z is stored as ``V`` (n x d, ELL): ``V[j, s] = Z[idx[j, s], j]`` on the candidate set
    ``idx[j]`` of cell j (``idx[j, 0] = j``, distinct), ``mask[j, s] = R[idx[j, s], j]``,
    ``L[j] = X_{S_j}^T X_{S_j}`` the local Gram blocks (formed on the host from a sparse X
    by :mod:`sccase_jax.support.build`).  Its kernels (:func:`pair_products`,
    :func:`apply_ell`, :func:`apply_ell_t`, :func:`local_quad`) are gathers and segment
    sums over the support's entries: O(n d^2 + n d k) work, no n x n array.

The on-support / off-support convention: Z is zero off the support. Every value on a support
layout is then the dense value of that dense Z, except the part of ``||Z - A^T Bm||^2`` off
the support, ``sum_off (A^T Bm)^2``, which is weighed by ``off``: ``off = 1`` is the dense
value exactly (paper Eq. 2 with Z constrained to the support); ``off = 0``
(``off_support="drop"``, docs/atlas.md) keeps the on-support part only. A dense layout has
no off-support part.

Both are ``NamedTuple`` pytrees: they pass through ``jit`` and ``vmap`` as arguments.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp
from jax.experimental import sparse as jsparse
from jax.sharding import PartitionSpec

from sccase_jax.ops import inner, minus_outer
from sccase_jax.sharding import AXIS, place

__all__ = ["DenseLayout", "SupportLayout", "apply_ell", "apply_ell_t", "dense_z", "full_support",
           "gap_sq_higher", "local_grams", "local_quad", "pair_products", "shard", "to_sparse"]


def _sq(A):
    return jnp.vdot(A, A)


class DenseLayout(NamedTuple):
    """Z as a dense n x n array; ``R`` (n x n bool) the mask, ``G = X^T X`` (n x n)."""

    R: Any
    G: Any

    @classmethod
    def create(cls, X, R) -> DenseLayout:
        """The layout of a dense X (peaks x cells) and mask R: forms ``G = X^T X``."""
        X = jnp.asarray(X)
        return cls(jnp.asarray(R, bool), X.T @ X)

    @property
    def n_cells(self) -> int:
        return self.R.shape[0]

    def masked(self, Z):
        return jnp.where(self.R, Z, jnp.zeros((), Z.dtype))

    def gram(self, S):
        return self.G @ S

    def quad(self, S, T=None):
        # ops.inner, not vdot: XLA:CPU would fuse a plain reduction into the product and
        # pull it off the fast matmul path (2.5x slower at 2,055 cells).
        return inner(S, self.gram(S if T is None else T))

    def curvature(self, D):
        """``||X (D o R)||^2``: the data term's curvature along a Z direction D, halved."""
        return self.quad(self.masked(D))

    def pairs(self, A, Bm):
        return A.T @ Bm

    def apply(self, A, Z):
        return A @ Z

    def apply_t(self, A, Z):
        return A @ Z.T

    def gap_sq(self, Z, A, Bm):
        return _sq(minus_outer(Z, A, Bm))

    def gather(self, Zd):
        return Zd

    def to_dense(self, Z):
        return Z

    def to_host(self, Z):
        return np.asarray(Z)

    def z_spec(self, axis: str):
        """How Z is split over a cells mesh: by columns."""
        return PartitionSpec(None, axis)

    def shard(self, mesh, axis: str = AXIS) -> DenseLayout:
        """This layout on ``mesh``: R and G split by columns over ``axis``."""
        cols = PartitionSpec(None, axis)
        return DenseLayout(place(self.R, mesh, cols), place(self.G, mesh, cols))


class SupportLayout(NamedTuple):
    """Z on a fixed support per cell, in ELL form (n x d); see the module docstring."""

    idx: Any  # n x d int32, idx[j, 0] = j
    mask: Any  # n x d bool: R on the support
    L: Any  # n x d x d local Gram blocks
    off: Any = 1.0  # weight of the off-support part of ||Z - A^T Bm||^2

    @classmethod
    def create(cls, X, idx, mask, off=1.0) -> SupportLayout:
        """The layout of a dense X (small problems, tests): forms the local Gram blocks."""
        X = jnp.asarray(X)
        idx = jnp.asarray(idx, jnp.int32)
        return cls(idx, jnp.asarray(mask, bool), local_grams(X, idx), jnp.asarray(off, X.dtype))

    @property
    def n_cells(self) -> int:
        return self.idx.shape[0]

    def masked(self, V):
        return jnp.where(self.mask, V, jnp.zeros((), V.dtype))

    def gram(self, S):
        return jnp.einsum("jab,jb->ja", self.L, S)

    def quad(self, S, T=None):
        return local_quad(self.L, S, T)

    def curvature(self, D):
        """``||X (D o R)||^2 = sum_j d_j^T L_j d_j`` (D masked on the support)."""
        return self.quad(self.masked(D))

    def pairs(self, A, Bm):
        return pair_products(A, Bm, self.idx)

    def apply(self, A, V):
        return apply_ell(A, V, self.idx)

    def apply_t(self, A, V):
        return apply_ell_t(A, V, self.idx)

    def gap_sq(self, V, A, Bm):
        T = self.pairs(A, Bm)
        return _sq(V - T) + self.off * (jnp.vdot(A @ A.T, Bm @ Bm.T) - _sq(T))

    def gather(self, Zd):
        """The values of a dense n x n Z on the support (n x d)."""
        cols = jnp.broadcast_to(jnp.arange(self.n_cells)[:, None], self.idx.shape)
        return Zd[self.idx, cols]

    def to_dense(self, V):
        return dense_z(V, self.idx)

    def to_host(self, V):
        return to_sparse(V, self.idx)

    def z_spec(self, axis: str):
        """How Z is split over a cells mesh: by rows (cells on the leading axis)."""
        return PartitionSpec(axis)

    def shard(self, mesh, axis: str = AXIS) -> SupportLayout:
        """This layout on ``mesh``: idx, mask and L split by rows (cells) over ``axis``."""
        rows = PartitionSpec(axis)
        return SupportLayout(place(self.idx, mesh, rows), place(self.mask, mesh, rows),
                             place(self.L, mesh, rows), place(jnp.asarray(self.off), mesh, PartitionSpec()))


def shard(layout, data, factors, mesh, axis: str = AXIS):
    """``(layout, data, factors)`` placed on a cells ``mesh``
    (:func:`sccase_jax.sharding.cell_mesh`), every cells axis split over ``axis``.

    Z as its layout splits it (:meth:`DenseLayout.z_spec`, :meth:`SupportLayout.z_spec`);
    H (k x n) and a dense X (m x n) by columns; the batch one-hot and the depths by cells;
    W, P, M and a ``BCOO`` X replicated.  The unchanged jitted fit then runs on the placed
    arrays and XLA's SPMD partitioner adds the communication (as in
    the gathers of H's and B's columns by the support's indices become an all-gather of a
    k x n array, the segment sums a reduce-scatter).  Several hosts:
    ``jax.distributed.initialize()`` in every process first; :func:`~sccase_jax.sharding.place`
    hands each process only its own rows (docs/atlas.md).  The number of cells must be a multiple of the
    mesh size.
    """
    n = layout.n_cells
    size = mesh.shape[axis]
    if n % size:
        raise ValueError(f"{n} cells do not split evenly over {size} devices; drop or pad cells")
    rows, cols, rep = PartitionSpec(axis), PartitionSpec(None, axis), PartitionSpec()
    X = data.X if isinstance(data.X, jsparse.BCOO) else place(data.X, mesh, cols)
    data = data._replace(X=X, P=place(data.P, mesh, rep), M=place(data.M, mesh, rep),
                         batch=place(data.batch, mesh, rows), depth=place(data.depth, mesh, rows))
    factors = factors._replace(W=place(factors.W, mesh, rep), H=place(factors.H, mesh, cols),
                               Z=place(factors.Z, mesh, layout.z_spec(axis)))
    return layout.shard(mesh, axis), data, factors


def gap_sq_higher(layout, Z, A, dA, Bm, dB):
    """The Taylor coefficients of order 2 to 4 of ``s -> gap_sq(Z, A + s dA, Bm + s dB)``,
    summed (Z fixed): with ``gap_sq = ||Z||^2 - 2 <A Z, Bm> + u ||T||^2 + off <A A^T, Bm Bm^T>``
    (``T = pairs(A, Bm)`` on the layout, ``u = 1 - off``; a dense layout has ``off = 1``),
    from k x k Grams, ``dA Z`` and, with ``u`` set, three pair products: no n x n array
    besides Z on a dense layout, and no difference of two large values."""
    Ka = (A @ A.T, dA @ A.T + A @ dA.T, dA @ dA.T)
    Kb = (Bm @ Bm.T, dB @ Bm.T + Bm @ dB.T, dB @ dB.T)
    gram = sum(jnp.vdot(Ka[i], Kb[j]) for i in range(3) for j in range(3) if i + j >= 2)
    out = -2.0 * jnp.vdot(layout.apply(dA, Z), dB)
    off = getattr(layout, "off", None)
    if off is None:
        return out + gram
    T0 = layout.pairs(A, Bm)
    T1 = layout.pairs(dA, Bm) + layout.pairs(A, dB)
    T2 = layout.pairs(dA, dB)
    sq = _sq(T1) + 2.0 * jnp.vdot(T0, T2) + 2.0 * jnp.vdot(T1, T2) + _sq(T2)
    return out + (1.0 - off) * sq + off * gram


# -- the support's kernels (Z in ELL form: V[j, s] = Z[idx[j, s], j]) --------------------------

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


def local_grams(X, idx):
    """``L[j] = X[:, idx[j]]^T X[:, idx[j]]`` (n x d x d) of a dense X (small problems;
    :mod:`sccase_jax.support.build` forms them from a sparse X at scale)."""
    Xc = jnp.take(X, idx, axis=1)  # m x n x d
    return jnp.einsum("mja,mjb->jab", Xc, Xc)


def full_support(n: int, order=None) -> np.ndarray:
    """``idx`` (n x n) naming every cell in each column, ``idx[j, 0] = j`` (the others in
    ``order``'s order, default ascending): the support layout that holds the dense model."""
    idx = np.empty((n, n), np.int32)
    for j in range(n):
        rest = np.arange(n) if order is None else np.asarray(order)
        rest = rest[rest != j]
        idx[j] = np.concatenate([[j], rest])
    return idx
