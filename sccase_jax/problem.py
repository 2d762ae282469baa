"""A fit ready to run: the device data, the starting point and the weights (:func:`prepare`).

:func:`prepare` is everything :func:`sccase_jax.fit` does before the solver runs; sweeps
and custom solvers start from it.  It checks X, puts it on the device (dense, or ``BCOO``
for large sparse inputs: :func:`device_matrix`), forms the cell Gram matrix ``G = X^T X``
unless the products go through the sparse X (:func:`sccase_jax.ops.choose_gram`), draws the
mask R and builds the start of :mod:`sccase_jax.start` (NMF for W and H, the Jaccard
similarity for Z; scCASER: the reference block of W from ``P``).
"""

from __future__ import annotations

import os
import warnings
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp
from jax.experimental import sparse as jsparse

from sccase_jax.objectives.batch import one_hot
from sccase_jax.ops import choose_gram
from sccase_jax.options import Options
from sccase_jax.params import Data, Factors, Hyperparams
from sccase_jax.start import (
    dropout_mask,
    gram_matrix,
    gram_matrix_device,
    jaccard_similarity,
    jaccard_similarity_device,
    nmf,
    nnls_h,
)
from sccase_jax.validate import InputError, check_int, check_matrix, default_dtype

__all__ = [
    "Problem",
    "Reduced",
    "batch_one_hot",
    "check_input",
    "dense_limit",
    "depth_vector",
    "device_matrix",
    "prepare",
    "reduce",
    "reference_columns",
    "resolve_k_ref",
    "start_wh",
    "warn_if_not_preprocessed",
]

# How many stored values the raw-count check looks at (a seeded sample beyond this).
LOOKS_RAW_SAMPLE = 1_000_000
REDUCE_ON = ("auto", "host", "device")


class Problem(NamedTuple):
    """A fit ready to run: ``run(problem.data, problem.factors, problem.hp, config)``."""

    data: Data
    factors: Factors
    hp: Hyperparams


class Reduced(NamedTuple):
    """X on the device and the cell Gram matrix it reduces to (:func:`reduce`)."""

    X: Any  # peaks x cells on the device, dense or BCOO
    G: Any  # X^T X (cells x cells) on the device, or None when products go through X
    reduce_on: str  # where G and the Jaccard start are formed: "host" or "device"


def reduce(X, options: Options | None = None, *, reduce_on: str = "auto", **overrides) -> Reduced:
    """Put a preprocessed peaks x cells X on the device and form ``G = X^T X`` once.

    What :func:`prepare` does first; :func:`sccase_jax.enhance` calls it before estimating
    k, whose PCA then comes from G (:func:`~sccase_jax.estimate.pca_from_gram`) instead of
    a sparse SVD of X, and hands the result to :func:`prepare` (``reduced=``).
    """
    opts = (options or Options()).replace(**overrides).resolved()
    if reduce_on not in REDUCE_ON:
        raise InputError(f"reduce_on must be 'auto', 'host' or 'device', got {reduce_on!r}")
    X = X.tocsc() if sp.issparse(X) else np.asarray(X)
    return Reduced(*_device_data(X, opts.dtype or default_dtype(), opts.gram, opts.x_format,
                                 reduce_on))


def host_memory() -> int | None:
    """Bytes of RAM (the physical pages), or None when the system does not say."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return None


def dense_limit(dtype) -> int:
    """Most entries of X kept dense on device by ``x_format="auto"``.

    One sixteenth of the host memory on CPU (the dense X shares the RAM with the n x n
    arrays of the fit; 1.5 GB of X on a 24 GB machine), one eighth of the device memory on
    a GPU or TPU.  Dense X makes the start and the thin products faster than ``BCOO``
    (2x at 8,000 cells on the 2-core CPU, docs/performance.md).  1e8 if the memory size
    cannot be read.
    """
    itemsize = np.dtype(dtype).itemsize
    dev = jax.devices()[0]
    if dev.platform == "cpu":
        mem = host_memory()
        return 100_000_000 if mem is None else int(mem // (16 * itemsize))
    stats = dev.memory_stats() or {}
    limit = stats.get("bytes_limit")
    return 100_000_000 if not limit else int(limit // (8 * itemsize))


# On a CPU a sparse X sparser than this is kept as BCOO on the device by x_format="auto":
# its thin products (X A, W^T X: the NMF start and two per iteration) are then 2x faster
# than the dense ones at scATAC densities (2-3 % at 2,000 cells, 8,700-118,000 peaks,
# experiments/start_costs.py), and G and the Jaccard counts come from the host's sparse
# products (start.crossprod).  On GPUs and TPUs dense X stays faster (the earlier rule).
DENSE_MIN_DENSITY = {"cpu": 0.1}


def device_matrix(X, dtype, fmt: str = "auto"):
    """Put a peaks x cells matrix on device: dense, or ``BCOO`` for large sparse inputs
    (more than :func:`dense_limit` entries) and, on a CPU, sparse ones (below
    :data:`DENSE_MIN_DENSITY`)."""
    m, n = X.shape
    if fmt == "auto":
        sparse_in = sp.issparse(X)
        fill = X.nnz / max(m * n, 1) if sparse_in else 1.0
        fmt = "dense" if (not sparse_in or (
            m * n <= dense_limit(dtype)
            and fill >= DENSE_MIN_DENSITY.get(jax.default_backend(), 0.0))) else "sparse"
    if fmt == "dense":
        # Cast while still sparse: no float64 dense copy of X on the host.
        return jnp.asarray(X.astype(np.dtype(dtype)).toarray() if sp.issparse(X) else np.asarray(X), dtype)
    if fmt == "sparse":
        # Entries in row-major order (a CSC input, such as a transposed AnnData X, would
        # store them by column): the sparse products step through them in that order
        # (ops.x_matmul) and gather and scatter with far better locality: one G A in a
        # loop took 0.56 s instead of 0.85 s at 1,000 cells x 10,000 peaks (3.8 %), 0.12
        # instead of 0.14 s at 2,000 x 20,000 (0.2 %).
        Xr = X.astype(np.dtype(dtype)).tocsr() if sp.issparse(X) else np.asarray(X, dtype)
        return jsparse.BCOO.from_scipy_sparse(sp.coo_matrix(Xr))
    raise InputError(f"x_format must be 'auto', 'dense' or 'sparse', got {fmt!r}")


def check_input(X, n_components):
    """Validate X (peaks x cells) and k; return X as CSC sparse or a dense ndarray."""
    X = X.tocsc() if sp.issparse(X) else np.asarray(X)
    if X.ndim != 2:
        raise InputError(f"X must be a 2-d peaks x cells matrix, got shape {X.shape}")
    check_matrix(X)
    m, n = X.shape
    n_components = check_int("n_components", n_components, 1, integral_float=False)
    if n_components > min(m, n):
        raise InputError(
            f"n_components = {n_components} exceeds min(peaks, cells) = {min(m, n)}"
            f" ({m} peaks, {n} cells)"
        )
    return X


def warn_if_not_preprocessed(X) -> None:
    """Warn when a peaks x cells ``X`` looks like raw counts or like a cells x peaks matrix.

    :func:`sccase_jax.fit` expects the preprocessed matrix (``sccase_jax.preprocess(counts)[0]``,
    L2 TF-IDF by default).  Raw (or binarised) counts hold whole numbers only, which TF-IDF
    never gives; a transposed L2 TF-IDF has rows of unit norm instead of columns.  Both
    fit without an error and give a poor result, so they are named, not refused.
    """
    data = X.data if sp.issparse(X) else np.asarray(X).ravel()
    data = data[data != 0]
    if data.size > LOOKS_RAW_SAMPLE:
        data = np.random.default_rng(0).choice(data, LOOKS_RAW_SAMPLE, replace=False)
    if data.size and np.all(data == np.round(data)):
        warnings.warn(
            "X holds whole numbers only: it looks like raw (or binarised) counts. fit expects "
            "the preprocessed peaks x cells matrix: X, peaks, cells = "
            "sccase_jax.preprocess(counts_peaks_x_cells) (L2 TF-IDF), or use sccase_jax.enhance "
            "on the AnnData", UserWarning, stacklevel=4)
        return
    sq = X.multiply(X) if sp.issparse(X) else np.asarray(X) ** 2
    cols = np.sqrt(np.asarray(sq.sum(axis=0)).ravel())
    rows = np.sqrt(np.asarray(sq.sum(axis=1)).ravel())
    unit = lambda v: v.size > 1 and np.allclose(v[v > 0], 1.0, rtol=1e-3)  # noqa: E731
    if unit(rows) and not unit(cols):
        warnings.warn(
            f"X ({X.shape[0]} x {X.shape[1]}) looks transposed: its rows have unit L2 norm, as "
            "cells do after the L2 TF-IDF. fit expects peaks x cells (an AnnData's X "
            "transposed)", UserWarning, stacklevel=4)


def prepare(X, n_components: int, options: Options | None = None, *, P=None, k_ref=None,
            init: Factors | None = None, reduce_on: str = "auto", batch=None, depth=None,
            reduced: Reduced | None = None, **overrides) -> Problem:
    """Check X and build the device data, the starting factors and the hyperparameters.

    ``options`` (an :class:`~sccase_jax.options.Options`, default the defaults) with
    ``overrides`` on top gives the fit's settings (``lam``, ``gamma1``, ``gamma2``,
    ``alpha``, ``keep_prob``, ``seed``, ``jaccard_normalize``, ``nmf_iter``, ``nmf_tol``, ``x_format``,
    ``dtype``, ``gram``).  ``P`` (peaks x ``k_ref``; ``k_ref`` defaults to its columns)
    enables the scCASER reference block: the first ``k_ref`` columns of W start from
    ``P`` and are pulled towards it with weight ``alpha``.  ``init`` replaces the start
    (NMF and Jaccard) by given :class:`~sccase_jax.params.Factors`.  ``reduce_on`` says
    where ``G = X^T X`` and the Jaccard start are formed: ``"host"`` (sparse scipy
    products, float64 accumulation), ``"device"`` (one dense product each on the device
    copy of X; needs X dense there) or ``"auto"``: device whenever X is dense there (2x
    faster than the host products on the 2-core CPU at 4k cells, seconds faster still on
    a GPU), else host.  ``batch`` (one integer code per cell of X) adds the batch term
    ``batch_weight x lam x ||A Z||^2`` (:mod:`~sccase_jax.objectives.batch`); ``depth``
    (the relative depth of each cell) the depth term (:mod:`~sccase_jax.objectives.depth`).
    ``reduced``: the :func:`reduce` of this X, when the caller formed it already.
    """
    opts = (options or Options()).replace(**overrides).resolved()
    if reduce_on not in REDUCE_ON:
        raise InputError(f"reduce_on must be 'auto', 'host' or 'device', got {reduce_on!r}")
    c = checked(X, n_components, opts, P, k_ref, batch, depth)
    X, k, k_ref, dtype = c.X, c.k, c.k_ref, c.dtype
    m, n = X.shape
    if reduced is None:
        Xd, G, reduce_on = _device_data(X, dtype, opts.gram, opts.x_format, reduce_on)
    else:
        Xd, G, reduce_on = reduced
        if tuple(Xd.shape) != (m, n):
            raise InputError(f"reduced holds a {Xd.shape[0]} x {Xd.shape[1]} X, not {m} x {n}")
    if init is None:
        init = _start(X, Xd, k, k_ref, c.P, c.key_nmf, opts, reduce_on, dtype)
    else:
        init = Factors(*(jnp.asarray(a, dtype) for a in init))
        want = ((m, k), (k, n), (n, n))
        if tuple(a.shape for a in init) != want:
            raise InputError(f"init shapes must be W {want[0]}, H {want[1]}, Z {want[2]}")
    data = Data(X=Xd, G=G, R=dropout_mask(c.key_mask, n, opts.keep_prob), P=jnp.asarray(c.P),
                M=jnp.asarray(c.M), batch=c.batch, batch_mu=c.batch_mu, depth=c.depth)
    return Problem(data, init, c.hp)


class Checked(NamedTuple):
    """What every start (dense or on a support) takes from its checked input
    (:func:`checked`): X, k, the reference columns (``P`` m x k, ``M``), the dtype, the
    keys of the mask and of the NMF start, the batch one-hot and weight, the relative
    depths and the hyperparameters."""

    X: Any
    k: int
    k_ref: int
    dtype: Any
    key_mask: Any
    key_nmf: Any
    P: Any
    M: Any
    batch: Any
    batch_mu: Any
    depth: Any
    hp: Hyperparams


def checked(X, n_components: int, opts: Options, P=None, k_ref=None, batch=None,
            depth=None) -> Checked:
    """Check a fit's input (X, k, the reference, the batches, the depths) and derive what
    every start shares from it (:class:`Checked`)."""
    X = check_input(X, n_components)
    warn_if_not_preprocessed(X)
    m, n = X.shape
    k = int(n_components)
    k_ref = resolve_k_ref(P, k_ref, k)
    dtype = opts.dtype or default_dtype()
    key_mask, key_nmf = jax.random.split(jax.random.PRNGKey(opts.seed))
    Pfull, M = reference_columns(P, k_ref, m, k, dtype)
    codes, mu = batch_one_hot(batch, n, opts, dtype)
    hp = Hyperparams.create(opts.lam, opts.gamma1, opts.gamma2, opts.alpha if k_ref else 0.0,
                            dtype=dtype)
    return Checked(X, k, k_ref, dtype, key_mask, key_nmf, Pfull, M, codes, mu,
                   None if depth is None else depth_vector(depth, n, dtype), hp)


def resolve_k_ref(P, k_ref, k: int) -> int:
    """The number of reference columns of W: ``k_ref``, else ``P``'s columns, else 0; checked
    against ``k``."""
    k_ref = 0 if P is None and k_ref is None else (np.shape(P)[1] if k_ref is None else k_ref)
    k_ref = check_int("k_ref", k_ref, 0)
    if not 0 <= k_ref <= k:
        raise InputError(f"k_ref must be between 0 and n_components = {k}, got {k_ref}")
    return k_ref


def reference_columns(P, k_ref: int, m: int, k: int, dtype):
    """``(Pfull, M)`` (NumPy, ``dtype``): scCASER's ``P`` in the first ``k_ref`` of k columns
    (m x k, zero elsewhere) and the mask of those columns (k, 1.0 on them)."""
    Pfull = np.zeros((m, k), np.dtype(dtype))
    if k_ref:
        P = np.asarray(P, np.dtype(dtype))
        if P.shape != (m, k_ref):
            raise InputError(f"P must have shape (peaks, k_ref) = {(m, k_ref)}, got {P.shape}")
        Pfull[:, :k_ref] = P
    M = np.zeros(k, np.dtype(dtype))
    M[:k_ref] = 1.0
    return Pfull, M


def batch_one_hot(batch, n: int, opts: Options, dtype):
    """``(Ob, mu)`` of the batch term: the one-hot batches (n x B, on the device) of integer
    codes (one per cell; renumbered 0..B-1) and the weight ``batch_weight x lam``; ``(None,
    None)`` without ``batch``."""
    if batch is None:
        return None, None
    codes = np.asarray(batch)
    if codes.shape != (n,) or codes.dtype.kind not in "iu" or codes.min() < 0:
        raise InputError(f"batch must hold one integer code >= 0 per cell ({n}), got {codes.shape}")
    Ob = jnp.asarray(one_hot(np.unique(codes, return_inverse=True)[1], np.dtype(dtype)))
    return Ob, jnp.asarray(opts.batch_weight * opts.lam, dtype)


def depth_vector(depth, n: int, dtype):
    """The depth term's relative depths (n, on the device), checked: positive and finite."""
    p = np.asarray(depth, np.float64)
    if p.shape != (n,) or not np.all(np.isfinite(p)) or p.min() <= 0:
        raise InputError(f"depth must hold one positive finite value per cell ({n})")
    return jnp.asarray(p, dtype)


def _device_data(X, dtype, gram: str, x_format: str, reduce_on: str):
    """``(X on device, G or None, where G and Z0 are reduced)``."""
    gram = choose_gram(X, gram)
    Xd = device_matrix(X, dtype, "sparse" if gram == "sparse" and x_format == "auto" else x_format)
    dense_on_device = not isinstance(Xd, jsparse.BCOO)
    if reduce_on == "auto":
        reduce_on = "device" if dense_on_device else "host"
    elif reduce_on == "device" and not dense_on_device:
        raise InputError("reduce_on='device' needs X dense on device (x_format='dense')")
    if gram == "sparse":  # G is never formed; the solver multiplies through a BCOO X
        G = None
    elif reduce_on == "device":
        G = gram_matrix_device(Xd)
    else:
        G = jnp.asarray(gram_matrix(X, np.dtype(dtype)))
    return Xd, G, reduce_on


def _start(X, Xd, k: int, k_ref: int, Pfull, key_nmf, opts: Options, reduce_on: str, dtype):
    """The starting :class:`~sccase_jax.params.Factors`: the NMF of X for the free block of
    W and H, ``P`` and its non-negative least-squares H for the reference block, the
    Jaccard similarity for Z."""
    W0, H0 = start_wh(X, Xd, k, k_ref, Pfull, key_nmf, opts, dtype)
    if reduce_on == "device":
        Z0 = jaccard_similarity_device(Xd, opts.jaccard_normalize)
    else:
        Z0 = jnp.asarray(jaccard_similarity(X, opts.jaccard_normalize), dtype)
    return Factors(W0, H0, Z0)


def start_wh(X, Xd, k: int, k_ref: int, Pfull, key_nmf, opts: Options, dtype):
    """``(W0, H0)``: the NMF of X (``key_nmf``) for the free ``k - k_ref`` columns of W and
    rows of H, ``P`` and its non-negative least-squares H for the ``k_ref`` reference ones
    (first).  The dense and the support-restricted fits start from it."""
    m, n = X.shape
    if k > k_ref:
        W0, H0 = nmf(Xd, k - k_ref, key_nmf, n_iter=opts.nmf_iter, tol=opts.nmf_tol, host=X,
                     sketch=opts.nmf_sketch)
    else:
        W0, H0 = jnp.zeros((m, 0), dtype), jnp.zeros((0, n), dtype)
    if k_ref:
        P1 = jnp.asarray(Pfull[:, :k_ref])
        W0 = jnp.concatenate([P1, W0], axis=1)
        H0 = jnp.concatenate([nnls_h(Xd, P1, opts.nmf_iter), H0], axis=0)
    return W0, H0
