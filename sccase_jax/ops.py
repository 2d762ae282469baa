r"""Products with the cell Gram matrix :math:`G = X^\top X`, dense or through sparse X.

One solver iteration multiplies by G once (``G (P o R)`` of the free Z step; twice with the
paper's step, ``G (D o R)`` and ``G S``), plus the few columns of a projection's
correction.  Two ways:

- ``"dense"``: ``G @ A`` with G formed once (n x n); :math:`n^3` multiply-adds.
- ``"sparse"``: ``X^T (X A)`` with X kept as a ``BCOO`` matrix; :math:`2\,nnz(X)\,n`
  multiply-adds, G is never formed (``Data.G is None``).  ``X A`` is computed in column
  blocks of A, one block at a time, so its temporaries (m x b, and nnz x b inside the
  ``BCOO`` product) stay within a few n x n arrays.

Which one runs is decided by the *structure* of :class:`~sccase_jax.params.Data` (``G`` is
``None`` or not), so it is static under ``jit`` and needs no config field.
:func:`choose_gram` picks the cheaper one from the flop counts, weighted by how much slower
a sparse multiply-add is than a dense one on the backend (measured by
``experiments/benchmark.py``, see ``docs/performance.md``).

Shapes: ``X`` m x n (peaks x cells), ``A`` n x p, ``G`` n x n.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp
from jax.experimental import sparse as jsparse

__all__ = [
    "GRAM_MODES",
    "SPARSE_PENALTY",
    "choose_gram",
    "gap",
    "gram_flops",
    "gram_matmul",
    "inner",
    "masked",
    "minus_outer",
    "select_sum",
    "wt_x",
    "x_matmul",
    "xt_matmul",
]

GRAM_MODES = ("dense", "sparse", "auto")

# Cost of one sparse (BCOO) multiply-add relative to one dense float32 multiply-add, per
# backend, measured by ``experiments/benchmark.py crossover`` (docs/performance.md):
# 137..222 on an idle 2-core CPU (76..110 under heavy load, when the dense products slow
# down more); 56..166 with the sequential blocks of :func:`gram_matmul` (2026-11-27:
# faster at 0.1-0.5 % density, 1.5x slower at 3.7 %, where dense wins by 100x anyway);
# 122..214 on an H200 at 4,000 cells (7..90 at 1,000-2,000 cells, where both products
# take well under a millisecond; measured before the sequential blocks).  The TPU figure
# is unmeasured.
SPARSE_PENALTY = {"cpu": 150.0, "gpu": 150.0, "tpu": 150.0}


def gram_flops(n: int, nnz: int) -> dict:
    """Multiply-adds of one product with an n x n right-hand side, per mode."""
    return {"dense": float(n) ** 3, "sparse": 2.0 * float(nnz) * n}


def choose_gram(X, mode: str = "auto", backend: str | None = None) -> str:
    """``"dense"`` or ``"sparse"`` for a peaks x cells matrix ``X`` (scipy sparse or dense).

    ``auto`` takes sparse when ``SPARSE_PENALTY[backend] * 2 nnz n < n^3``.
    """
    if mode not in GRAM_MODES:
        raise ValueError(f"gram must be one of {GRAM_MODES}, got {mode!r}")
    if mode != "auto":
        return mode
    n = X.shape[1]
    nnz = X.nnz if sp.issparse(X) else int(np.count_nonzero(X))
    backend = backend or jax.default_backend()
    f = gram_flops(n, nnz)
    return "sparse" if SPARSE_PENALTY.get(backend, 100.0) * f["sparse"] < f["dense"] else "dense"


# Size of one block's temporaries in the sparse path, in n x n arrays.  1 instead of 4
# saved 1.4 n^2 of XLA's plan but made the product 1.8x slower at 1,000 cells (five times
# the sequential blocks); 16 added 12 n^2 for 10 % speed.
SPARSE_BLOCK_BUDGET = 4


def _block_cols(m: int, n: int, nnz: int = 0) -> int:
    """Columns of A per block of the sparse path, so its temporaries stay within a few n x n.

    ``X @ A_b`` is m x b, and a ``BCOO`` product with a dense right-hand side gathers one
    row of ``A_b`` per stored entry of X (an nnz x b temporary), so
    b = budget n^2 / max(m, nnz), at least 1.
    """
    return int(max(1, min(n, (n * n * SPARSE_BLOCK_BUDGET) // max(m, nnz, 1))))


def gram_matmul(data, A):
    """``G @ A`` for ``data`` with a formed ``G``, else ``X^T (X A)`` in column blocks.

    The blocks run one after another in a ``lax.fori_loop``, so one block's temporaries
    are alive at a time.  An unrolled Python loop let XLA schedule all of them at once,
    and the block width ignored nnz: XLA's plan of a whole fit held about 380 n x n arrays
    of temporaries at 1,000 cells of 3.7 % density (nnz = 0.37 n^2), now 10.4
    (``experiments/memory_plan.py --gram sparse``; the dense-G path: 4.5).  The last block is
    shifted left to end at column p (``dynamic_slice`` clamps its start), recomputing a
    few columns with the same values instead of padding A.
    """
    if data.G is not None:
        return data.G @ A
    X = data.X
    m, n = X.shape
    p = A.shape[1]
    b = _block_cols(m, n, getattr(X, "nse", 0))
    if b >= p:
        return _xtx(X, A)

    def body(i, out):
        j = jnp.minimum(i * b, p - b)
        blk = _xtx(X, jax.lax.dynamic_slice_in_dim(A, j, b, axis=1))
        return jax.lax.dynamic_update_slice_in_dim(out, blk.astype(out.dtype), j, axis=1)

    return jax.lax.fori_loop(0, -(-p // b), body, jnp.zeros((n, p), A.dtype))


def _xtx(X, A):
    return xt_matmul(X, x_matmul(X, A))


def _take_rows(A, idx):
    # The stored indices of a BCOO matrix are in bounds: no wrapping of negative indices,
    # which jnp indexing (and BCOO's own products) computes as one more nnz-long index
    # array per product, kept alive through the whole fit once XLA hoists it out of the
    # solver's loop (0.9 n^2 of the sparse path's plan at 1,000 cells).
    return A.at[idx].get(mode="promise_in_bounds", wrap_negative_indices=False)


def x_matmul(X, A):
    """``X @ A`` for a dense or ``BCOO`` X (m x n) and a dense A (n x p).

    A ``BCOO`` X is multiplied as a gather of A's rows and a segment sum (nnz x p
    temporaries), from its stored indices as they are.
    """
    if not isinstance(X, jsparse.BCOO):
        return X @ A
    rows, cols = X.indices[:, 0], X.indices[:, 1]
    return jax.ops.segment_sum(X.data[:, None] * _take_rows(A, cols), rows, X.shape[0])


def xt_matmul(X, B):
    """``X^T @ B`` for a dense or ``BCOO`` X (m x n) and a dense B (m x p); see :func:`x_matmul`."""
    if not isinstance(X, jsparse.BCOO):
        return X.T @ B
    rows, cols = X.indices[:, 0], X.indices[:, 1]
    return jax.ops.segment_sum(X.data[:, None] * _take_rows(B, rows), cols, X.shape[1])


def inner(A, B):
    """Frobenius inner product ``<A, B> = sum(A * B)`` of two 2-D arrays.

    Written as a per-column batched dot followed by a sum.  On XLA:CPU a plain reduction
    (``jnp.vdot``, ``jnp.sum(A * B)``) whose operand is a matmul output gets fused with that
    matmul and pulls it off the fast matmul path: ``vdot(A, G @ A)`` measured 0.11-0.14 s
    against 0.06 s for ``G @ A`` alone at n = 2000 on the 2-core development CPU
    (docs/performance.md).  The batched-dot form keeps the matmul fast; the value is the same
    up to float rounding.
    """
    return jnp.sum(jnp.einsum("ij,ij->j", A, B))


# Up to this many rows, ``C - A^T B`` for thin A, B (k x n) is one elementwise pass with the
# k outer products summed in it (:func:`minus_outer`).
OUTER_UNROLL = 64


def minus_outer(C, A, B):
    """``C - A^T B`` (n x n) for thin ``A``, ``B`` (k x n), as one elementwise pass.

    The k rank-one terms are subtracted one after another inside the pass (2 k flops per
    entry, as in the product), so no n x n product is formed: on XLA:CPU at 2,055 cells and
    k = 6 the pass took 1.4-2.2 ms, against 7-14 ms for ``C - A.T @ B`` (the thin product's
    transposed operands leave the fast matmul path) and 18.6 ms for a broadcast-and-sum
    form.  Above :data:`OUTER_UNROLL` rows it falls back to the broadcast-and-sum form.
    """
    k = A.shape[0]
    if k > OUTER_UNROLL:
        return C - jnp.sum(A[:, :, None] * B[:, None, :], axis=0)
    for i in range(k):
        C = C - A[i][:, None] * B[i][None, :]
    return C


def gap(Z, H):
    """``Q = Z - H^T H`` (n x n) for a thin ``H`` (k x n), as one elementwise pass.

    :func:`minus_outer`: no n x n product ``H^T H`` is formed.  Such a product depends on
    ``H`` alone, and XLA scheduled it (shared by the Z step's gradient and the H step's Q)
    at the start of the iteration, where it lived as one more n x n array through the Z
    step's peak; this pass starts from the new Z, so it cannot run before the Z step.
    """
    return minus_outer(Z, H, H)


def masked(A, R):
    """``A o R`` for a boolean (or 0/1) mask ``R``, as a select.

    A select fuses into its consumers, whereas ``A * R.astype(float)`` invites XLA to keep
    a float copy of the mask: one more n x n array at the solver's peak.
    """
    return jnp.where(R, A, jnp.zeros((), A.dtype))


def select_sum(R, A, B):
    """``sum(where(R, A, B))``: the sum of ``A`` on the mask and of ``B`` off it.

    The masked reductions of the Z step (``<D o R, G (D o R)>`` and the change of F of a
    trial) are written this way for memory: XLA:CPU fuses neither a select nor a maximum
    into a reduction (nor into a product), so the whole elementwise expression becomes one
    pass that writes one n x n array, into a buffer that is free by then (the operand of
    the product just taken, or the product itself), and the reduction reads it.  Separate
    inner products of masked or projected operands materialised each of those operands
    instead (one n x n array each), and :func:`inner` of a product's output needs a
    transposed copy of its other operand.  The select also keeps the reduction off the
    product it follows (see :func:`inner`).
    """
    return jnp.sum(jnp.where(R, A, B))


def wt_x(X, W):
    """``W^T X`` (k x n) for a dense or ``BCOO`` X, without densifying X.

    A dense X is read in its stored layout (``W.T @ X``: ``X.T @ W`` took 2.5x as long on
    XLA:CPU at 4,000 cells); a ``BCOO`` X goes through :func:`xt_matmul` (a gather of W's
    rows by X's stored row indices and a segment sum over its columns).
    """
    if isinstance(X, jsparse.BCOO):
        return xt_matmul(X, W).T
    return W.T @ X
