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

from sccase_jax.ops import wt_x

__all__ = [
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


def _blocked_crossprod(A, Bm, dtype, block: int = 2048):
    """``A^T Bm`` as a dense array, column block by column block (sparse-aware)."""
    n = Bm.shape[1]
    out = np.empty((A.shape[1], n), dtype=dtype)
    At = A.T.tocsr() if sp.issparse(A) else A.T
    for j in range(0, n, block):
        blk = Bm[:, j : j + block]
        prod = At @ blk
        out[:, j : j + block] = prod.toarray() if sp.issparse(prod) else prod
    return out


def gram_matrix(X, dtype=np.float32, block: int = 2048) -> np.ndarray:
    """``G = X^T X`` (cells x cells) from a peaks x cells matrix, accumulated in float64."""
    X = sp.csc_matrix(X, dtype=np.float64) if sp.issparse(X) else np.asarray(X, np.float64)
    return _blocked_crossprod(X, X, np.float64, block).astype(dtype, copy=False)


def jaccard_similarity(X, normalize: str | None = "column", block: int = 2048) -> np.ndarray:
    """Jaccard similarity between the binarised cell profiles (columns of X).

    ``J[i, j] = |a_i & a_j| / |a_i | a_j|`` with counts in int64 (the released code's int16
    overflows).  Two empty cells get 0.  ``normalize="column"`` makes each column sum 1
    (paper), ``"row"`` each row (released code), ``None`` leaves J as is.
    Returns float64 (n x n).
    """
    Xb = sp.csc_matrix(X) if sp.issparse(X) else sp.csc_matrix(np.asarray(X))
    Xb = Xb.astype(bool).astype(np.int64)
    inter = _blocked_crossprod(Xb, Xb, np.int64, block)
    size = np.asarray(Xb.sum(axis=0)).ravel()
    union = size[:, None] + size[None, :] - inter
    J = np.divide(inter, union, out=np.zeros(inter.shape), where=union > 0)
    if normalize == "column":
        s = J.sum(axis=0, keepdims=True)
        J = np.divide(J, s, out=np.zeros_like(J), where=s > 0)
    elif normalize == "row":
        s = J.sum(axis=1, keepdims=True)
        J = np.divide(J, s, out=np.zeros_like(J), where=s > 0)
    elif normalize is not None:
        raise ValueError(f"normalize must be 'column', 'row' or None, got {normalize!r}")
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


def _nndsvda(X, k, key, n_power: int = 4):
    """NNDSVD-a start from a randomized truncated SVD of X (dense or BCOO)."""
    m, n = X.shape
    dtype = X.dtype
    ell = min(k + 10, min(m, n))
    Y = X @ jax.random.normal(key, (n, ell), dtype)
    for _ in range(n_power):
        Y, _ = jnp.linalg.qr(Y)
        Y, _ = jnp.linalg.qr(X @ (X.T @ Y))
    Qm, _ = jnp.linalg.qr(Y)
    small = (X.T @ Qm).T  # ell x n
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
    mean = jnp.sum(X.T @ jnp.ones((m,), dtype)) / (m * n)
    W = jnp.where(W > 0, W, mean)
    H = jnp.where(H > 0, H, mean)
    return W, H


@partial(jax.jit, static_argnames=("k", "n_iter", "trace", "inner"))
def _nmf(X, key, k: int, n_iter: int, tol, trace: bool = False, inner: int = 1):
    W, H = _nndsvda(X, k, key)
    eps = jnp.finfo(X.dtype).tiny
    dtype = W.dtype

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

    # ||X - W H||^2 = ||X||^2 - 2 <W^T X, H> + <W^T W, H H^T> after each sweep, from the
    # products the sweep forms anyway (in float64-free arithmetic: the residual of a
    # rank-k fit of scATAC data is most of ||X||^2, so nothing cancels).
    xx = jnp.sum(jnp.square(X.data if hasattr(X, "data") and not isinstance(X, jax.Array) else X))

    def sweep(carry):
        i, W, H, f_prev, _, hist = carry
        XHt, HHt = X @ H.T, H @ H.T
        for _ in range(inner):  # inner > 1: the products reused (accelerated HALS)
            W = hals_cols(W, XHt, HHt)
        WtX, WtW = wt_x(X, W), W.T @ W
        H_new = H
        for _ in range(inner):
            H_new = hals_rows(H_new, WtX, WtW)
        f = xx - 2.0 * jnp.vdot(WtX, H_new) + jnp.vdot(WtW, H_new @ H_new.T)
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

    hist = jnp.full((n_iter if trace else 0, 3), jnp.nan, dtype)
    init = (jnp.asarray(0, jnp.int32), W, H, jnp.asarray(jnp.inf, dtype),
            jnp.asarray(jnp.inf, dtype), hist)
    sweeps, W, H, _, _, hist = lax.while_loop(keep_going, sweep, init)
    return W, H, sweeps, hist


def nmf(X, k: int, key, n_iter: int = 200, tol: float = 0.0, *, trace: bool = False,
        inner: int = 1):
    """Non-negative factorisation ``X ~ W H`` (W: m x k, H: k x n), seeded by ``key``.

    NNDSVD-a start (randomized SVD, the random part seeded) followed by HALS sweeps, all
    jitted; ``X`` may be a dense array or a ``BCOO`` matrix.  The sweeps stop after
    ``n_iter``, or earlier once a sweep lowers ``||X - W H||^2`` by less than ``tol`` of
    itself (``0``: all ``n_iter``).  ``trace=True`` returns ``(W, H, sweeps, history)``
    with the history of (objective, its relative decrease, ``||dH|| / ||H||``) per sweep.
    ``inner``: HALS passes over W (and then over H) per pair of products with X, which
    cost O(nnz(X) k) against O((m + n) k^2) for a pass (accelerated HALS, Gillis and
    Glineur 2012); 1 is plain HALS.
    """
    m, n = X.shape
    if not 1 <= k <= min(m, n):
        raise ValueError(f"n_components must be between 1 and min(peaks, cells) = {min(m, n)}, got {k}")
    with jax.default_matmul_precision("highest"):  # same start on CPU and on tensor cores
        W, H, sweeps, hist = _nmf(X, key, k, n_iter, jnp.asarray(tol, X.dtype), trace, inner)
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
