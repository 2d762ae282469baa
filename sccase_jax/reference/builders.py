"""Reference builders (arrays in, AnnData of profiles x peaks out): bulk, pseudo-bulk and
self-reference (the target's own clusters)."""

from __future__ import annotations

import warnings

import numpy as np
import scipy.sparse as sp

from sccase_jax.evaluation.clustering import knn_graph, partition
from sccase_jax.preprocessing import tfidf
from sccase_jax.reference.mapping import check_reference
from sccase_jax.validate import InputError

__all__ = ["bulk_reference", "pseudobulk_reference", "self_reference"]



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
    """Leiden or Louvain clusters of a symmetric kNN graph of the embedding."""
    if method not in ("leiden", "louvain"):
        raise InputError(f"method must be 'leiden' or 'louvain', got {method!r}")
    graph = knn_graph(emb, n_neighbors, dtype=None)
    return partition(graph, resolution, method, seed)


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
