r"""Is the structure the enhanced output imposes supported by the data?  (label-free)

The blended output replaces each cell's profile mostly by a weighted average of other
cells (:mod:`sccase_jax.output`).  That helps only where those cells are similar to it in
the data themselves.  :func:`neighbour_support` measures it with the cosine similarity of
the preprocessed profiles (X has unit-norm columns with the default L2 TF-IDF, so
``c_ij = x_i . x_j``), for each cell j:

* ``a_j``: the output-weighted mean of ``c_ij`` over the cells it averages (itself left out);
* ``b_j``: the mean of ``c_ij`` over all cells, what an average of random cells would give;
* ``r_j``: the mean of ``c_ij`` over the ``M`` cells most similar to j in X itself (the best
  any average of that many cells could do in the data's own terms; ``M`` = the number of
  cells the output averages, at most half the cells).

``support_j = (a_j - b_j) / (r_j - b_j)``: 1 when the cells averaged are the data's own
nearest ones, 0 when they are no closer than random cells.  The output reports the mean
over cells (on a seeded sample of at most :data:`SAMPLE` cells) and calls the enhanced
structure *supported* when it is at least :data:`MIN_SUPPORT` (docs/results.md, "When
enhancement cannot help": the output rules that clustered below raw TF-IDF on the
measured data scored 0.42-0.55, the default 0.58-0.77; a rough guide, measured, not
derived).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from sccase_jax.start import crossprod_cols, crossprod_split

__all__ = ["MIN_SUPPORT", "SAMPLE", "neighbour_support"]

MIN_SUPPORT = 0.5
SAMPLE = 2000
_BLOCK = 256


def neighbour_support(X, B, *, seed: int = 0, sample: int = SAMPLE, gram=None) -> dict:
    """The support of the output's neighbourhoods in the data (module docstring).

    ``X`` is the preprocessed peaks x cells matrix, ``B`` the output weights (n x n, column
    j the weights of cell j's profile; the cell's own weight is ignored); ``gram``: ``X^T X``
    (n x n, host or device) when the caller has it, as the fit's G: the ``c_ij`` are read
    from it instead of formed again from X.  Returns
    ``{"support", "support_q10", "cells", "neighbours", "supported", "message"}``.
    """
    X = sp.csc_matrix(X, dtype=np.float64)
    B = sp.csc_matrix(B, dtype=np.float64)
    n = X.shape[1]
    cols = np.arange(n)
    if n > sample:
        cols = np.sort(np.random.default_rng(seed).choice(n, sample, replace=False))
    XT = X.T.tocsr()
    b_all = XT @ np.asarray(X.mean(axis=1)).ravel()
    # c_ij for a block of cells: X^T X[:, c] through start.crossprod's split (the peaks open
    # in many cells in float32 BLAS, the rest sparse), a few blocks of many cells
    split = crossprod_split(X) if gram is None else None
    step = max(_BLOCK, (1 << 24) // max(n, 1))
    counts = np.diff(B.indptr) - (B.diagonal() != 0)  # the cells each profile averages
    M = int(min(max(np.median(counts), 1), max(n // 2, 1)))
    vals = []
    for s in range(0, cols.size, step):
        c = cols[s : s + step]
        # n x b: c_ij for the block's cells
        G = crossprod_cols(split, c) if gram is None else np.array(gram[:, c], np.float64)
        G[c, np.arange(c.size)] = -np.inf  # itself left out
        Bc = B[:, c].toarray()
        Bc[c, np.arange(c.size)] = 0.0
        w = Bc.sum(axis=0)
        a = np.where(w > 0, (np.where(np.isfinite(G), G, 0.0) * Bc).sum(axis=0) / np.where(w > 0, w, 1), np.nan)
        r = (-np.partition(-G, M - 1, axis=0)[:M]).mean(axis=0)
        b = (b_all[c] * n - np.asarray(X[:, c].multiply(X[:, c]).sum(axis=0)).ravel()) / max(n - 1, 1)
        gap = r - b
        vals.append(np.where(gap > 0, (a - b) / np.where(gap > 0, gap, 1), np.nan))
    s = np.concatenate(vals)
    s = s[np.isfinite(s)]
    mean = float(s.mean()) if s.size else float("nan")
    q10 = float(np.quantile(s, 0.1)) if s.size else float("nan")
    supported = bool(mean >= MIN_SUPPORT) if s.size else True
    if not s.size:
        message = "neighbour support not defined (no cell averages other cells)"
    elif supported:
        message = (f"neighbour support {mean:.2f} (>= {MIN_SUPPORT}): the cells each enhanced "
                   "profile averages are close to it in the data")
    else:
        message = (f"neighbour support {mean:.2f} (< {MIN_SUPPORT}): the cells each enhanced "
                   "profile averages are not much closer to it in the data than random cells, "
                   "so the enhanced structure is not better supported than the raw data's; "
                   "compare with the raw TF-IDF before relying on it")
    return {"support": mean, "support_q10": q10, "cells": int(cols.size), "neighbours": M,
            "supported": supported, "message": message}
