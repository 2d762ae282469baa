r"""Products with the cell Gram matrix :math:`G = X^\top X`, dense or through sparse X.

One solver iteration multiplies by G once (``G (P o R)`` of the free Z step; twice with the
paper's step, ``G (D o R)`` and ``G S``), plus the few columns of a projection's
correction.  Two ways:

- ``"dense"``: ``G @ A`` with G formed once (n x n); :math:`n^3` multiply-adds.
- ``"sparse"``: ``X^T (X A)`` with X kept as a ``BCOO`` matrix; :math:`2\,nnz(X)\,n`
  multiply-adds, G is never formed (``Data.G is None``).  ``X A`` is computed in column
  blocks of A, one block at a time, the result written into A's buffer, and each product
  through X's stored entries steps through them in cache-sized slices, so the temporaries
  are the m x b ``X A_b`` and about 1 MB (2 MB in float64) (:func:`gram_matmul`).

Which one runs is decided by the *structure* of :class:`~sccase_jax.params.Data` (``G`` is
``None`` or not), so it is static under ``jit`` and needs no config field.
:func:`choose_gram` picks the cheaper one from the flop counts, weighted by how much slower
a sparse multiply-add is than a dense one on the backend (measured by
``python -m experiments.benchmark``, see ``docs/performance.md``).

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
# backend, measured by ``python -m experiments.benchmark crossover`` (docs/performance.md):
# 55..172 on the 2-core CPU (172 at 0.1 % density and 1,000 cells, where the many small
# steps of the sparse products dominate; 55 at 2,000 cells), so the CPU's penalty is the
# largest measured; 122..214 on an H200 at 4,000 cells (7..90 at 1,000-2,000 cells, where
# both products take well under a millisecond).  The TPU figure is unmeasured.
SPARSE_PENALTY = {"cpu": 175.0, "gpu": 150.0, "tpu": 150.0}


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


# The sparse path's products in steps small enough to stay in cache.  ``G A`` runs over
# column blocks of A of SPARSE_BLOCK_COLS columns (fewer where the m x b intermediate
# ``X A_b`` would exceed SPARSE_BLOCK_BUDGET n x n arrays), and every product through the
# stored entries of X (``X A_b``, ``X^T Y``, the thin ``X (S H^T)`` and ``X^T W``) runs over
# them SPARSE_STEP / p at a time, so that a step's gathered rows and their updates (step x p
# floats each, 512 KB) stay in cache.  Measured on the 2-core CPU (synthetic data of
# python -m experiments.benchmark, 5.7 % dense, m = 6.3 n; products inside a jitted loop, as in
# the fit): one G A took 0.22 s at 1,000 cells and 1.9 s at 2,000, against 0.47 s and 6.0 s
# with one step over all nnz entries per block of 10-11 columns (b = 4 n^2 / nnz: an
# nnz x b gather, 3.6 n^2, written to memory and read back twice per block).  At 2,000
# cells steps of 2^16 or 2^18 floats were 1.1-1.2x slower, 128 columns per block 1.04x,
# 32 columns 1.2x.  SPARSE_STEP is per backend: one not listed (GPU, TPU: unmeasured, and
# there every step of a loop costs a kernel launch) takes one step over all entries per
# block, with SPARSE_GATHER_BUDGET n^2 / max(m, nnz) columns per block (an nnz x b gather
# of at most that many n x n arrays).
SPARSE_BLOCK_COLS = 64
SPARSE_STEP = {"cpu": 2**17}
SPARSE_BLOCK_BUDGET = 0.5
SPARSE_GATHER_BUDGET = 4


def _stepped() -> bool:
    return jax.default_backend() in SPARSE_STEP


def _block_cols(m: int, n: int, nnz: int = 0) -> int:
    """Columns of A per block of the sparse path's ``G A``: :data:`SPARSE_BLOCK_COLS`, fewer
    where the m x b intermediate ``X A_b`` would exceed :data:`SPARSE_BLOCK_BUDGET` n x n
    arrays; at least 1.  Without steps (:data:`SPARSE_STEP`) the nnz x b gather bounds it:
    b = :data:`SPARSE_GATHER_BUDGET` n^2 / max(m, nnz)."""
    if not _stepped():
        return int(max(1, min(n, (n * n * SPARSE_GATHER_BUDGET) // max(m, nnz, 1))))
    return int(max(1, min(n, SPARSE_BLOCK_COLS, int(SPARSE_BLOCK_BUDGET * n * n) // max(m, 1))))


def _step_entries(p: int, nnz: int) -> int:
    """Stored entries of X per step of a product with p columns (:data:`SPARSE_STEP`; all
    ``nnz`` of them on a backend without steps)."""
    if not _stepped():
        return max(1, nnz)
    return max(1, SPARSE_STEP[jax.default_backend()] // max(p, 1))


def gram_matmul(data, A):
    """``G @ A`` for ``data`` with a formed ``G``, else ``X^T (X A)`` in column blocks.

    The blocks run one after another in a ``lax.fori_loop`` whose carry starts as A itself:
    block i reads exactly the columns it then overwrites with ``X^T (X A_b)``, so where A
    is not used after the product XLA writes the result into A's buffer (no second n x p
    array, no zero-filled one), and where it is, XLA copies A once.  The columns left over
    by whole blocks (p mod b) are one more block, outside the loop.  Inside a block every
    product steps through X's stored entries (:func:`x_matmul`), so a block's temporaries
    are the m x b ``X A_b``, the n x b result and one step's gather and updates: about 4.1-4.3
    n x n arrays of temporaries in XLA's plan of a whole fit at 1,000-2,000 cells, with the
    Z step's gradient formed at each use (``solver.z_step._Direction``;
    ``python -m experiments.memory_plan --gram sparse``, docs/scaling.md).  Sequential
    blocks matter: a Python loop over blocks lets XLA schedule all of them at once.
    Each column is accumulated in the same order of X's entries whatever the block and step
    sizes, so the values are the same to the bit as with one block.
    """
    if data.G is not None:
        return data.G @ A
    X = data.X
    m, n = X.shape
    p = A.shape[1]
    b = _block_cols(m, n, getattr(X, "nse", 0))
    if b >= p:
        return _xtx(X, A)
    full = p // b

    def body(i, out):
        j = i * b
        blk = _xtx(X, jax.lax.dynamic_slice_in_dim(out, j, b, axis=1))
        return jax.lax.dynamic_update_slice_in_dim(out, blk.astype(out.dtype), j, axis=1)

    out = jax.lax.fori_loop(0, full, body, A)
    if full * b < p:
        out = out.at[:, full * b :].set(_xtx(X, out[:, full * b :]).astype(out.dtype))
    return out


def _xtx(X, A):
    return xt_matmul(X, x_matmul(X, A))


def _take_rows(A, idx):
    # The stored indices of a BCOO matrix are in bounds: no wrapping of negative indices,
    # which jnp indexing (and BCOO's own products) computes as one more nnz-long index
    # array per product, kept alive through the whole fit once XLA hoists it out of the
    # solver's loop (0.9 n^2 of the sparse path's plan at 1,000 cells).
    return A.at[idx].get(mode="promise_in_bounds", wrap_negative_indices=False)


def _entry_product(X, A, src: int, dst: int, size: int):
    """``sum_e data[e] A[idx[e, src]]`` added into row ``idx[e, dst]`` of a size x p result.

    A gather of A's rows and a scatter-add over X's stored entries (``idx``, ``data`` of the
    ``BCOO`` X), :func:`_step_entries` of them per step of a ``lax.fori_loop``, each step's
    slice of the indices taken as it is: no nnz-long temporary (neither a gathered nnz x p
    array nor a column of X's indices).  The last step is shifted back to end at the last
    entry (``dynamic_slice`` clamps its start); its entries that the step before added
    already get an out-of-range target row and are dropped by the scatter.  The updates
    reach each output entry in the order of X's stored entries, as one ``segment_sum`` over
    all of them would add them.
    """
    idx, val = X.indices, X.data
    nnz, p = val.shape[0], A.shape[1]
    acc = jnp.zeros((size, p), jnp.result_type(val.dtype, A.dtype))
    if nnz == 0:
        return acc
    e = min(_step_entries(p, nnz), nnz)

    def add(acc, ii, v, keep=None):
        upd = v[:, None] * _take_rows(A, ii[:, src])
        rows = ii[:, dst] if keep is None else jnp.where(keep, ii[:, dst], size)
        return acc.at[rows].add(upd, mode="drop", wrap_negative_indices=False)

    steps = -(-nnz // e)
    if steps == 1:
        return add(acc, idx, val)

    def body(i, acc):
        start = i * e
        ii = jax.lax.dynamic_slice_in_dim(idx, start, e)
        v = jax.lax.dynamic_slice_in_dim(val, start, e)
        keep = jnp.minimum(start, nnz - e) + jnp.arange(e) >= start
        return add(acc, ii, v, keep)

    return jax.lax.fori_loop(0, steps, body, acc)


def x_matmul(X, A):
    """``X @ A`` for a dense or ``BCOO`` X (m x n) and a dense A (n x p).

    A ``BCOO`` X is multiplied as a gather of A's rows and a scatter-add into the rows of
    the result, in steps of X's stored entries as they are stored (:func:`_entry_product`).
    """
    if not isinstance(X, jsparse.BCOO):
        return X @ A
    return _entry_product(X, A, 1, 0, X.shape[0])


def xt_matmul(X, B):
    """``X^T @ B`` for a dense or ``BCOO`` X (m x n) and a dense B (m x p); see :func:`x_matmul`."""
    if not isinstance(X, jsparse.BCOO):
        return X.T @ B
    return _entry_product(X, B, 0, 1, X.shape[1])


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
