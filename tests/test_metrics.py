"""Scores against scikit-learn on small inputs."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from sklearn.metrics import (
    adjusted_mutual_info_score,
    adjusted_rand_score,
    average_precision_score,
    roc_auc_score,
    silhouette_score,
)

from sccase_jax.evaluation.metrics import (
    clustering_scores,
    imbalance_index,
    label_silhouette,
    rowwise_auprc,
    rowwise_auroc,
    signal_scores,
)


def _rows(seed, ties):
    rng = np.random.default_rng(seed)
    s = rng.integers(0, 4, (12, 25)).astype(float) if ties else rng.random((12, 25))
    y = rng.random((12, 25)) < 0.3
    y[:, 0] = True
    y[:, 1] = False
    return s, y


@given(seed=st.integers(0, 10_000), ties=st.booleans())
def test_rowwise_matches_sklearn(seed, ties):
    s, y = _rows(seed, ties)
    roc = [roc_auc_score(y[i], s[i]) for i in range(len(s))]
    ap = [average_precision_score(y[i], s[i]) for i in range(len(s))]
    np.testing.assert_allclose(rowwise_auroc(s, y), roc, atol=1e-12)
    np.testing.assert_allclose(rowwise_auprc(s, y), ap, atol=1e-12)


@given(seed=st.integers(0, 10_000))
def test_rowwise_valid_mask_matches_sklearn_on_subset(seed):
    s, y = _rows(seed, True)
    v = np.random.default_rng(seed + 1).random(s.shape) < 0.7
    v[:, :2] = True
    roc = [roc_auc_score(y[i][v[i]], s[i][v[i]]) for i in range(len(s))]
    ap = [average_precision_score(y[i][v[i]], s[i][v[i]]) for i in range(len(s))]
    np.testing.assert_allclose(rowwise_auroc(s, y, v), roc, atol=1e-12)
    np.testing.assert_allclose(rowwise_auprc(s, y, v), ap, atol=1e-12)


def test_undefined_rows_are_nan_and_perfect_rows_are_one():
    s = np.array([[3.0, 2.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    y = np.array([[1, 1, 0, 0], [0, 0, 0, 0]], bool)
    assert rowwise_auroc(s, y)[0] == 1.0 and np.isnan(rowwise_auroc(s, y)[1])
    assert rowwise_auprc(s, y)[0] == 1.0 and np.isnan(rowwise_auprc(s, y)[1])
    # reversed ranking is the worst case
    assert rowwise_auroc(-s[:1], y[:1])[0] == 0.0


def test_signal_scores_cell_and_peak_wise():
    s, y = _rows(3, False)
    out = signal_scores(s, y, block=5)
    assert out["auroc_cell"] == pytest.approx(np.mean([roc_auc_score(y[i], s[i]) for i in range(12)]))
    peak = [roc_auc_score(y[:, j], s[:, j]) for j in range(25) if 0 < y[:, j].sum() < 12]
    assert out["auroc_peak"] == pytest.approx(np.mean(peak))
    assert signal_scores(y.astype(float), y)["auprc_cell"] == pytest.approx(1.0)


def test_clustering_scores_match_sklearn():
    rng = np.random.default_rng(0)
    t, p = rng.integers(0, 4, 60), rng.integers(0, 3, 60)
    out = clustering_scores(t, p)
    assert out["ari"] == pytest.approx(adjusted_rand_score(t, p))
    assert out["ami"] == pytest.approx(adjusted_mutual_info_score(t, p))
    assert clustering_scores(t, t)["fmi"] == pytest.approx(1.0)


def test_silhouette_uses_one_minus_pearson():
    rng = np.random.default_rng(1)
    X = rng.random((30, 8))
    lab = np.repeat([0, 1, 2], 10)
    C = 1.0 - np.corrcoef(X)
    np.fill_diagonal(C, 0.0)
    expect = silhouette_score(np.clip(C, 0, None), lab, metric="precomputed")
    assert label_silhouette(X, lab) == pytest.approx(expect, abs=1e-10)
    # a scaled copy of a profile is at distance 0: well separated by correlation
    base = rng.random((2, 8))
    Y = np.vstack([base[0] * rng.uniform(0.5, 2, (10, 1)), base[1] * rng.uniform(0.5, 2, (10, 1))])
    assert label_silhouette(Y, np.repeat([0, 1], 10)) == pytest.approx(1.0)


def test_imbalance_index():
    assert imbalance_index([0, 1, 2] * 5) == pytest.approx(0.0, abs=1e-12)
    lab = [0] * 97 + [1, 2, 3]
    p = np.array([0.97, 0.01, 0.01, 0.01])
    assert imbalance_index(lab) == pytest.approx(1 + np.sum(p * np.log(p)) / np.log(4))
    assert imbalance_index(lab) > imbalance_index([0] * 60 + [1] * 40)
    with pytest.raises(ValueError):
        imbalance_index([1, 1, 1])
