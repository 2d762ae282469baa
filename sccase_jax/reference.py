r"""scCASER references: peak matching, reference builders and the reference loadings P.

A reference is an AnnData of **profiles x peaks** (bulk samples, pseudo-bulk cell types or
clusters of the target itself).  It enters the model (paper Eq. 13) as ``P`` (peaks x
``k1``), the loadings of a non-negative factorisation of the reference mapped onto the
target's kept peaks.

Peak matching (:func:`match_peaks`) never assumes the same peak order:

``"name"``
    target and reference peaks with the same name.
``"overlap"``
    genomic intervals that overlap by at least one base (half-open ``[start, end)``), from
    ``chr``/``chrom``/``chromosome``/``seqnames`` + ``start`` + ``end`` columns of ``var``
    or from names ``chr:start-end`` (also ``chr-start-end`` and ``chr_start_end``).
    Intervals are sorted per chromosome and searched with :func:`numpy.searchsorted`.
``"auto"`` (default)
    overlap when both sides have coordinates, else names.

The value of a target peak in the mapped reference is the **sum** over the reference peaks
matched to it (one for name matching; reads in the overlapping regions for overlap
matching).  Unmatched target peaks get 0.

Transform of the mapped reference (:func:`transform_reference`), chosen so that each
profile is on the scale of one column of the preprocessed target ``X``: the profile is
divided by its total over the mapped peaks (``"paper"`` TF-IDF, L1 per cell) and
multiplied by the target's idf; for the ``"l2"`` TF-IDF the profile is multiplied by the
target's idf and scaled to unit L2 norm.  A mapped profile is thus the TF-IDF profile of
an average cell of its type.

Builders (arrays in, AnnData out): :func:`bulk_reference`, :func:`pseudobulk_reference`,
:func:`self_reference`.
"""

from __future__ import annotations

import re
import warnings
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp

from sccase_jax.api import InputError, default_dtype
from sccase_jax.init import nmf

__all__ = [
    "PeakMatch",
    "ReferenceError",
    "bulk_reference",
    "check_reference",
    "default_k_ref",
    "map_reference",
    "match_peaks",
    "parse_peak_names",
    "peak_intervals",
    "pseudobulk_reference",
    "reference_loadings",
    "self_reference",
    "transform_reference",
]

_CHROM_COLS = ("chr", "chrom", "chromosome", "seqnames")
_START_COLS = ("start", "chromStart")
_END_COLS = ("end", "chromEnd")
_NAME_RE = re.compile(r"^(.+?)[:_-](\d+)[-_](\d+)$")


class ReferenceError(InputError):  # noqa: A001 - a domain name, not the builtin
    """A reference that cannot be used (one-line message; the CLI exits with status 2)."""


class PeakMatch(NamedTuple):
    """How reference peaks map onto target peaks.

    Attributes
    ----------
    T
        Sparse 0/1 matrix (target peaks x reference peaks); the mapped reference is
        ``T @ ref.T``.
    method
        ``"name"`` or ``"overlap"``.
    n_target, n_matched
        Target peaks, and target peaks with at least one matched reference peak.
    n_ref, n_ref_used
        Reference peaks, and reference peaks matched to at least one target peak.
    """

    T: sp.csr_matrix
    method: str
    n_target: int
    n_matched: int
    n_ref: int
    n_ref_used: int

    @property
    def fraction(self) -> float:
        """Fraction of the target peaks that were matched."""
        return self.n_matched / max(self.n_target, 1)


def parse_peak_names(names):
    """``(chrom, start, end)`` arrays from ``chr:start-end`` style names, or ``None``.

    Accepts the separators ``chr:start-end``, ``chr-start-end`` and ``chr_start_end``.
    Returns ``None`` unless every name parses with ``start < end``.
    """
    chrom, start, end = [], [], []
    for nm in names:
        m = _NAME_RE.match(str(nm))
        if m is None:
            return None
        chrom.append(m.group(1))
        start.append(int(m.group(2)))
        end.append(int(m.group(3)))
    start, end = np.asarray(start, np.int64), np.asarray(end, np.int64)
    if len(start) and np.any(end <= start):
        return None
    return np.asarray(chrom, dtype=object), start, end


def peak_intervals(var):
    """``(chrom, start, end)`` of the peaks of an AnnData ``var`` frame, or ``None``.

    Columns (``chr``/``chrom``/``chromosome``/``seqnames``, ``start``, ``end``) win over
    the index names.
    """
    cols = {c.lower(): c for c in var.columns}
    pick = lambda opts: next((cols[o.lower()] for o in opts if o.lower() in cols), None)  # noqa: E731
    c, s, e = pick(_CHROM_COLS), pick(_START_COLS), pick(_END_COLS)
    if c is not None and s is not None and e is not None:
        try:
            start = np.asarray(var[s], dtype=np.int64)
            end = np.asarray(var[e], dtype=np.int64)
        except (TypeError, ValueError):
            return parse_peak_names(var.index)
        return np.asarray(var[c].astype(str), dtype=object), start, end
    return parse_peak_names(var.index)


def _overlap_pairs(t_iv, r_iv):
    """Index pairs (target, reference) of overlapping half-open intervals."""
    tc, ts, te = t_iv
    rc, rs, re_ = r_iv
    rows, cols = [], []
    for chrom in np.intersect1d(np.unique(tc), np.unique(rc)):
        ti = np.flatnonzero(tc == chrom)
        ri = np.flatnonzero(rc == chrom)
        order = np.argsort(rs[ri], kind="stable")
        ri, starts, ends = ri[order], rs[ri][order], re_[ri][order]
        width = int(np.max(ends - starts))
        # Candidates start in (s - width, e): any reference interval overlapping [s, e).
        lo = np.searchsorted(starts, ts[ti] - width, side="right")
        hi = np.searchsorted(starts, te[ti], side="left")
        cnt = np.maximum(hi - lo, 0)
        if not cnt.sum():
            continue
        t_rep = np.repeat(ti, cnt)
        offs = np.arange(cnt.sum()) - np.repeat(np.cumsum(cnt) - cnt, cnt)
        cand = np.repeat(lo, cnt) + offs
        ok = ends[cand] > ts[t_rep]
        rows.append(t_rep[ok])
        cols.append(ri[cand[ok]])
    if not rows:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(rows), np.concatenate(cols)


def match_peaks(target_var, ref_var, method: str = "auto") -> PeakMatch:
    """Match reference peaks to target peaks by name or genomic overlap (see module doc).

    ``target_var`` and ``ref_var`` are AnnData ``var`` frames (index = peak names).
    """
    if method not in ("auto", "name", "overlap"):
        raise InputError(f"peak_match must be 'auto', 'name' or 'overlap', got {method!r}")
    n_t, n_r = len(target_var), len(ref_var)
    t_iv = r_iv = None
    if method != "name":
        t_iv, r_iv = peak_intervals(target_var), peak_intervals(ref_var)
        if method == "overlap" and (t_iv is None or r_iv is None):
            side = "target" if t_iv is None else "reference"
            raise ReferenceError(
                f"peak_match='overlap' needs chr/start/end columns or chr:start-end names; the "
                f"{side} peaks have neither"
            )
    if method == "name" or t_iv is None or r_iv is None:
        used = "name"
        ref_pos = {str(nm): i for i, nm in enumerate(ref_var.index)}
        pairs = [(i, ref_pos[str(nm)]) for i, nm in enumerate(target_var.index) if str(nm) in ref_pos]
        rows = np.asarray([p[0] for p in pairs], np.int64)
        cols = np.asarray([p[1] for p in pairs], np.int64)
    else:
        used = "overlap"
        rows, cols = _overlap_pairs(t_iv, r_iv)
    T = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(n_t, n_r))
    T.sum_duplicates()
    T.data[:] = 1.0
    return PeakMatch(T, used, n_t, int(np.unique(rows).size), n_r, int(np.unique(cols).size))


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
    matrix the target TF-IDF was computed from).
    """
    C = sp.csr_matrix(counts, dtype=np.float64)
    if binarize:
        C.data = (C.data > 0).astype(np.float64)
    n = C.shape[1]
    Rm = np.asarray(Rm, np.float64)
    if variant == "paper":
        row = np.asarray(C.sum(axis=1)).ravel()
        idf = np.maximum(np.log(n / np.where(row > 0, row, 1.0)), 0.0)
        return idf[:, None] * Rm / Rm.sum(axis=0, keepdims=True)
    if variant == "l2":
        df = np.asarray((C > 0).sum(axis=1)).ravel()
        idf = np.log(n / np.where(df > 0, df, 1.0))
        Y = idf[:, None] * Rm
        norm = np.linalg.norm(Y, axis=0, keepdims=True)
        return Y / np.where(norm > 0, norm, 1.0)
    raise InputError(f"tfidf variant must be 'paper' or 'l2', got {variant!r}")


def default_k_ref(n_profiles: int, n_components: int) -> int:
    """Default k1 = min(number of reference profiles, k - 1): at least one free column."""
    return int(max(min(n_profiles, n_components - 1), 1 if n_components == 1 else 0))


def reference_loadings(Rt, k_ref: int, *, X=None, n_free: int = 0, seed: int = 0,
                       nmf_iter: int = 200, dtype=None) -> np.ndarray:
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
    P, _ = nmf(jnp.asarray(Rt, dtype), k_ref, jax.random.fold_in(key, 1), n_iter=nmf_iter)
    P = np.asarray(P, np.float64)
    norms = np.linalg.norm(P, axis=0)
    P = P / np.where(norms > 0, norms, 1.0)
    if X is None:
        return P * np.mean(norms)
    from sccase_jax.api import device_matrix

    # The same key as api.prepare's NMF of the free block, so this is (nearly) its W0.
    _, key_nmf = jax.random.split(key)
    Xd = device_matrix(X, dtype)
    W0, _ = nmf(Xd, max(n_free, 1), key_nmf, n_iter=nmf_iter)
    return P * float(np.mean(np.linalg.norm(np.asarray(W0, np.float64), axis=0)))


# --------------------------------------------------------------------------- builders


def _ref_anndata(X, obs_names, var, obs_extra=None):
    import anndata as ad
    import pandas as pd

    obs = pd.DataFrame(obs_extra or {}, index=pd.Index([str(s) for s in obs_names]))
    return ad.AnnData(X=np.asarray(X, np.float32), obs=obs, var=var)


def _var_frame(peak_names, var):
    import pandas as pd

    if var is not None:
        return var.copy()
    if peak_names is None:
        raise InputError("give peak_names or var (the peaks the counts are on)")
    names = pd.Index([str(p) for p in peak_names])
    if not names.is_unique:
        raise InputError("peak names must be unique")
    return pd.DataFrame(index=names)


def bulk_reference(counts, peak_names=None, *, sample_names=None, mapped_reads=None, var=None,
                   per: float = 1e6):
    """Bulk reference: counts (samples x peaks) scaled by each sample's mapped reads.

    ``X = counts / mapped_reads * per`` (counts per million by default).  ``mapped_reads``
    defaults to each sample's total over the given peaks; pass the aligner's total mapped
    reads when known.
    """
    C = np.asarray(counts.toarray() if sp.issparse(counts) else counts, np.float64)
    if C.ndim != 2:
        raise InputError(f"counts must be samples x peaks, got shape {C.shape}")
    check_reference(C, "the bulk counts")
    lib = C.sum(axis=1) if mapped_reads is None else np.asarray(mapped_reads, np.float64).ravel()
    if lib.shape != (C.shape[0],) or np.any(~np.isfinite(lib)) or np.any(lib <= 0):
        raise InputError("mapped_reads must be one positive number per sample")
    names = sample_names if sample_names is not None else [f"bulk_{i}" for i in range(C.shape[0])]
    return _ref_anndata(C / lib[:, None] * per, names, _var_frame(peak_names, var),
                        {"mapped_reads": lib})


def pseudobulk_reference(counts, labels, peak_names=None, *, var=None, min_cells: int = 1):
    """Pseudo-bulk reference: the counts (cells x peaks) summed over the cells of each label.

    Labels with fewer than ``min_cells`` cells are left out, and so are cells without a
    label (NaN / None; with a warning saying how many).  ``obs`` holds ``label`` and
    ``n_cells``.
    """
    import pandas as pd

    C = sp.csr_matrix(counts, dtype=np.float64)
    labels = np.asarray(labels)
    if labels.shape != (C.shape[0],):
        raise InputError(f"labels must have one entry per cell ({C.shape[0]}), got {labels.shape}")
    check_reference(C, "the counts", allow_empty=True)
    missing = pd.isna(labels)
    if missing.any():
        if missing.all():
            raise InputError("no cell has a label (all labels are NaN / None)")
        warnings.warn(f"{int(missing.sum())} of {len(labels)} cells have no label (NaN / None) "
                      "and are left out of the pseudo-bulk reference", UserWarning, stacklevel=2)
        C, labels = C[~missing], labels[~missing]
    uniq, inv, n = np.unique(labels.astype(str), return_inverse=True, return_counts=True)
    keep = n >= min_cells
    if not keep.any():
        raise InputError(f"no label has at least min_cells = {min_cells} cells")
    A = sp.csr_matrix((np.ones(len(inv)), (inv, np.arange(len(inv)))), shape=(len(uniq), len(inv)))
    S = np.asarray((A @ C).toarray())[keep]
    return _ref_anndata(S, [f"pb_{u}" for u in uniq[keep]], _var_frame(peak_names, var),
                        {"label": uniq[keep], "n_cells": n[keep]})


def _lsi(C, n_comps: int, seed: int):
    """TF-IDF (paper variant) then truncated SVD; cells x comps, first component dropped."""
    from scipy.sparse.linalg import svds

    from sccase_jax.preprocessing import tfidf

    X = tfidf(sp.csr_matrix(C).T).T.tocsr()  # cells x peaks
    k = int(min(n_comps + 1, min(X.shape) - 1))
    v0 = np.random.default_rng(seed).random(min(X.shape))
    U, s, _ = svds(X, k=k, v0=v0)
    order = np.argsort(s)[::-1]
    emb = U[:, order] * s[order]
    # The first LSI component follows sequencing depth (as in Signac/ArchR); drop it.
    emb = emb[:, 1:] if emb.shape[1] > 1 else emb
    return emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)


def _cluster(emb, *, n_neighbors, resolution, method, seed):
    try:
        import igraph as ig
        from sklearn.neighbors import kneighbors_graph
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError('self_reference needs the eval extras: pip install "sccase_jax[eval]"') from err
    A = kneighbors_graph(emb, min(n_neighbors, emb.shape[0] - 1), include_self=False)
    C = sp.triu(((A + A.T) > 0).astype(np.float64), k=1).tocoo()
    g = ig.Graph(n=emb.shape[0], edges=list(zip(C.row.tolist(), C.col.tolist())), directed=False)
    if method == "leiden":
        import leidenalg as la

        part = la.find_partition(g, la.RBConfigurationVertexPartition,
                                 resolution_parameter=resolution, seed=seed, n_iterations=2)
        return np.asarray(part.membership)
    if method == "louvain":
        import random

        random.seed(seed)  # python-igraph draws from Python's random module
        return np.asarray(g.community_multilevel(resolution=resolution).membership)
    raise InputError(f"method must be 'leiden' or 'louvain', got {method!r}")


def self_reference(counts, peak_names=None, *, var=None, method: str = "leiden",
                   resolution: float = 1.0, n_clusters: int | None = None, n_comps: int = 30,
                   n_neighbors: int = 15, min_cells: int = 5, seed: int = 0):
    """Self-reference: cluster the target itself and sum the counts of each cluster.

    Cells x peaks ``counts`` -> TF-IDF -> LSI (truncated SVD, ``n_comps`` components after
    dropping the depth component, rows L2-normalised) -> symmetric kNN graph
    (``n_neighbors``) -> Leiden or Louvain at ``resolution``.  With ``n_clusters`` given,
    the resolution is bisected (at most 30 tries) to reach that number.  Clusters with
    fewer than ``min_cells`` cells are left out.  ``obs["label"]`` names the cluster;
    ``uns["labels"]`` holds every cell's cluster.
    """
    C = sp.csr_matrix(counts, dtype=np.float64)
    if np.any(np.asarray(C.sum(axis=1)).ravel() <= 0):
        raise InputError("self_reference needs every cell to have counts")
    emb = _lsi(C, n_comps, seed)
    kw = dict(n_neighbors=n_neighbors, method=method, seed=seed)
    lab = _cluster(emb, resolution=resolution, **kw)
    if n_clusters is not None:
        lo, hi, r = 0.0, None, resolution
        for _ in range(30):
            c = len(np.unique(lab))
            if c == n_clusters:
                break
            lo, hi = (r, hi) if c < n_clusters else (lo, r)
            r = 2 * r if hi is None else 0.5 * (lo + hi)
            lab = _cluster(emb, resolution=r, **kw)
    out = pseudobulk_reference(C, np.asarray([f"c{i}" for i in lab]), peak_names, var=var,
                               min_cells=min_cells)
    out.uns["labels"] = np.asarray([f"c{i}" for i in lab])
    return out
