"""Estimate the number of cell types, in the spirit of ASTER (Wang et al.).

Three estimators over a search range ``k_min..k_max``, on the PCA(20) embedding of the
preprocessed cells:

1. the knee of the k-means inertia curve (Kneedle: the largest gap between the
   normalised curve and the chord joining its ends);
2. the smallest k whose k-means clustering has a Davies-Bouldin score within
   ``db_tolerance`` (10 %) of the smallest one (a parsimony rule: on scATAC embeddings the
   curve is flat within noise, e.g. 2.3-2.6 for every k from 5 to 30 on the Granja
   bone-marrow data, so its bare argmin is noise and landed at 28-29 for 6 types);
3. the number of clusters of the Leiden clustering (over a grid of resolutions, on a kNN
   graph) with the largest silhouette.

The estimate is the mean of the three, rounded up, clipped to the range.  On small data the
range is clipped to what the data allow (at most ``n_cells - 1`` and at most the number of
distinct cell profiles); data that allow no estimate at all (fewer than 3 cells, fewer
than 2 peaks, or all cells alike) raise :class:`~sccase_jax.validate.InputError`.  The released
code then fits with k + 1 components (scCASE) or round(1.3 k) + k // 2500 (scCASER); that
rule belongs to the caller (:func:`sccase_jax.tl.enhance` adds 1, and with a reference
takes k at least its number of profiles).

Cost: one PCA, ``k_max - k_min + 1`` k-means fits (``n_init=1``) and a dozen Leiden runs on
at most ``max_cells`` cells (a seeded subsample beyond that): about 2-5 s for 2,000 cells.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import scipy.sparse as sp

from sccase_jax.evaluation.clustering import knn_graph, pca_embedding
from sccase_jax.evaluation.metrics import openmp_single_thread, require
from sccase_jax.validate import InputError, check_int

__all__ = ["KEstimate", "davies_bouldin", "estimate_n_components", "kneedle", "n_distinct_rows",
           "pca_from_gram", "silhouette"]


class KEstimate(NamedTuple):
    """The ensemble estimate and its parts."""

    k: int
    knee: int
    davies_bouldin: int
    silhouette: int
    ks: np.ndarray
    inertia: np.ndarray
    db: np.ndarray


def kneedle(x, y) -> int:
    """Index of the knee of a decreasing convex curve ``y(x)`` (largest gap below the chord)."""
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    if len(x) < 3:
        return 0
    xn = (x - x[0]) / (x[-1] - x[0])
    span = y[0] - y[-1]
    yn = (y - y[-1]) / span if span > 0 else np.zeros_like(y)
    # Chord from (0, 1) to (1, 0): the gap below it is 1 - xn - yn.
    return int(np.argmax(1.0 - xn - yn))


def estimate_n_components(X, *, k_min: int = 2, k_max: int | None = None, seed: int = 0,
                          n_pcs: int = 20, max_cells: int = 5000, n_neighbors: int = 15,
                          db_tolerance: float = 0.1, details: bool = False, gram=None):
    """Estimated number of cell types of a preprocessed peaks x cells matrix.

    Parameters
    ----------
    X
        Preprocessed (TF-IDF) peaks x cells, sparse or dense (the orientation of
        :func:`~sccase_jax.fit`).
    k_min, k_max
        Search range; ``k_max`` defaults to ``min(30, max(5, n_cells // 20))``.  The range is
        clipped to at most ``n_cells - 1`` and the number of distinct cell profiles, and
        ``k_min`` to at least 2.
    n_pcs
        PCA components used by the three estimators (20: with 50 the noisy tail components
        pushed the Davies-Bouldin minimum to the top of the range on the Granja data).
    seed
        Seeds the subsample, PCA, k-means and Leiden.
    max_cells
        Cells used (a seeded random subset beyond this).
    db_tolerance
        Relative tolerance of the Davies-Bouldin rule (0 gives the bare argmin).
    details
        Return a :class:`KEstimate` with each estimator's answer instead of an int.
    gram
        ``X^T X`` (cells x cells) when the caller has it (the fit's G): when a product with
        it is cheaper than one with the sparse X (more than n^2 / 2 stored entries, as on
        100,000+ peaks), the PCA comes from its centred eigenvectors
        (:func:`pca_from_gram`, the same scores up to sign) instead of a sparse SVD of X.

    Raises
    ------
    InputError
        Fewer than 3 cells or 2 peaks, or no two cells differ: the number of cell types
        cannot be estimated (pass ``n_components`` to :func:`sccase_jax.enhance`).
    """
    cluster = require("sklearn.cluster")
    skm = require("sklearn.metrics")

    M = X.T.tocsr() if sp.issparse(X) else np.asarray(X).T
    n, m = M.shape
    k_min = check_int("k_min", k_min, integral_float=False)
    if k_max is not None:
        k_max = check_int("k_max", k_max, 2, integral_float=False)
    for what, have, need in (("cells", n, 3), ("peaks", m, 2)):
        if have < need:
            raise InputError(
                f"too few {what} ({have}; at least {need} needed) to estimate the number of "
                "cell types; pass n_components"
            )
    rng = np.random.default_rng(seed)
    keep = None
    if n > max_cells:
        keep = np.sort(rng.choice(n, max_cells, replace=False))
        M = M[keep]
        n = max_cells
    distinct = n_distinct_rows(M)
    if distinct < 2:
        raise InputError(
            f"all {n} cells have the same preprocessed profile: no variation to estimate the "
            "number of cell types from; pass n_components"
        )
    if k_max is None:
        k_max = min(30, max(5, n // 20))
    k_max = int(min(k_max, n - 1, distinct))
    k_min = int(max(2, min(k_min, k_max)))
    n_pcs = min(n_pcs, min(M.shape) - 1)
    # The exact PCA through whichever operator has the cheaper product with a vector: the
    # sparse cells x peaks M (2 nnz) or the dense cell Gram matrix (n^2).  Both give the
    # same scores up to sign; an approximate (randomized) PCA changed the estimates.
    nnz = M.nnz if sp.issparse(M) else M.size
    if gram is None or n * n >= 2 * nnz:
        emb = pca_embedding(M, n_pcs, transform=None, seed=seed)
    else:
        G = np.asarray(gram)
        emb = pca_from_gram(G if keep is None else G[np.ix_(keep, keep)], n_pcs, seed=seed)
    ks = np.arange(k_min, k_max + 1)
    inertia, db = np.empty(len(ks)), np.empty(len(ks))
    with openmp_single_thread():
        for i, k in enumerate(ks):
            km = cluster.KMeans(int(k), n_init=1, random_state=seed, max_iter=100).fit(emb)
            inertia[i] = km.inertia_
            db[i] = davies_bouldin(emb, km.labels_)
    k_knee = int(ks[kneedle(ks, inertia)])
    k_db = int(ks[int(np.flatnonzero(db <= np.min(db) * (1.0 + db_tolerance))[0])])

    graph = knn_graph(emb, n_neighbors)
    best, k_sil = -np.inf, k_knee
    sub = rng.choice(n, min(n, 2000), replace=False)
    dist = skm.pairwise_distances(emb[sub])  # once, for every silhouette below
    for r in np.geomspace(0.05, 5.0, 14):
        lab = _leiden(graph, float(r), seed)
        c = len(np.unique(lab))
        if c > k_max:
            break  # cluster counts grow with the resolution; larger ones only cost time
        if c < k_min or len(np.unique(lab[sub])) < 2:
            continue
        s = silhouette(dist, lab[sub])
        if s > best:
            best, k_sil = s, c
    k = int(np.clip(np.ceil((k_knee + k_db + k_sil) / 3.0), k_min, k_max))
    if details:
        return KEstimate(k, k_knee, k_db, k_sil, ks, inertia, db)
    return k


def pca_from_gram(G, n_pcs: int, seed: int = 0) -> np.ndarray:
    """PCA scores (cells x ``n_pcs``) of the cells whose Gram matrix ``G = M M^T`` is given.

    The scores of centred PCA are the top eigenvectors of the centred Gram matrix
    ``K = (I - 11^T / n) G (I - 11^T / n)``, each scaled by the square root of its
    eigenvalue: the same as :func:`~sccase_jax.evaluation.clustering.pca_embedding` of M
    up to the sign of each component (and rounding), without touching M's features.
    """
    from scipy.sparse.linalg import eigsh

    K = np.array(G, dtype=np.float64)
    n = K.shape[0]
    row = K.mean(axis=1)
    K -= row[:, None]
    K -= row[None, :]
    K += row.mean()
    v0 = np.random.default_rng(seed).uniform(-1.0, 1.0, n)
    vals, vecs = eigsh(K, k=int(n_pcs), which="LA", v0=v0)
    order = np.argsort(vals)[::-1]
    return vecs[:, order] * np.sqrt(np.maximum(vals[order], 0.0))[None, :]


def silhouette(dist, labels) -> float:
    """The mean silhouette of a clustering from its precomputed distance matrix (scikit-learn's
    definition: 0 for a cell alone in its cluster), with the per-cluster sums of distances as
    one product ``dist @ onehot`` instead of a pass per row."""
    labels = np.unique(labels, return_inverse=True)[1]
    n, c = len(labels), int(labels.max()) + 1
    onehot = np.zeros((n, c))
    onehot[np.arange(n), labels] = 1.0
    sums = np.asarray(dist, np.float64) @ onehot  # n x c: each cell's distances to each cluster
    size = onehot.sum(axis=0)
    rows = np.arange(n)
    with np.errstate(divide="ignore", invalid="ignore"):
        a = sums[rows, labels] / (size[labels] - 1.0)
        mean = sums / size[None, :]
        mean[rows, labels] = np.inf
        b = mean.min(axis=1)
        s = (b - a) / np.maximum(a, b)
    return float(np.mean(np.nan_to_num(s)))


def davies_bouldin(emb, labels) -> float:
    """The Davies-Bouldin score of a clustering (scikit-learn's definition; ``inf`` for a
    single cluster), from the cluster means: one pass over the points, no pairwise step."""
    labels = np.unique(labels, return_inverse=True)[1]
    c = int(labels.max()) + 1
    if c < 2:
        return np.inf
    counts = np.bincount(labels, minlength=c).astype(np.float64)
    centroids = np.zeros((c, emb.shape[1]))
    np.add.at(centroids, labels, emb)
    centroids /= counts[:, None]
    intra = np.bincount(labels, np.linalg.norm(emb - centroids[labels], axis=1), minlength=c) / counts
    diff = centroids[:, None, :] - centroids[None, :, :]
    sep = np.sqrt(np.einsum("ijk,ijk->ij", diff, diff))
    if np.allclose(intra, 0) or np.allclose(sep, 0):
        return 0.0
    sep[sep == 0] = np.inf
    return float(np.mean(np.max((intra[:, None] + intra[None, :]) / sep, axis=1)))


def _leiden(graph, resolution: float, seed: int) -> np.ndarray:
    """Leiden labels (modularity with a resolution, weighted: the RB configuration model
    of :func:`~sccase_jax.evaluation.clustering.partition`) from igraph's own C
    implementation, seeded through Python's ``random`` (igraph's generator)."""
    import random

    random.seed(seed)
    part = graph.community_leiden(objective_function="modularity", weights="weight",
                                  resolution=resolution, n_iterations=2)
    return np.asarray(part.membership)


def n_distinct_rows(M) -> int:
    """Number of distinct rows of a dense or scipy sparse matrix (exact, by hashing)."""
    if sp.issparse(M):
        M = sp.csr_matrix(M, copy=True)
        M.sum_duplicates()  # sorted indices, one entry each
        M.eliminate_zeros()
        rows = {
            (M.indices[a:b].tobytes(), M.data[a:b].tobytes())
            for a, b in zip(M.indptr[:-1], M.indptr[1:])
        }
        return len(rows)
    M = np.ascontiguousarray(M) + 0.0  # + 0.0: -0.0 and 0.0 hash alike
    return len({row.tobytes() for row in M})
