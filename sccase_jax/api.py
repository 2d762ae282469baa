"""Array-level entry point: :func:`fit` a preprocessed peaks x cells matrix."""

from __future__ import annotations

import os
import time
import warnings
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp
from jax.experimental import sparse as jsparse

from sccase_jax.init import (
    dropout_mask,
    gram_matrix,
    gram_matrix_device,
    jaccard_similarity,
    jaccard_similarity_device,
    nmf,
)
from sccase_jax.ops import choose_gram
from sccase_jax.params import Data, Factors, Hyperparams, SolverConfig
from sccase_jax.solver import CONVERGED, MAX_ITER, NONFINITE, run, run_donated

__all__ = [
    "DEFAULT_MAX_ITER",
    "DEFAULT_TOL",
    "FitResult",
    "InputError",
    "Problem",
    "default_dtype",
    "enhanced_matrix",
    "fit",
    "prepare",
    "status_message",
]

DEFAULT_MAX_ITER = 30  # docs/results.md: quality flat from 10 to 100 iterations
DEFAULT_TOL = 1e-6  # the paper's
JACCARD_NORMALIZE = ("column", "row")
_STATUS_NAMES = {CONVERGED: "converged", MAX_ITER: "max_iter", NONFINITE: "nonfinite"}


class InputError(ValueError):
    """Bad user input, reported in one line (the CLI prints it without a traceback)."""


class FitResult(NamedTuple):
    """What :func:`fit` returns (host numpy arrays).

    Attributes
    ----------
    W, H, Z
        Loadings (peaks x k), embedding (k x cells), similarity (cells x cells).
    loss
        F after each iteration (length ``n_iter``).
    initial_loss
        F at the starting point.
    n_iter
        Iterations run.
    converged
        Whether the relative change of F fell below ``tol``.
    status
        ``"converged"``, ``"max_iter"`` or ``"nonfinite"`` (F became non-finite; the last
        finite iterate is returned).
    params
        The settings used, for the record.
    rel_change
        ``|change of F| / |F|`` in the last iteration (``inf`` when none ran): what the
        stopping rule compared with ``tol``.
    """

    W: np.ndarray
    H: np.ndarray
    Z: np.ndarray
    loss: np.ndarray
    initial_loss: float
    n_iter: int
    converged: bool
    status: str
    params: dict
    rel_change: float = float("inf")

    @property
    def message(self) -> str:
        """How the fit ended, in words (:func:`status_message`)."""
        return status_message(self.status, self.n_iter, self.rel_change,
                              self.params.get("tol"), self.params.get("max_iter"))


# A fit stopped by max_iter whose last relative change of F is below this is reported as
# usable: F had levelled off.  In float32 the relative change of F levels off near 5e-6 at
# lam = 1e6 (the float resolution of the iterates), above the paper's tol = 1e-6, and
# clustering quality was the same at 10, 30 and 100 iterations (docs/results.md).
SETTLED = 1e-4


def status_message(status: str, n_iter: int, rel_change: float, tol=None, max_iter=None) -> str:
    """One line saying how a fit ended, for people: converged, iteration budget, non-finite.

    A fit that reached ``max_iter`` is not a failure: with ``rel_change`` below
    :data:`SETTLED` the line says that F had levelled off and the result is usable.
    """
    rel = f"{rel_change:.1e}" if np.isfinite(rel_change) else "n/a"
    tol_s = "" if tol is None else f", tol {float(tol):g}"
    if status == "converged":
        return f"converged after {n_iter} iterations (relative change of F {rel}{tol_s})"
    if status == "nonfinite":
        if n_iter == 0:
            return "the objective is not finite at the starting point"
        return (f"stopped at iteration {n_iter + 1}: the objective became non-finite; the last "
                "finite iterate is returned")
    if n_iter == 0:
        return "no iteration run (max_iter = 0): the result is the starting point"
    budget = f"the iteration budget ({n_iter} iterations, max_iter = {max_iter or n_iter})"
    if np.isfinite(rel_change) and rel_change < SETTLED:
        return (f"reached {budget}; the result is usable: F changed by {rel} of its value in the "
                f"last iteration{tol_s} (F levels off there in float32)")
    return (f"reached {budget} while F still changed by {rel} of its value per iteration{tol_s}; "
            "raise max_iter to fit closer to a minimum")


def default_dtype():
    """float64 when ``jax_enable_x64`` is on, else float32."""
    return jnp.float64 if jax.config.jax_enable_x64 else jnp.float32


def _is_real(value) -> bool:
    """A real number: a Python or NumPy int or float, or a 0-d real array (not a bool)."""
    if isinstance(value, (bool, np.bool_)):
        return False
    if isinstance(value, (int, float, np.integer, np.floating)):
        return True
    return (isinstance(value, (np.ndarray, jax.Array)) and value.ndim == 0
            and value.dtype.kind in "iuf")


def check_int(name: str, value, minimum: int | None = None, *, integral_float: bool = True) -> int:
    """``value`` as a Python int, else an :class:`InputError` naming ``name``.

    Python and NumPy integers are accepted, and (with ``integral_float``) floats with an
    integral value such as ``30.0``; bools, strings, None and other floats are not.
    """
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
    if not ok and integral_float and isinstance(value, (float, np.floating)):
        ok = bool(np.isfinite(value)) and float(value).is_integer()
    if not ok:
        raise InputError(f"{name} must be an integer, got {value!r}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise InputError(f"{name} must be >= {minimum}, got {value}")
    return value


def check_real(name: str, value, minimum: float | None = 0.0, maximum: float | None = None) -> float:
    """``value`` as a finite Python float in ``[minimum, maximum]``, else an :class:`InputError`."""
    ok = _is_real(value) and bool(np.isfinite(value))
    if ok:
        v = float(value)
        ok = (minimum is None or v >= minimum) and (maximum is None or v <= maximum)
    if not ok:
        if maximum is not None:
            want = f"a finite number in [{minimum:g}, {maximum:g}]"
        elif minimum is not None:
            want = f"a finite number >= {minimum:g}"
        else:
            want = "a finite number"
        raise InputError(f"{name} must be {want}, got {value!r}")
    return v


def check_keep_prob(keep_prob) -> float:
    """``keep_prob`` as a float in (0, 1], else an :class:`InputError`."""
    if not (_is_real(keep_prob) and 0.0 < float(keep_prob) <= 1.0):
        raise InputError(f"keep_prob must be in (0, 1], got {keep_prob!r}")
    return float(keep_prob)


def check_seed(seed, low: int = -(2**63), high: int = 2**63 - 1) -> int:
    """``seed`` as a Python int (Python or NumPy integers, not bools) in ``[low, high]``."""
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)):
        raise InputError(f"seed must be an integer, got {seed!r}")
    if not low <= int(seed) <= high:
        raise InputError(f"seed must be an integer in [{low}, {high}], got {seed}")
    return int(seed)


def x64_enabled() -> bool:
    """Whether JAX computes in 64 bits (``jax.config.update("jax_enable_x64", True)``)."""
    return bool(jax.config.jax_enable_x64)


def check_dtype(dtype):
    """The computation dtype for ``dtype``: ``jnp.float32`` or ``jnp.float64``.

    ``None`` gives :func:`default_dtype`.  Anything but float32 and float64 is an
    :class:`InputError`.  float64 needs 64-bit JAX: without ``jax_enable_x64`` it warns
    and gives float32 (what JAX would silently compute in).
    """
    if dtype is None:
        return default_dtype()
    try:
        dt = np.dtype(dtype)
    except TypeError:
        dt = np.dtype(object)  # not a dtype at all (np.dtype(None) would be float64)
    if dt.name not in ("float32", "float64"):
        raise InputError(f"dtype must be float32 or float64, got {dtype!r}")
    if dt == np.float64 and not x64_enabled():
        warnings.warn(
            "dtype=float64 needs 64-bit JAX, which is off: computing in float32. Call "
            'jax.config.update("jax_enable_x64", True) before any JAX computation to fit '
            "in float64",
            UserWarning,
            stacklevel=3,
        )
        return jnp.float32
    return jnp.float64 if dt == np.float64 else jnp.float32


def check_config(config) -> None:
    """``config`` must be None or a :class:`~sccase_jax.params.SolverConfig`."""
    if config is not None and not isinstance(config, SolverConfig):
        raise InputError(
            f"config must be a SolverConfig (sccase_jax.params.SolverConfig(...) or "
            f"release_config(...)), got {type(config).__name__}: {config!r}"
        )


def check_jaccard_normalize(jaccard_normalize) -> None:
    """``jaccard_normalize`` must be ``"column"`` or ``"row"`` (None: unnormalised)."""
    if jaccard_normalize is not None and jaccard_normalize not in JACCARD_NORMALIZE:
        raise InputError(
            f"jaccard_normalize must be 'column', 'row' or None, got {jaccard_normalize!r}"
        )


def check_matrix(X, what: str = "X"):
    """Reject non-numeric, negative, NaN or infinite input with a one-line error."""
    data = X.data if sp.issparse(X) else np.asarray(X)
    if not np.issubdtype(data.dtype, np.number) or np.issubdtype(data.dtype, np.complexfloating):
        raise InputError(f"{what} must hold real numbers, got dtype {data.dtype}")
    if data.size and not np.all(np.isfinite(data)):
        bad = int(np.sum(~np.isfinite(data)))
        raise InputError(f"{what} has {bad} NaN or infinite value(s)")
    if data.size and data.min() < 0:
        raise InputError(f"{what} has {int(np.sum(data < 0))} negative value(s); counts must be >= 0")


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
        try:
            mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (AttributeError, ValueError, OSError):
            return 100_000_000
        return int(mem // (16 * itemsize))
    stats = dev.memory_stats() or {}
    limit = stats.get("bytes_limit")
    return 100_000_000 if not limit else int(limit // (8 * itemsize))


def device_matrix(X, dtype, fmt: str = "auto"):
    """Put a peaks x cells matrix on device: dense, or ``BCOO`` for large sparse inputs
    (more than :func:`dense_limit` entries)."""
    m, n = X.shape
    if fmt == "auto":
        fmt = "dense" if m * n <= dense_limit(dtype) or not sp.issparse(X) else "sparse"
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


def fit(
    X,
    n_components: int,
    *,
    lam: float = 1e6,
    gamma1: float = 1.0,
    gamma2: float = 1.0,
    keep_prob: float = 0.95,
    tol: float = DEFAULT_TOL,
    max_iter: int = DEFAULT_MAX_ITER,
    seed: int = 0,
    config: SolverConfig | None = None,
    jaccard_normalize: str = "column",
    nmf_iter: int = 200,
    init: Factors | None = None,
    x_format: str = "auto",
    dtype: Any = None,
    progress: bool = False,
    P=None,
    k_ref: int = 0,
    alpha: float = 0.0,
    gram: str = "auto",
) -> FitResult:
    """Fit scCASE to an already preprocessed peaks x cells matrix.

    Parameters
    ----------
    X
        Preprocessed accessibility, peaks x cells (scipy sparse or dense), non-negative:
        ``X, peaks, cells = sccase_jax.preprocess(adata.X.T)`` builds it from the raw
        counts of an AnnData (cells x peaks) as :func:`sccase_jax.enhance` does.  X that
        looks like raw counts or like a cells x peaks matrix is fitted with a warning
        (:func:`warn_if_not_preprocessed`).
    n_components
        k, the number of NMF components.
    lam, gamma1, gamma2
        Weights of the similarity term and the ridge terms on W and H (paper Eq. 2).
    keep_prob
        Keep probability s of the random mask R (drawn once from ``seed``).
    tol, max_iter
        Stop when the relative change of F is below ``tol`` (a finite number >= 0), or
        after ``max_iter`` iterations (an integer >= 0; 0 returns the starting point).
    seed
        Seeds the mask R and the NMF start (a Python or NumPy integer).
    config
        Full :class:`~sccase_jax.params.SolverConfig` (anything else is an
        :class:`InputError`); its ``max_iter``, ``tol`` and ``progress`` are replaced by
        the arguments above.  Use
        :func:`~sccase_jax.params.release_config` for the released code's behaviour.
    jaccard_normalize
        ``"column"`` (paper) or ``"row"`` (released code) normalisation of Z0.
    nmf_iter
        HALS sweeps of the NMF start.
    init
        Optional starting :class:`~sccase_jax.params.Factors` (skips NMF and Jaccard).
    x_format
        How X is kept on device for the m x k products: ``"dense"``, ``"sparse"`` (BCOO)
        or ``"auto"`` (dense up to a sixteenth of the host memory on CPU, an eighth of the
        device memory on a GPU: :func:`dense_limit`).
    dtype
        Computation dtype, float32 or float64 (anything else is an :class:`InputError`);
        default float32, or float64 when ``jax_enable_x64`` is on.  float64 needs
        ``jax.config.update("jax_enable_x64", True)``: without it, it warns and computes in
        float32 (:func:`check_dtype`).
    progress
        Print to stderr how long the start took (Gram matrix, Jaccard Z0, NMF start), then
        iteration, F and relative change while fitting.
    P, k_ref, alpha
        scCASER: reference loadings (peaks x ``k_ref``) for the first ``k_ref`` of the
        ``n_components`` columns of W, pulled towards ``P`` with weight ``alpha``.
    gram
        How the solver multiplies by ``G = X^T X``: ``"dense"`` (G formed once),
        ``"sparse"`` (``X^T (X A)`` with X as BCOO, G never formed) or ``"auto"`` (the
        cheaper by :func:`sccase_jax.ops.choose_gram`).
    """
    max_iter = check_int("max_iter", max_iter, 0)
    tol = check_real("tol", tol)
    check_config(config)
    t0 = time.perf_counter()
    prob = prepare(
        X, n_components, lam=lam, gamma1=gamma1, gamma2=gamma2, keep_prob=keep_prob, seed=seed,
        jaccard_normalize=jaccard_normalize, nmf_iter=nmf_iter, init=init, x_format=x_format,
        dtype=dtype, P=P, k_ref=k_ref, alpha=alpha, gram=gram,
    )
    if progress:
        from sccase_jax._progress import stage

        n = prob.factors.Z.shape[0]
        stage(f"start: {n} cells, k = {int(n_components)}, Gram matrix, Jaccard Z0 and NMF "
              f"start in {time.perf_counter() - t0:.1f} s; compiling and running the solver")
    config = (config or SolverConfig())._replace(max_iter=max_iter, tol=tol, progress=progress)
    # Factors made here are ours to donate (Z0's buffer becomes the iterate); a caller's
    # ``init`` may share buffers with arrays the caller keeps, so it is not donated.
    solve = run_donated if init is None else run
    res = solve(prob.data, prob.factors, prob.hp, config)
    return to_fit_result(res, dict(
        n_components=int(n_components), lam=lam, gamma1=gamma1, gamma2=gamma2,
        keep_prob=keep_prob, tol=tol, max_iter=max_iter, seed=seed, k_ref=k_ref, alpha=alpha,
        jaccard_normalize=jaccard_normalize, nmf_iter=nmf_iter, config=config._asdict(),
        dtype=np.dtype(prob.hp.lam.dtype).name, gram="dense" if prob.data.G is not None else "sparse",
    ))


class Problem(NamedTuple):
    """A fit ready to run: ``run(problem.data, problem.factors, problem.hp, config)``."""

    data: Data
    factors: Factors
    hp: Hyperparams


def check_input(X, n_components):
    """Validate X (peaks x cells) and k; return X as CSC sparse or a dense ndarray."""
    X = X.tocsc() if sp.issparse(X) else np.asarray(X)
    if X.ndim != 2:
        raise InputError(f"X must be a 2-d peaks x cells matrix, got shape {X.shape}")
    check_matrix(X)
    m, n = X.shape
    if isinstance(n_components, bool) or not isinstance(n_components, (int, np.integer)):
        raise InputError(f"n_components must be an integer, got {n_components!r}")
    if n_components < 1:
        raise InputError(f"n_components must be >= 1, got {n_components}")
    if n_components > min(m, n):
        raise InputError(
            f"n_components = {n_components} exceeds min(peaks, cells) = {min(m, n)}"
            f" ({m} peaks, {n} cells)"
        )
    return X


# How many stored values the raw-count check looks at (a seeded sample beyond this).
LOOKS_RAW_SAMPLE = 1_000_000


def warn_if_not_preprocessed(X) -> None:
    """Warn when a peaks x cells ``X`` looks like raw counts or like a cells x peaks matrix.

    :func:`fit` expects the preprocessed matrix (``sccase_jax.preprocess(counts)[0]``, L2
    TF-IDF by default).  Raw (or binarised) counts hold whole numbers only, which TF-IDF
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
            "on the AnnData", UserWarning, stacklevel=3)
        return
    sq = X.multiply(X) if sp.issparse(X) else np.asarray(X) ** 2
    cols = np.sqrt(np.asarray(sq.sum(axis=0)).ravel())
    rows = np.sqrt(np.asarray(sq.sum(axis=1)).ravel())
    unit = lambda v: v.size > 1 and np.allclose(v[v > 0], 1.0, rtol=1e-3)  # noqa: E731
    if unit(rows) and not unit(cols):
        warnings.warn(
            f"X ({X.shape[0]} x {X.shape[1]}) looks transposed: its rows have unit L2 norm, as "
            "cells do after the L2 TF-IDF. fit expects peaks x cells (an AnnData's X "
            "transposed)", UserWarning, stacklevel=3)


def prepare(
    X,
    n_components: int,
    *,
    lam: float = 1e6,
    gamma1: float = 1.0,
    gamma2: float = 1.0,
    alpha: float = 0.0,
    keep_prob: float = 0.95,
    seed: int = 0,
    jaccard_normalize: str = "column",
    nmf_iter: int = 200,
    init: Factors | None = None,
    x_format: str = "auto",
    dtype: Any = None,
    P=None,
    k_ref: int = 0,
    gram: str = "dense",
    reduce_on: str = "auto",
) -> Problem:
    """Validate X and build the device data, the starting factors and the hyperparameters.

    This is everything :func:`fit` does before the solver runs; sweeps and custom solvers
    start from it.  ``P`` (peaks x ``k_ref``) enables the scCASER reference block: the first
    ``k_ref`` columns of W start from ``P`` and are pulled towards it with weight ``alpha``.
    ``reduce_on`` says where ``G = X^T X`` and the Jaccard start are formed: ``"host"``
    (sparse scipy products, float64 accumulation), ``"device"`` (one dense product each on
    the device copy of X; needs X dense there) or ``"auto"``: device whenever X is dense
    there (2x faster than the host products on the 2-core CPU at 4k cells, seconds faster
    still on a GPU), else host.
    """
    X = check_input(X, n_components)
    warn_if_not_preprocessed(X)
    m, n = X.shape
    check_keep_prob(keep_prob)
    for name, v in (("lam", lam), ("gamma1", gamma1), ("gamma2", gamma2), ("alpha", alpha)):
        check_real(name, v)
    seed = check_seed(seed)
    check_jaccard_normalize(jaccard_normalize)
    nmf_iter = check_int("nmf_iter", nmf_iter, 0)
    dtype = check_dtype(dtype)
    k = int(n_components)
    k_ref = check_int("k_ref", k_ref, 0)
    if not 0 <= k_ref <= k:
        raise InputError(f"k_ref must be between 0 and n_components = {k}, got {k_ref}")

    if reduce_on not in ("auto", "host", "device"):
        raise InputError(f"reduce_on must be 'auto', 'host' or 'device', got {reduce_on!r}")

    key_mask, key_nmf = jax.random.split(jax.random.PRNGKey(seed))
    try:
        gram = choose_gram(X, gram)
    except ValueError as exc:
        raise InputError(str(exc)) from None
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
    Pfull = np.zeros((m, k), np.dtype(dtype))
    if k_ref:
        P = np.asarray(P, np.dtype(dtype))
        if P.shape != (m, k_ref):
            raise InputError(f"P must have shape (peaks, k_ref) = {(m, k_ref)}, got {P.shape}")
        Pfull[:, :k_ref] = P
    if init is None:
        if k > k_ref:
            W0, H0 = nmf(Xd, k - k_ref, key_nmf, n_iter=nmf_iter)
        else:
            W0, H0 = jnp.zeros((m, 0), dtype), jnp.zeros((0, n), dtype)
        if k_ref:
            W0 = jnp.concatenate([jnp.asarray(Pfull[:, :k_ref]), W0], axis=1)
            H0 = jnp.concatenate([_nnls_h(Xd, jnp.asarray(Pfull[:, :k_ref]), nmf_iter), H0], axis=0)
        if reduce_on == "device":
            Z0 = jaccard_similarity_device(Xd, jaccard_normalize)
        else:
            Z0 = jnp.asarray(jaccard_similarity(X, jaccard_normalize), dtype)
        init = Factors(W0, H0, Z0)
    else:
        init = Factors(*(jnp.asarray(a, dtype) for a in init))
        want = ((m, k), (k, n), (n, n))
        if tuple(a.shape for a in init) != want:
            raise InputError(f"init shapes must be W {want[0]}, H {want[1]}, Z {want[2]}")
    M = np.zeros(k, np.dtype(dtype))
    M[:k_ref] = 1.0
    data = Data(X=Xd, G=G, R=dropout_mask(key_mask, n, keep_prob), P=jnp.asarray(Pfull), M=jnp.asarray(M))
    hp = Hyperparams.create(lam, gamma1, gamma2, alpha, dtype=dtype)
    return Problem(data, init, hp)


def _nnls_h(X, W, n_iter: int):
    """H >= 0 minimising ||X - W H|| for fixed W (multiplicative updates)."""
    WtX = (X.T @ W).T
    WtW = W.T @ W
    H = jnp.full((W.shape[1], X.shape[1]), jnp.mean(WtX) / jnp.maximum(jnp.mean(WtW), 1e-30), X.dtype)

    def body(_, H):
        return H * WtX / jnp.maximum(WtW @ H, jnp.finfo(X.dtype).tiny)

    return jax.lax.fori_loop(0, n_iter, body, H)


def to_fit_result(res, params: dict) -> FitResult:
    """Move a solver :class:`~sccase_jax.solver.Result` to host numpy."""
    res = jax.device_get(res)
    n_iter = int(res.num_steps)
    return FitResult(
        W=np.asarray(res.factors.W),
        H=np.asarray(res.factors.H),
        Z=np.asarray(res.factors.Z),
        loss=np.asarray(res.loss_history)[:n_iter].copy(),
        initial_loss=float(res.initial_loss),
        n_iter=n_iter,
        converged=bool(res.converged),
        status=_STATUS_NAMES.get(int(res.status), "running"),
        params=params,
        rel_change=float(res.rel_change),
    )


def enhanced_matrix(X, Z, block: int = 1024, dtype=np.float32, device: bool | None = None) -> np.ndarray:
    """The enhanced matrix ``(X Z)^T`` (cells x peaks), computed ``block`` cells at a time.

    ``X`` is peaks x cells (scipy sparse or dense) and stays sparse on the host; only one
    block of the dense result exists besides the output array.  ``device`` (default: on a
    GPU or TPU) runs the block products on device (:func:`sccase_jax.io.block_product`).
    """
    from sccase_jax.io import block_product

    block = check_int("block", block, 1, integral_float=False)
    m, n = X.shape
    raw = block_product(X, Z, block, dtype, device)
    out = np.empty((n, m), dtype=dtype)
    for j in range(0, n, block):
        out[j : j + block] = raw(j)
    return out
