"""Clustering as in the paper: TF-IDF -> PCA(50) -> neighbour graph -> Leiden/Louvain.

The resolution is searched (doubling, then bisection) until the number of clusters equals
the number of cell types; when no resolution gives exactly that number, the closest
clustering is returned and ``reached`` is False.  Raw counts go through TF-IDF first;
an enhanced matrix (already on the TF-IDF scale) goes straight to PCA
(``transform=None``).  Everything after that is the same for raw and enhanced data.

All inputs are cells x features (AnnData orientation).
"""

from __future__ import annotations

import random
from typing import NamedTuple

import numpy as np
import scipy.sparse as sp

from sccase_jax.evaluation.metrics import (
    clustering_scores,
    label_silhouette,
    openmp_single_thread,
    require,
)
from sccase_jax.preprocessing import tfidf

__all__ = [
    "ClusterResult",
    "cluster_to_k",
    "evaluate_clustering",
    "implicit_pca",
    "knn_graph",
    "neighbor_graph",
    "partition",
    "pca_embedding",
]


class ClusterResult(NamedTuple):
    """Labels of one clustering, the resolution that gave them and whether k was reached."""

    labels: np.ndarray
    resolution: float
    n_clusters: int
    reached: bool


def pca_embedding(M, n_pcs: int = 50, *, transform: str | None = "tfidf", tfidf_variant: str = "paper",
                  seed: int = 0) -> np.ndarray:
    """PCA scores (cells x ``n_pcs``) of a cells x features matrix.

    ``transform="tfidf"`` applies :func:`~sccase_jax.preprocessing.tfidf` to raw counts
    first; ``None`` uses ``M`` as it is.  Features are centred (sparse input via ARPACK,
    as scanpy does), so the result is the usual PCA.  An enhanced matrix in implicit form
    (:class:`~sccase_jax.implicit.EnhancedMatrix`, an output without its dense layer) is
    decomposed through its products with vectors (:func:`implicit_pca`), never formed.
    """
    _check_n_pcs(n_pcs)
    if hasattr(M, "linear_operator"):
        if transform is not None:
            raise ValueError("an enhanced matrix in implicit form is used as it is: transform=None")
        return implicit_pca(M, n_pcs, seed=seed)
    decomp = require("sklearn.decomposition")
    if transform == "tfidf":
        M = tfidf(sp.csr_matrix(M).T, tfidf_variant).T.tocsr()
    elif transform is not None:
        raise ValueError(f"transform must be 'tfidf' or None, got {transform!r}")
    n_pcs = int(min(n_pcs, min(M.shape) - 1))
    if sp.issparse(M):
        pca = decomp.PCA(n_pcs, svd_solver="arpack", random_state=seed)
        return pca.fit_transform(sp.csr_matrix(M, dtype=np.float64))
    pca = decomp.PCA(n_pcs, svd_solver="randomized", random_state=seed)
    return pca.fit_transform(np.asarray(M, dtype=np.float32))


def implicit_pca(M, n_pcs: int = 50, *, seed: int = 0) -> np.ndarray:
    """PCA scores (cells x ``n_pcs``, float32) of a matrix known by its products with vectors.

    ``M.linear_operator(center=True)`` (an :class:`~sccase_jax.implicit.EnhancedMatrix`)
    is decomposed by ARPACK (:func:`scipy.sparse.linalg.svds`, a seeded start): the
    scores are ``U S`` of the centred matrix, largest first, each component's sign fixed
    so that its largest score is positive.  Each product costs one pass over the stored
    counts and weights, so the cells x peaks matrix is never formed.
    """
    from scipy.sparse.linalg import svds

    op = M.linear_operator(center=True)
    k = int(min(n_pcs, min(op.shape) - 1))
    v0 = np.random.default_rng(seed).standard_normal(min(op.shape))
    U, S, _ = svds(op, k=k, v0=v0)
    order = np.argsort(S)[::-1]
    U, S = U[:, order], S[order]
    U *= np.where(U[np.argmax(np.abs(U), axis=0), np.arange(k)] < 0, -1.0, 1.0)
    return (U * S).astype(np.float32)


def _missing_labels(labels: np.ndarray) -> np.ndarray:
    """Boolean mask of missing labels: None, or a float NaN (pandas' missing values)."""
    if labels.dtype.kind == "f":
        return np.isnan(labels)
    if labels.dtype.kind == "O":
        return np.array([v is None or (isinstance(v, float) and v != v) for v in labels], bool)
    return np.zeros(labels.shape, bool)


def _check_n_pcs(n_pcs) -> None:
    if isinstance(n_pcs, bool) or not isinstance(n_pcs, (int, np.integer)) or n_pcs < 1:
        raise ValueError(f"n_pcs must be a positive integer, got {n_pcs!r}")


def neighbor_graph(emb: np.ndarray, n_neighbors: int = 15, seed: int = 0):
    """Weighted igraph graph of the UMAP fuzzy kNN connectivities (scanpy's default).

    The neighbours are exact (scikit-learn, brute force) at every size.  That is what
    scanpy itself uses below 8,192 cells; above, it would switch to approximate
    neighbours from pynndescent, whose sparse-array output scanpy 1.11 cannot read with
    scipy >= 1.15 (``'csr_array' object has no attribute 'getnnz'``: every evaluation of
    the 10,335-cell Granja data failed there).  Exact neighbours also keep the graph, and so
    the scores, independent of an approximate search.
    """
    ad = require("anndata")
    sc = require("scanpy")
    ig = require("igraph")
    a = ad.AnnData(np.zeros((emb.shape[0], 1), np.float32))
    a.obsm["X_emb"] = np.asarray(emb, np.float32)
    sc.pp.neighbors(a, n_neighbors=min(n_neighbors, emb.shape[0] - 1), use_rep="X_emb",
                    random_state=seed, transformer="sklearn")
    return _graph(ig, emb.shape[0], sp.triu(a.obsp["connectivities"], k=1).tocoo())


def _graph(ig, n: int, C):
    """The undirected igraph graph of the upper-triangle COO matrix ``C`` (weights from its
    values), built from the index arrays directly (no Python list of edge tuples)."""
    edges = np.column_stack([C.row, C.col]).astype(np.int64, copy=False)
    g = ig.Graph(n=n, edges=edges, directed=False)
    g.es["weight"] = C.data.astype(np.float64, copy=False).tolist()
    return g


def knn_graph(emb: np.ndarray, n_neighbors: int = 15, dtype=np.float32):
    """Unweighted symmetric kNN graph (scikit-learn; no numba compilation, for quick scans).

    The neighbours are searched in ``dtype`` (``None``: the embedding's own).
    """
    nb = require("sklearn.neighbors")
    ig = require("igraph")
    emb = np.asarray(emb) if dtype is None else np.asarray(emb, dtype)
    with openmp_single_thread():
        A = nb.kneighbors_graph(emb, min(n_neighbors, emb.shape[0] - 1), include_self=False)
    return _graph(ig, emb.shape[0], sp.triu(((A + A.T) > 0).astype(np.float64), k=1).tocoo())


def partition(graph, resolution: float, method: str = "leiden", seed: int = 0) -> np.ndarray:
    """Leiden (RB configuration, weighted) or Louvain labels at one resolution."""
    if method == "leiden":
        la = require("leidenalg")
        part = la.find_partition(graph, la.RBConfigurationVertexPartition, weights="weight",
                                 resolution_parameter=resolution, seed=seed, n_iterations=2)
        return np.asarray(part.membership)
    if method == "louvain":
        random.seed(seed)  # python-igraph draws from Python's random module
        return np.asarray(graph.community_multilevel(weights="weight", resolution=resolution).membership)
    raise ValueError(f"method must be 'leiden' or 'louvain', got {method!r}")


def cluster_to_k(graph, k: int, *, method: str = "leiden", seed: int = 0, max_steps: int = 40,
                 start: float = 1.0) -> ClusterResult:
    """Search the resolution so that the clustering has exactly ``k`` clusters.

    The resolution is doubled or halved from ``start`` until the target is bracketed, then
    bisected (at most ``max_steps`` partitions in total).  If ``k`` is never hit, the
    clustering whose size is closest to ``k`` (ties: smaller resolution) is returned with
    ``reached=False``.
    """
    tried: dict[float, np.ndarray] = {}

    def run(r):
        if r not in tried:
            tried[r] = partition(graph, r, method, seed)
        return len(np.unique(tried[r]))

    lo, hi = None, None
    r = start
    for _ in range(max_steps):
        c = run(r)
        if c == k:
            return ClusterResult(tried[r], r, c, True)
        if c < k:
            lo = r
            if hi is None:
                r *= 2.0
                continue
        else:
            hi = r
            if lo is None:
                r /= 2.0
                if r < 1e-6:
                    break
                continue
        r = 0.5 * (lo + hi)
    best = min(tried, key=lambda q: (abs(len(np.unique(tried[q])) - k), q))
    lab = tried[best]
    return ClusterResult(lab, best, len(np.unique(lab)), False)


def evaluate_clustering(M, labels, *, transform: str | None = "tfidf", n_pcs: int = 50,
                        n_neighbors: int = 15, method: str = "leiden", seeds=(0, 1, 2),
                        graph: str = "umap",
                        tfidf_variant: str = "paper", silhouette_sample: int | None = 3000) -> dict:
    """The paper's clustering evaluation of one cells x features matrix.

    PCA(``n_pcs``) -> kNN graph -> Leiden/Louvain searched to the number of label classes,
    once per seed.  ``graph="umap"`` uses scanpy's fuzzy connectivities (the standard
    pipeline; numba compiles it once per process, ~10 s), ``"knn"`` a plain kNN graph.
    Returns the mean (and per-seed values) of ARI, AMI and FMI, whether
    the number of clusters was reached for every seed, and the silhouette of the labels
    on the PCA embedding under ``1 - Pearson``.
    """
    # Everything that can be checked is checked before the PCA (seconds on real data).
    labels = np.asarray(labels)
    n_cells = M.shape[0] if hasattr(M, "shape") and len(M.shape) == 2 else None
    if n_cells is None:
        raise ValueError(f"M must be a 2-d cells x features matrix, got shape {np.shape(M)}")
    if labels.ndim != 1 or labels.shape[0] != n_cells:
        raise ValueError(f"labels must have one entry per cell (row) of M: M has {n_cells} cells, "
                         f"labels has shape {labels.shape}")
    missing = _missing_labels(labels)
    if missing.any():
        raise ValueError(f"labels has {int(missing.sum())} missing values (NaN / None) of "
                         f"{n_cells}; leave those cells out first (the CLI's evaluate does)")
    labels = labels.astype(str)
    k = len(np.unique(labels))
    if k < 2:
        raise ValueError(f"labels must have at least two classes, got {k}")
    _check_n_pcs(n_pcs)
    if isinstance(n_neighbors, bool) or not isinstance(n_neighbors, (int, np.integer)) or n_neighbors < 1:
        raise ValueError(f"n_neighbors must be a positive integer, got {n_neighbors!r}")
    if graph not in ("umap", "knn"):
        raise ValueError(f"graph must be 'umap' or 'knn', got {graph!r}")
    if method not in ("leiden", "louvain"):
        raise ValueError(f"method must be 'leiden' or 'louvain', got {method!r}")
    seeds = tuple(seeds)
    if not seeds:
        raise ValueError("seeds must hold at least one seed")
    emb = pca_embedding(M, n_pcs, transform=transform, tfidf_variant=tfidf_variant)
    graph = neighbor_graph(emb, n_neighbors) if graph == "umap" else knn_graph(emb, n_neighbors)
    per_seed = []
    for s in seeds:
        cr = cluster_to_k(graph, k, method=method, seed=int(s))
        sc = clustering_scores(labels, cr.labels)
        sc.update(n_clusters=cr.n_clusters, resolution=cr.resolution, reached=cr.reached, seed=int(s))
        per_seed.append(sc)
    out = {m: float(np.mean([p[m] for p in per_seed])) for m in ("ari", "ami", "fmi")}
    out.update({f"{m}_sd": float(np.std([p[m] for p in per_seed])) for m in ("ari", "ami", "fmi")})
    out["reached"] = all(p["reached"] for p in per_seed)
    out["silhouette"] = label_silhouette(emb, labels, sample_size=silhouette_sample)
    out["per_seed"] = per_seed
    out["embedding"] = emb
    return out
