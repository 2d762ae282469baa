"""From a reference AnnData to the reference loadings P of scCASER (paper Eq. 13).

:func:`map_reference` maps the profiles onto the target's kept peaks (the value of a
target peak is the sum over the reference peaks matched to it; unmatched target peaks get
0), :func:`transform_reference` puts each profile on the scale of one column of the
preprocessed target (the TF-IDF of an average cell of its type, with the target's idf),
:func:`reference_loadings` factorises it into P, and :func:`reference_block` does all of it
for :func:`sccase_jax.enhance`.
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp

from sccase_jax.preprocessing import idf
from sccase_jax.problem import device_matrix
from sccase_jax.reference.matching import ReferenceError, match_peaks
from sccase_jax.start import nmf
from sccase_jax.validate import InputError, default_dtype

__all__ = [
    "check_reference",
    "default_k_ref",
    "map_reference",
    "reference_block",
    "reference_loadings",
    "transform_reference",
]


def check_reference(R, what: str = "the reference", *, allow_empty: bool = False) -> None:
    """Refuse NaN/infinite or negative values and (unless ``allow_empty``) all-zero profiles.

    ``R`` is profiles x peaks (dense or sparse).
    """
    data = R.data if sp.issparse(R) else np.asarray(R)
    if not np.issubdtype(data.dtype, np.number) or np.issubdtype(data.dtype, np.complexfloating):
        raise ReferenceError(f"{what} must hold real numbers, got dtype {data.dtype}")
    if R.shape[0] == 0 or R.shape[1] == 0:
        raise ReferenceError(f"{what} is empty ({R.shape[0]} profiles x {R.shape[1]} peaks)")
    if data.size and not np.all(np.isfinite(data)):
        raise ReferenceError(f"{what} has {int(np.sum(~np.isfinite(data)))} NaN or infinite value(s)")
    if data.size and data.min() < 0:
        raise ReferenceError(
            f"{what} has {int(np.sum(data < 0))} negative value(s); references must be "
            "non-negative counts or scaled counts"
        )
    tot = np.asarray(R.sum(axis=1)).ravel()
    if not allow_empty and np.any(tot <= 0):
        raise ReferenceError(
            f"{what} has {int(np.sum(tot <= 0))} empty profile(s) (all zero): rows "
            f"{np.flatnonzero(tot <= 0)[:5].tolist()}"
        )


def map_reference(ref, target_var, *, method: str = "auto", min_match: float = 0.1,
                  warn_match: float = 0.5):
    """Map a profiles x peaks reference AnnData onto the target peaks ``target_var``.

    Returns ``(Rm, match)``: ``Rm`` (target peaks x profiles, float64 dense), unmatched
    target peaks 0, and the :class:`PeakMatch`.  Raises :class:`ReferenceError` when the
    reference is invalid, when fewer than ``min_match`` of the target peaks are matched, or
    when a profile has no signal on the matched peaks; warns when fewer than
    ``warn_match`` are matched.
    """
    for name, v in (("min_match", min_match), ("warn_match", warn_match)):
        if not 0.0 <= v <= 1.0:
            raise InputError(f"{name} must be in [0, 1], got {v}")
    R = ref.X
    if R is None:
        raise ReferenceError("the reference AnnData has no X")
    R = sp.csr_matrix(R, dtype=np.float64) if sp.issparse(R) else np.asarray(R)
    check_reference(R)
    match = match_peaks(target_var, ref.var, method)
    if match.n_matched == 0:
        raise ReferenceError(
            f"the reference shares no peaks with the target (matched by {match.method}: 0 of "
            f"{match.n_target} target peaks; reference peaks look like {str(ref.var_names[0])!r},"
            f" target peaks like {str(target_var.index[0])!r})"
        )
    msg = (f"reference peaks matched {match.n_matched} of {match.n_target} target peaks "
           f"({match.fraction:.1%}, by {match.method}; {match.n_ref_used} of {match.n_ref} "
           "reference peaks used)")
    if match.fraction < min_match:
        raise ReferenceError(
            f"{msg}: below min_peak_match = {min_match:.0%}; the reference would pull W1 towards 0"
            " on the unmatched peaks. Use a reference on the target's peaks, or lower min_peak_match"
        )
    if match.fraction < warn_match:
        warnings.warn(f"poor reference overlap: {msg}; unmatched peaks get 0 in the reference",
                      UserWarning, stacklevel=2)
    Rm = np.asarray((match.T @ R.T).toarray() if sp.issparse(R) else match.T @ R.T)
    tot = Rm.sum(axis=0)
    if np.any(tot <= 0):
        bad = [str(ref.obs_names[i]) for i in np.flatnonzero(tot <= 0)[:5]]
        raise ReferenceError(f"{int(np.sum(tot <= 0))} reference profile(s) are empty on the matched "
                             f"peaks: {bad}")
    return Rm, match


def transform_reference(Rm, counts, variant: str = "paper", binarize: bool = False) -> np.ndarray:
    """TF-IDF-like transform of the mapped reference with the target's idf (module doc).

    ``Rm`` is kept peaks x profiles, ``counts`` the target's kept peaks x cells counts (the
    matrix the target TF-IDF was computed from).  ``"paper"``: each profile divided by its
    total over the mapped peaks (L1, as a cell), times the idf; ``"l2"``: times the idf,
    then scaled to unit L2 norm.
    """
    C = sp.csr_matrix(counts, dtype=np.float64)
    if binarize:
        C.data = (C.data > 0).astype(np.float64)
    Rm = np.asarray(Rm, np.float64)
    if variant == "paper":
        return idf(C, "paper")[:, None] * Rm / Rm.sum(axis=0, keepdims=True)
    if variant == "l2":
        Y = idf(C, "l2")[:, None] * Rm
        norm = np.linalg.norm(Y, axis=0, keepdims=True)
        return Y / np.where(norm > 0, norm, 1.0)
    raise InputError(f"tfidf variant must be 'paper' or 'l2', got {variant!r}")


def default_k_ref(n_profiles: int, n_components: int) -> int:
    """Default k1 = min(number of reference profiles, k - 1): at least one free column."""
    return int(max(min(n_profiles, n_components - 1), 1 if n_components == 1 else 0))


def reference_loadings(Rt, k_ref: int, *, X=None, n_free: int = 0, seed: int = 0,
                       nmf_iter: int = 200, nmf_tol: float = 0.0, dtype=None) -> np.ndarray:
    """P (peaks x ``k_ref``): the W factor of an NMF of the transformed reference ``Rt``.

    With ``X`` given (the preprocessed target, peaks x cells) the columns of P are rescaled
    to the mean column norm of the W factor of an NMF of ``X`` with ``max(n_free, 1)``
    components (the free block's start, same seed), so that W1 and W2 start on one scale
    and ``alpha`` means the same for every reference.
    """
    dtype = dtype or default_dtype()
    Rt = np.asarray(Rt, np.float64)
    if not 1 <= k_ref <= min(Rt.shape):
        raise InputError(
            f"k_ref must be between 1 and the number of reference profiles = {Rt.shape[1]}, "
            f"got {k_ref}"
        )
    key = jax.random.PRNGKey(seed)
    P, _ = nmf(jnp.asarray(Rt, dtype), k_ref, jax.random.fold_in(key, 1), n_iter=nmf_iter,
               tol=nmf_tol)
    P = np.asarray(P, np.float64)
    norms = np.linalg.norm(P, axis=0)
    P = P / np.where(norms > 0, norms, 1.0)
    if X is None:
        return P * np.mean(norms)
    # The same key as problem.prepare's NMF of the free block, so this is (nearly) its W0.
    _, key_nmf = jax.random.split(key)
    Xd = device_matrix(X, dtype)
    W0, _ = nmf(Xd, max(n_free, 1), key_nmf, n_iter=nmf_iter, tol=nmf_tol,
                host=X if sp.issparse(X) else None)
    return P * float(np.mean(np.linalg.norm(np.asarray(W0, np.float64), axis=0)))


def reference_block(reference, target_var, counts, X, k: int, opts):
    """Map, transform and factorise ``reference`` for a fit of ``X`` with ``k`` components.

    ``target_var`` and ``counts`` are the target's kept peaks (``var`` frame) and counts
    (kept peaks x cells), ``opts`` the resolved :class:`~sccase_jax.options.Options`.
    Returns ``(P, k_ref, info)``: the reference loadings, the reference block's width and
    a record for ``uns`` (profiles, how many peaks matched).
    """
    if not hasattr(reference, "var") or not hasattr(reference, "X"):
        raise InputError("reference must be an AnnData of profiles x peaks")
    Rm, match = map_reference(reference, target_var, method=opts.peak_match,
                              min_match=opts.min_peak_match, warn_match=opts.warn_peak_match)
    k = int(k)
    k1 = default_k_ref(Rm.shape[1], k) if opts.k_ref is None else int(opts.k_ref)
    if not 1 <= k1 <= min(k, Rm.shape[1]):
        raise InputError(f"k_ref must be between 1 and min(n_components = {k}, reference profiles ="
                         f" {Rm.shape[1]}), got {k1}")
    if opts.k_ref is None and k1 < Rm.shape[1]:
        advice = (f"pass n_components >= {Rm.shape[1] + 1} (command line: --k), or None for the "
                  "default rule" if opts.n_components is not None else
                  "the data allow no more components (at most min(peaks, cells)); pass fewer "
                  "profiles or set k_ref to silence this")
        warnings.warn(
            f"n_components = {k} keeps k_ref = {k1} of the {Rm.shape[1]} reference profiles: "
            "the reference is compressed into fewer columns than it has profiles, which "
            "lowered ARI on the Granja donor D6T1 below raw TF-IDF (2,055 cells) and far "
            f"below the uncompressed reference (all cells); {advice}",
            UserWarning,
            stacklevel=3,  # enhance's caller
        )
    Rt = transform_reference(Rm, counts, opts.tfidf, opts.binarize)
    P = reference_loadings(Rt, k1, X=X, n_free=k - k1, seed=opts.seed, nmf_iter=opts.nmf_iter,
                           nmf_tol=opts.nmf_tol, dtype=opts.dtype)
    info = dict(n_profiles=int(Rm.shape[1]), profiles=[str(s) for s in reference.obs_names],
                k_ref=k1, alpha=opts.alpha, match_method=match.method,
                n_target_peaks=match.n_target, n_matched=match.n_matched,
                frac_matched=float(match.fraction), n_ref_peaks=match.n_ref,
                n_ref_peaks_used=match.n_ref_used, min_peak_match=opts.min_peak_match,
                warn_peak_match=opts.warn_peak_match)
    return P, k1, info
