"""The start of a fit: the dropout mask R, the Jaccard start Z0, G = X^T X, NMF for W, H.

Host-side helpers (:func:`gram_matrix`, :func:`jaccard_similarity`) take scipy-sparse or
dense peaks x cells matrices and reduce them with sparse products, in column blocks, so
no dense m x n array is built.  Their device twins (:func:`gram_matrix_device`,
:func:`jaccard_similarity_device`) take the dense X already on device and use one matrix
product each: about twice as fast as the host versions on the 2-core development CPU, and
on a GPU a matter of milliseconds.  :func:`nmf` runs on device (dense or ``BCOO`` X).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp
from jax import lax
from jax.experimental import sparse as jsparse

from sccase_jax.ops import x_matmul, xt_matmul

__all__ = [
    "crossprod",
    "crossprod_cols",
    "crossprod_split",
    "dropout_mask",
    "nnls_h",
    "gram_matrix",
    "gram_matrix_device",
    "jaccard_similarity",
    "jaccard_similarity_device",
    "nmf",
]


def dropout_mask(key, n: int, keep_prob: float = 0.95):
    """The fixed random mask R (n x n, bool): each entry kept with probability ``keep_prob``."""
    if not 0.0 < keep_prob <= 1.0:
        raise ValueError(f"keep_prob must be in (0, 1], got {keep_prob}")
    return jax.random.bernoulli(key, keep_prob, (n, n))


# A peak contributes its outer product to X^T X: c^2 updates through a sparse product (c the
# cells it is open in), or n^2 multiply-adds through a dense one, which runs about this many
# times faster per update on the 2-core CPU (scipy's sparse product against float32 BLAS,
# experiments/start_costs.py).  A peak open in more than n / sqrt(DENSE_SPEEDUP) cells is
# cheaper in the dense product (1024: the fastest of 64-4096 on 2,000 x 118,000 and
# 10,000 x 10,000 data; all dense or all sparse were 2-6x slower).
DENSE_SPEEDUP = 1024.0
# Rows of X densified at a time for the dense product (floats).
DENSE_BLOCK_FLOATS = 1 << 24


def crossprod(X, binary: bool = False, cols=None) -> np.ndarray:
    """``X^T X`` (cells x cells, float64) of a peaks x cells matrix; ``binary``: of ``X > 0``;
    ``cols``: only those columns of it, ``X^T X[:, cols]`` (cells x ``len(cols)``).

    Each peak (row of X) goes where its outer product is cheaper: the peaks open in many
    cells (above ``n / sqrt(DENSE_SPEEDUP)``) through dense float32 BLAS, a block of rows at
    a time, the rest through scipy's sparse product.  The work is then close to
    ``sum_p min(c_p^2, n^2 / DENSE_SPEEDUP)`` (``c_p`` the cells of peak p): linear in the
    stored entries for the rare peaks, and the few very common ones (promoters, open in
    most cells) no longer dominate.  Binary counts are exact (integers below 2^24 in float32
    blocks, int64 in the sparse part); other values accumulate the dense blocks in float32
    and everything else in float64.  For many column slabs of one X, split it once with
    :func:`crossprod_split` and call :func:`crossprod_cols`.
    """
    return crossprod_cols(crossprod_split(X, binary), cols)


def crossprod_split(X, binary: bool = False, dense_dtype=np.float32):
    """X's peaks split for :func:`crossprod_cols`: ``(rows of X as CSR, which rows go
    through dense BLAS in ``dense_dtype``, the other rows as CSC)``."""
    Xr = sp.csr_matrix(X)
    Xr.sum_duplicates()
    if binary:
        Xr = Xr.astype(bool).astype(np.float32)
    n = Xr.shape[1]
    dense = np.diff(Xr.indptr) > n / np.sqrt(DENSE_SPEEDUP)
    S = sp.csc_matrix(Xr[~dense], dtype=np.int64 if binary else np.float64)
    return Xr, np.flatnonzero(dense), S, np.dtype(dense_dtype)


def crossprod_cols(split, cols=None, dense_rows: bool = True) -> np.ndarray:
    """``X^T X[:, cols]`` (float64) of a :func:`crossprod_split` X (``cols`` None: all);
    ``dense_rows=False``: the sparse rows' part only."""
    Xr, rows, S, dense_dtype = split
    n = Xr.shape[1]
    sel = slice(None) if cols is None else np.asarray(cols)
    out = np.zeros((n, n if cols is None else len(sel)))
    step = max(1, DENSE_BLOCK_FLOATS // max(n, 1))
    for j in range(0, rows.size if dense_rows else 0, step):
        D = Xr[rows[j : j + step]].toarray().astype(dense_dtype, copy=False)
        out += D.T @ D[:, sel]
    if S.nnz:
        out += (S.T @ S[:, sel]).toarray()
    return out


def gram_matrix(X, dtype=np.float32) -> np.ndarray:
    """``G = X^T X`` (cells x cells) from a peaks x cells matrix (:func:`crossprod`)."""
    X = X if sp.issparse(X) else sp.csr_matrix(np.asarray(X))
    return crossprod(X).astype(dtype, copy=False)


def jaccard_similarity(X, normalize: str | None = "column") -> np.ndarray:
    """Jaccard similarity between the binarised cell profiles (columns of X).

    ``J[i, j] = |a_i & a_j| / |a_i | a_j|`` with exact counts (:func:`crossprod`; the
    released code's int16 overflows).  Two empty cells get 0.  ``normalize="column"``
    makes each column sum 1 (paper), ``"row"`` each row (released code), ``None`` leaves
    J as is.  Returns float64 (n x n).
    """
    if normalize not in ("column", "row", None):
        raise ValueError(f"normalize must be 'column', 'row' or None, got {normalize!r}")
    X = X if sp.issparse(X) else sp.csr_matrix(np.asarray(X))
    inter = crossprod(X, binary=True)
    size = np.diagonal(inter).copy()
    union = size[:, None] + size[None, :] - inter
    J = np.divide(inter, union, out=np.zeros(inter.shape), where=union > 0)
    if normalize is not None:
        s = J.sum(axis=0 if normalize == "column" else 1, keepdims=True)
        J = np.divide(J, s, out=np.zeros_like(J), where=s > 0)
    return J


_HIGHEST = jax.lax.Precision.HIGHEST


@jax.jit
def gram_matrix_device(X):
    """``G = X^T X`` of a dense peaks x cells device array (true float32 products)."""
    return jnp.matmul(X.T, X, precision=_HIGHEST)


def _normalise(J, normalize):
    if normalize is None:
        return J
    s = J.sum(axis=0 if normalize == "column" else 1, keepdims=True)
    return jnp.where(s > 0, J / jnp.where(s > 0, s, 1), 0)


@partial(jax.jit, static_argnames=("normalize",))
def _jaccard_device(X, normalize):
    B = (X > 0).astype(X.dtype)
    # 0/1 products accumulate exactly in float32 up to 2**24 peaks; HIGHEST keeps
    # tensor-core modes out of it.
    inter = jnp.matmul(B.T, B, precision=_HIGHEST)
    size = jnp.diagonal(inter)
    union = size[:, None] + size[None, :] - inter
    J = jnp.where(union > 0, inter / jnp.where(union > 0, union, 1), 0)
    return _normalise(J, normalize)


def jaccard_similarity_device(X, normalize: str | None = "column"):
    """:func:`jaccard_similarity` of a dense peaks x cells device array, on device (X's dtype)."""
    if normalize not in ("column", "row", None):
        raise ValueError(f"normalize must be 'column', 'row' or None, got {normalize!r}")
    if X.shape[0] >= 2**24 and X.dtype == jnp.float32:
        raise ValueError("more than 2**24 peaks: counts are not exact in float32; use the host version")
    return _jaccard_device(X, normalize)


def _nndsvda(xa, xtb, shape, dtype, k, key, n_power: int = 4):
    """NNDSVD-a start from a randomized truncated SVD of X, given its products
    ``xa(A) = X A`` and ``xtb(B) = X^T B``."""
    m, n = shape
    ell = min(k + 10, min(m, n))
    Y = xa(jax.random.normal(key, (n, ell), dtype))
    for _ in range(n_power):
        Y, _ = jnp.linalg.qr(Y)
        Y, _ = jnp.linalg.qr(xa(xtb(Y)))
    Qm, _ = jnp.linalg.qr(Y)
    small = xtb(Qm).T  # ell x n
    Ub, s, Vt = jnp.linalg.svd(small, full_matrices=False)
    U = (Qm @ Ub)[:, :k]
    s, V = s[:k], Vt[:k]
    # Fix the sign ambiguity of each singular pair, then split into positive parts.
    up, un = jnp.maximum(U, 0), jnp.maximum(-U, 0)
    vp, vn = jnp.maximum(V, 0), jnp.maximum(-V, 0)
    nup, nun = jnp.linalg.norm(up, axis=0), jnp.linalg.norm(un, axis=0)
    nvp, nvn = jnp.linalg.norm(vp, axis=1), jnp.linalg.norm(vn, axis=1)
    pos = nup * nvp >= nun * nvn
    sigma = jnp.where(pos, nup * nvp, nun * nvn)
    lam = jnp.sqrt(s * sigma)
    safe = lambda a: jnp.where(a > 0, a, 1)  # noqa: E731
    W = jnp.where(pos[None, :], up / safe(nup)[None, :], un / safe(nun)[None, :]) * lam[None, :]
    H = jnp.where(pos[:, None], vp / safe(nvp)[:, None], vn / safe(nvn)[:, None]) * lam[:, None]
    # The leading pair is non-negative up to sign: use its absolute values.
    W = W.at[:, 0].set(jnp.sqrt(s[0]) * jnp.abs(U[:, 0]))
    H = H.at[0].set(jnp.sqrt(s[0]) * jnp.abs(V[0]))
    mean = jnp.sum(xtb(jnp.ones((m, 1), dtype))) / jnp.asarray(float(m) * float(n), dtype)  # m n may pass 2^31
    W = jnp.where(W > 0, W, mean)
    H = jnp.where(H > 0, H, mean)
    return W, H, Qm, small


def _nmf(xa, xtb, shape, dtype, sq_norm, key, k: int, n_iter: int, tol, trace: bool, inner: int,
         sketch: int = 0):
    """The NMF start inside ``jit``, given X's products ``xa``, ``xtb`` (see :func:`nmf`)."""
    W, H, Q, B = _nndsvda(xa, xtb, shape, dtype, k, key)
    eps = jnp.finfo(dtype).tiny

    def hals_cols(W, XHt, HHt):
        # One HALS sweep over the k columns of W for min ||X - W H|| with fixed H.
        def col(j, W):
            num = XHt[:, j] - W @ HHt[:, j] + W[:, j] * HHt[j, j]
            return W.at[:, j].set(jnp.maximum(num / jnp.maximum(HHt[j, j], eps), eps))

        return lax.fori_loop(0, k, col, W)

    def hals_rows(H, WtX, WtW):
        # The same sweep over the k rows of H with fixed W.  Working on H's rows with
        # W^T X (k x n) keeps a dense X in its stored layout: X^T W took 2.5x as long on
        # XLA:CPU.
        def row(j, H):
            num = WtX[j] - WtW[j] @ H + H[j] * WtW[j, j]
            return H.at[j].set(jnp.maximum(num / jnp.maximum(WtW[j, j], eps), eps))

        return lax.fori_loop(0, k, row, H)

    def sweep(carry, xa=xa, xtb=xtb):
        i, W, H, f_prev, _, hist = carry
        XHt, HHt = xa(H.T), H @ H.T
        for _ in range(inner):  # inner > 1: the products reused (accelerated HALS)
            W = hals_cols(W, XHt, HHt)
        WtX, WtW = xtb(W).T, W.T @ W
        H_new = H
        for _ in range(inner):
            H_new = hals_rows(H_new, WtX, WtW)
        # ||X - W H||^2 = ||X||^2 - 2 <W^T X, H> + <W^T W, H H^T>, from the products the
        # sweep forms anyway (the residual of a rank-k fit of scATAC data is most of
        # ||X||^2, so nothing cancels).
        f = sq_norm - 2.0 * jnp.vdot(WtX, H_new) + jnp.vdot(WtW, H_new @ H_new.T)
        rel = (f_prev - f) / jnp.maximum(jnp.abs(f_prev), eps)
        if trace:
            dh = H_new - H
            step = jnp.sqrt(jnp.vdot(dh, dh) / jnp.maximum(jnp.vdot(H_new, H_new), eps))
            hist = hist.at[i].set(jnp.stack([f, rel, step]))
        return i + 1, W, H_new, f, rel, hist

    def keep_going(carry):
        # A sweep that lowers F by less than tol of itself (or, by rounding, raises it)
        # ends the sweeps; tol = 0 runs all n_iter.
        i, _, _, _, rel, _ = carry
        return (i < n_iter) & ~((tol > 0) & (rel < tol))

    hist = jnp.full((max(n_iter, 1) if trace else 0, 3), jnp.nan, dtype)
    init = (jnp.asarray(0, jnp.int32), W, H, jnp.asarray(jnp.inf, dtype),
            jnp.asarray(jnp.inf, dtype), hist)
    if sketch:
        # The first ``sketch`` sweeps fit X's rank-ell sketch Q (Q^T X) from the start's
        # randomized SVD: products with Q and the ell x n B instead of X.
        sketched = partial(sweep, xa=lambda A: Q @ (B @ A), xtb=lambda C: B.T @ (Q.T @ C))
        init = lax.fori_loop(0, min(sketch, n_iter), lambda _, c: sketched(c), init)
        init = init[:3] + (jnp.asarray(jnp.inf, dtype), jnp.asarray(jnp.inf, dtype)) + init[5:]
    sweeps, W, H, _, _, hist = lax.while_loop(keep_going, sweep, init)
    return W, H, sweeps, hist


@partial(jax.jit, static_argnames=("k", "n_iter", "trace", "inner", "sketch"))
def _nmf_device(X, key, k: int, n_iter: int, tol, trace: bool = False, inner: int = 1,
                sketch: int = 0):
    data = X.data if isinstance(X, jsparse.BCOO) else X
    return _nmf(lambda A: x_matmul(X, A), lambda B: xt_matmul(X, B), X.shape, X.dtype,
                jnp.sum(jnp.square(data)), key, k, n_iter, tol, trace, inner, sketch)


def _nmf_host(X, dtype, key, k: int, n_iter: int, tol, trace: bool, inner: int, sketch: int = 0):
    """:func:`_nmf` with X's products computed on the host (``jax.pure_callback``): the
    peaks open in more than :data:`NMF_DENSE_FRACTION` of the cells as a dense block in
    BLAS, the others by scipy's sparse product.

    On a CPU scipy's sparse products are 3-4x faster than a ``BCOO`` product inside XLA at
    120,000 peaks (``experiments/start_costs.py``).  The program holds host callbacks, so
    JAX does not keep it in the persistent compilation cache: it is compiled per call
    (about a second), which only pays where the products are large (:data:`HOST_NNZ`).
    """
    Xr = sp.csr_matrix(X, dtype=dtype)
    Xr.sort_indices()
    m, n = Xr.shape
    dt = np.dtype(dtype)
    # The peaks open in many cells first, as a dense block whose products run in BLAS (on
    # every core); the rest stay sparse.  W's rows follow this order until the end.
    count = np.diff(Xr.indptr)
    order = np.argsort(-count, kind="stable")
    md = int(min(np.count_nonzero(count > NMF_DENSE_FRACTION * n), NMF_DENSE_FLOATS // max(n, 1)))
    Xr = Xr[order]
    D = Xr[:md].toarray()
    R = Xr[md:]
    # X^T B through the CSC view of X^T: each peak's entries add its row of B to a few rows
    # of the small n x p result (a CSR X^T would gather B's rows across its m x p array).
    Rt = R.T

    def xa(A):
        out = np.empty((m, A.shape[1]), dt)
        np.matmul(D, A, out=out[:md])
        out[md:] = R @ A
        return out

    def xtb(B):
        return np.asarray(D.T @ B[:md] + Rt @ B[md:], dt)

    def product(f, rows):
        return lambda B: jax.pure_callback(lambda b: f(np.asarray(b)),
                                           jax.ShapeDtypeStruct((rows, B.shape[1]), dt), B)

    sq = float(np.square(Xr.data, dtype=np.float64).sum())
    run = jax.jit(lambda key, tol: _nmf(product(xa, m), product(xtb, n), (m, n), dt,
                                        jnp.asarray(sq, dt), key, k, n_iter, tol, trace, inner,
                                        sketch))
    W, H, sweeps, hist = run(key, tol)
    return W[np.argsort(order)], H, sweeps, hist


# Above this many stored entries a sparse X's NMF products run in scipy on a CPU host
# (_nmf_host); below, the program stays in XLA, where JAX caches it across processes.
# At 1.77M entries (10,335 x 10,000 Granja cells) scipy took 5.7-6.0 s, BCOO 6.6 s once
# compiled (10 s with compilation).
HOST_NNZ = 1_000_000
# In those products the peaks open in more than this fraction of the cells go through a
# dense block in BLAS (at most NMF_DENSE_FLOATS entries, 128 MB): on 2,000 x 118,000 the
# products of one sweep took 46 ms against 74 ms all sparse (two BLAS threads), the 200
# sweeps 13.6 s against 15.6 s with one thread.
NMF_DENSE_FRACTION = 0.2
NMF_DENSE_FLOATS = 1 << 25


def nmf(X, k: int, key, n_iter: int = 200, tol: float = 0.0, *, trace: bool = False,
        inner: int = 1, host=None, sketch: int = 0):
    """Non-negative factorisation ``X ~ W H`` (W: m x k, H: k x n), seeded by ``key``.

    NNDSVD-a start (randomized SVD, the random part seeded) followed by HALS sweeps, all
    jitted.  ``X``: a device array (dense or ``BCOO``), whose products run in XLA, or a
    scipy sparse matrix ``host``-side: with ``host`` (a scipy sparse X), on a CPU and above
    :data:`HOST_NNZ` stored entries the products run in scipy instead (same sweeps, the
    products rounded differently).  The sweeps stop after ``n_iter``, or earlier once a
    sweep lowers ``||X - W H||^2`` by less than ``tol`` of itself (``0``: all ``n_iter``).
    ``inner``: HALS passes over W (and then over H) per pair of products with X
    (accelerated HALS, Gillis and Glineur 2012; 1, plain HALS, the default: more passes
    reached the same objective with fewer products but clustered worse,
    ``experiments/nmf_start.py``).  ``sketch``: how many of the ``n_iter`` sweeps, the first
    ones, fit X's rank-(k + 10) sketch ``Q Q^T X`` (Q: the orthonormal range basis of the
    start's randomized SVD) instead of X: each costs products with the m x (k + 10) Q and
    the (k + 10) x n ``Q^T X`` instead of two passes over X's entries; ``tol`` applies to
    the sweeps on X only.  It halves the start's time on large peak sets but moved the
    clustering (``experiments/nmf_sketch.py``), so the default is 0.
    ``trace=True`` returns ``(W, H, sweeps, history)`` with the history of (objective, its
    relative decrease, ``||dH|| / ||H||``) per sweep (for the sweeps on the sketch, the
    sketch's objective).
    """
    m, n = X.shape
    if isinstance(sketch, bool) or not 0 <= int(sketch) == sketch:
        raise ValueError(f"sketch must be a count of sweeps (>= 0), got {sketch!r}")
    sketch = min(int(sketch), int(n_iter))
    if not 1 <= k <= min(m, n):
        raise ValueError(f"n_components must be between 1 and min(peaks, cells) = {min(m, n)}, got {k}")
    with jax.default_matmul_precision("highest"):  # same start on CPU and on tensor cores
        if (host is not None and sp.issparse(host) and host.nnz > HOST_NNZ
                and jax.default_backend() == "cpu"):
            W, H, sweeps, hist = _nmf_host(host, X.dtype, key, k, n_iter,
                                           jnp.asarray(tol, X.dtype), trace, inner, sketch)
        else:
            W, H, sweeps, hist = _nmf_device(X, key, k, n_iter, jnp.asarray(tol, X.dtype), trace,
                                             inner, sketch)
    return (W, H, sweeps, hist) if trace else (W, H)


def nnls_h(X, W, n_iter: int):
    """H >= 0 minimising ||X - W H|| for fixed W (multiplicative updates): the start of the
    reference block's rows of H (scCASER)."""
    WtX = (X.T @ W).T
    WtW = W.T @ W
    H = jnp.full((W.shape[1], X.shape[1]), jnp.mean(WtX) / jnp.maximum(jnp.mean(WtW), 1e-30), X.dtype)

    def body(_, H):
        return H * WtX / jnp.maximum(WtW @ H, jnp.finfo(X.dtype).tiny)

    return jax.lax.fori_loop(0, n_iter, body, H)
