r"""Evaluation scores of the scCASE paper: numerical accuracy, clustering, imbalance.

Numerical accuracy compares enhanced values with a binary true signal, row by row
(:func:`rowwise_auroc`, :func:`rowwise_auprc`); :func:`signal_scores` averages them
cell-wise and peak-wise.  The row kernels are vectorised NumPy (one sort per matrix) and
agree with scikit-learn's ``roc_auc_score`` and ``average_precision_score`` (ties included);
the tests check that.

Clustering scores (ARI, AMI, FMI) come from scikit-learn.  The silhouette of the labels is
computed under the correlation distance ``1 - Pearson``.  The imbalance index is

.. math::

    I = 1 + \frac{1}{\log C} \sum_{c=1}^{C} \frac{n_c}{N} \log \frac{n_c}{N},

0 for balanced classes and approaching 1 when one class dominates.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

__all__ = [
    "EVAL_EXTRA_HINT",
    "clustering_scores",
    "imbalance_index",
    "label_silhouette",
    "openmp_single_thread",
    "require",
    "rowwise_auprc",
    "rowwise_auroc",
    "signal_scores",
]

EVAL_EXTRA_HINT = 'pip install "sccase_jax[eval]"'


def require(module: str):
    """Import an optional evaluation dependency, or fail naming the extra to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            f"{module} is needed for evaluation; install the extras with: {EVAL_EXTRA_HINT}"
        ) from err


def openmp_single_thread():
    """Context limiting scikit-learn's OpenMP loops (k-means, kNN, t-SNE) to one thread.

    On a busy machine its OpenMP threads spin-wait for each other; one thread was 20-70x
    faster on the 2-core test machine and costs little on small inputs.
    """
    return require("threadpoolctl").threadpool_limits(1, user_api="openmp")


def _dense(a) -> np.ndarray:
    return a.toarray() if sp.issparse(a) else np.asarray(a)


def _check(scores, truth, valid):
    s = _dense(scores).astype(np.float64, copy=False)
    y = _dense(truth).astype(bool)
    if s.shape != y.shape or s.ndim != 2:
        raise ValueError(f"scores and truth must be 2-d of the same shape, got {s.shape}, {y.shape}")
    if valid is None:
        return s, y, None
    v = _dense(valid).astype(bool)
    if v.shape != s.shape:
        raise ValueError(f"valid must have the shape of scores {s.shape}, got {v.shape}")
    return s, y & v, v


def rowwise_auroc(scores, truth, valid=None) -> np.ndarray:
    """Area under the ROC curve of each row of ``scores`` against the 0/1 row of ``truth``.

    Uses the Mann-Whitney form with average ranks, so ties count one half (as scikit-learn
    does).  ``valid`` (same shape, boolean) restricts each row to its True entries.  Rows
    whose (valid) truth is all 0 or all 1 get NaN.
    """
    from scipy.stats import rankdata  # here, not at the top: scipy.stats costs the CLI ~0.4 s of start-up

    s, y, v = _check(scores, truth, valid)
    if v is None:
        ranks = rankdata(s, axis=1)
        P = y.sum(axis=1).astype(np.float64)
        N = y.shape[1] - P
    else:
        ranks = rankdata(np.where(v, s, np.nan), axis=1, nan_policy="omit")
        P = y.sum(axis=1).astype(np.float64)
        N = v.sum(axis=1) - P
    u = np.where(y, ranks, 0.0).sum(axis=1) - P * (P + 1) / 2
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((P > 0) & (N > 0), u / (P * N), np.nan)


def rowwise_auprc(scores, truth, valid=None) -> np.ndarray:
    r"""Average precision of each row (scikit-learn's ``average_precision_score``).

    :math:`AP = \sum_t (R_t - R_{t-1}) P_t` over the distinct score thresholds ``t``, in
    decreasing order.  ``valid`` restricts each row to its True entries.  Rows without a
    positive get NaN.
    """
    s, y, v = _check(scores, truth, valid)
    if v is not None:
        # Excluded entries go last as negatives: AP only changes where recall grows.
        s = np.where(v, s, -np.inf)
    order = np.argsort(-s, axis=1, kind="stable")
    ss = np.take_along_axis(s, order, axis=1)
    ys = np.take_along_axis(y, order, axis=1)
    tp = np.cumsum(ys, axis=1, dtype=np.float64)
    seen = np.arange(1, s.shape[1] + 1, dtype=np.float64)[None, :]
    # The last position of every run of equal scores closes one threshold.
    end = np.ones_like(ys)
    end[:, :-1] = ss[:, :-1] != ss[:, 1:]
    tp_end = np.where(end, tp, 0.0)
    prev = np.zeros_like(tp_end)
    prev[:, 1:] = np.maximum.accumulate(tp_end, axis=1)[:, :-1]
    P = tp[:, -1]
    ap = np.where(end, (tp - prev) * (tp / seen), 0.0).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(P > 0, ap / P, np.nan)


def signal_scores(enhanced, truth, *, block: int = 512) -> dict[str, float]:
    """Cell-wise and peak-wise auROC / auPRC of ``enhanced`` against a 0/1 ``truth``.

    Both are cells x peaks.  Cell-wise scores rank the peaks within each cell; peak-wise
    scores rank the cells within each peak.  Each is the mean over the rows where it is
    defined (both classes present).  Rows are processed ``block`` at a time.
    """
    E = enhanced
    T = truth
    if E.shape != T.shape:
        raise ValueError(f"enhanced {E.shape} and truth {T.shape} must have the same shape")
    out = {}
    for name, (A, B) in {"cell": (E, T), "peak": (_T(E), _T(T))}.items():
        roc, prc = [], []
        for i in range(0, A.shape[0], block):
            a, b = _dense(A[i : i + block]), _dense(B[i : i + block])
            roc.append(rowwise_auroc(a, b))
            prc.append(rowwise_auprc(a, b))
        roc, prc = np.concatenate(roc), np.concatenate(prc)
        out[f"auroc_{name}"] = float(np.nanmean(roc)) if np.isfinite(roc).any() else float("nan")
        out[f"auprc_{name}"] = float(np.nanmean(prc)) if np.isfinite(prc).any() else float("nan")
    return out


def _T(a):
    return a.T.tocsr() if sp.issparse(a) else np.asarray(a).T


def clustering_scores(labels_true, labels_pred) -> dict[str, float]:
    """ARI, AMI and FMI of a clustering against reference labels (scikit-learn)."""
    m = require("sklearn.metrics")
    t, p = np.asarray(labels_true), np.asarray(labels_pred)
    if t.ndim != 1 or t.shape != p.shape:
        raise ValueError(f"labels_true and labels_pred must be 1-d of the same length, got shapes "
                         f"{t.shape} and {p.shape}")
    return {
        "ari": float(m.adjusted_rand_score(t, p)),
        "ami": float(m.adjusted_mutual_info_score(t, p)),
        "fmi": float(m.fowlkes_mallows_score(t, p)),
    }


def label_silhouette(X, labels, *, sample_size: int | None = None, seed: int = 0) -> float:
    """Mean silhouette of ``labels`` on the rows of ``X`` under the ``1 - Pearson`` distance.

    ``X`` is cells x features (typically the PCA embedding).  ``sample_size`` evaluates a
    seeded random subset of cells, for large data.
    """
    m = require("sklearn.metrics")
    X = _dense(X).astype(np.float64, copy=False)
    labels = np.asarray(labels)
    if X.ndim != 2 or labels.ndim != 1 or labels.shape[0] != X.shape[0]:
        raise ValueError(f"labels must have one entry per row of X: X has shape {X.shape}, "
                         f"labels {labels.shape}")
    if len(np.unique(labels)) < 2:
        raise ValueError("the silhouette needs at least two distinct labels")
    return float(m.silhouette_score(X, labels, metric="correlation", sample_size=sample_size,
                                    random_state=seed))


def imbalance_index(labels) -> float:
    r"""Imbalance index :math:`I` of a labelling (0 balanced, towards 1 dominated by one class)."""
    _, counts = np.unique(np.asarray(labels), return_counts=True)
    C = len(counts)
    if C < 2:
        raise ValueError("the imbalance index needs at least two classes")
    p = counts / counts.sum()
    return float(1.0 + np.sum(p * np.log(p)) / np.log(C))
