"""Batch mixing and biology conservation scores of an embedding (scib's definitions).

Built on scikit-learn and scipy (scib-metrics is not installed here; the definitions follow
Luecken et al. 2022, "Benchmarking atlas-level data integration"):

* ``batch_asw``: per cell type, the silhouette of the batch labels, each cell's ``s`` as
  ``1 - |s|``, averaged per type and then over types (1: batches mixed, 0: separated);
* ``ilisi``: the inverse Simpson index of the batch labels among each cell's ``k`` nearest
  neighbours, averaged, rescaled to ``(iLISI - 1) / (B - 1)`` (1: neighbourhoods as mixed
  as B equal batches allow, 0: one batch each);
* ``graph_connectivity``: per cell type, the share of its cells in the largest connected
  component of the kNN graph restricted to that type, averaged over types;
* ``celltype_asw``: the silhouette of the cell-type labels (Euclidean), rescaled to
  ``(s + 1) / 2``;
* ``other_batch_fraction``: the share of each cell's ``k`` nearest neighbours that belong
  to another batch, averaged over cells (not a scib score: the plain fraction, which the
  two-donor targets are stated in; 0: every neighbourhood within its own batch).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from sccase_jax.evaluation.metrics import openmp_single_thread, require

__all__ = ["batch_scores"]


def _knn(emb, k):
    nb = require("sklearn.neighbors")
    with openmp_single_thread():
        return nb.NearestNeighbors(n_neighbors=k + 1).fit(emb).kneighbors(emb, return_distance=False)[:, 1:]


def batch_scores(emb: np.ndarray, batch, labels, *, k: int = 15) -> dict[str, float]:
    """``batch_asw``, ``ilisi``, ``graph_connectivity``, ``celltype_asw`` and
    ``other_batch_fraction`` of ``emb``
    (cells x dimensions) for the ``batch`` and cell-type ``labels`` (module docstring)."""
    metrics = require("sklearn.metrics")
    emb = np.asarray(emb, np.float64)
    batch = np.asarray(batch).astype(str)
    labels = np.asarray(labels).astype(str)
    n_b = np.unique(batch).size
    asw = []
    for t in np.unique(labels):
        sel = labels == t
        if sel.sum() < 3 or np.unique(batch[sel]).size < 2:
            continue
        s = metrics.silhouette_samples(emb[sel], batch[sel])
        asw.append(np.mean(1.0 - np.abs(s)))
    nn = _knn(emb, min(k, emb.shape[0] - 1))
    codes = np.unique(batch, return_inverse=True)[1]
    frac = np.stack([(codes[nn] == b).mean(axis=1) for b in range(n_b)], axis=1)
    ilisi = 1.0 / (frac**2).sum(axis=1)
    other = float((codes[nn] != codes[:, None]).mean())
    conn = []
    rows = np.repeat(np.arange(emb.shape[0]), nn.shape[1])
    A = sp.csr_matrix((np.ones(rows.size), (rows, nn.ravel())), shape=(emb.shape[0],) * 2)
    for t in np.unique(labels):
        idx = np.flatnonzero(labels == t)
        _, comp = sp.csgraph.connected_components(A[idx][:, idx], directed=True, connection="weak")
        conn.append(np.bincount(comp).max() / idx.size)
    return {"batch_asw": float(np.mean(asw)) if asw else float("nan"),
            "ilisi": float((ilisi.mean() - 1.0) / (n_b - 1)) if n_b > 1 else float("nan"),
            "graph_connectivity": float(np.mean(conn)),
            "celltype_asw": float((metrics.silhouette_score(emb, labels) + 1.0) / 2.0),
            "other_batch_fraction": other}
