"""Cell-type number estimation: knee detection and the ensemble on separated data."""

import time

import numpy as np
import pytest
import scipy.sparse as sp
from helpers import typed_counts

from sccase_jax.estimate import estimate_n_components, kneedle


def test_kneedle_finds_the_elbow():
    k = np.arange(1, 16)
    y = np.where(k <= 5, 100.0 - 18 * (k - 1), 28.0 - (k - 5))  # sharp bend at k = 5
    assert k[kneedle(k, y)] == 5
    assert kneedle([1, 2], [3.0, 1.0]) == 0


def _typed(k_true, n_per=40, peaks=300, seed=0):
    C, _ = typed_counts(n_per, k_true, peaks, block=30, p_on=0.6, p_off=0.02, seed=seed)
    C = C.astype(float)
    X = C / C.sum(1, keepdims=True)
    return sp.csr_matrix(X.T)  # peaks x cells, as fit takes it


def test_ensemble_estimates_separated_types():
    for k_true in (3, 6):
        est = estimate_n_components(_typed(k_true), k_max=12, details=True)
        assert abs(est.k - k_true) <= 1, est
        assert 2 <= min(est.knee, est.davies_bouldin, est.silhouette)


def test_estimate_is_fast_and_seeded():
    X = _typed(4, n_per=100)
    t = time.perf_counter()
    a = estimate_n_components(X, seed=1)
    assert time.perf_counter() - t < 20
    assert a == estimate_n_components(X, seed=1)
    assert isinstance(a, int)


def test_davies_bouldin_rule_takes_the_smallest_near_optimal_k():
    X = _typed(4, seed=3)
    est = estimate_n_components(X, k_max=12, details=True)
    i = int(np.flatnonzero(est.ks == est.davies_bouldin)[0])
    assert est.db[i] <= est.db.min() * 1.1 + 1e-12
    assert np.all(est.db[:i] > est.db.min() * 1.1)  # no smaller k is within 10 %
    bare = estimate_n_components(X, k_max=12, db_tolerance=0.0, details=True)
    assert bare.davies_bouldin == int(bare.ks[np.argmin(bare.db)])
    assert est.davies_bouldin <= bare.davies_bouldin


def test_davies_bouldin_equals_scikit_learns():
    from hypothesis import given
    from hypothesis import strategies as st
    from sklearn.metrics import davies_bouldin_score

    from sccase_jax.estimate import davies_bouldin

    @given(st.integers(2, 9), st.integers(0, 2**31 - 1))
    def check(c, seed):
        rng = np.random.default_rng(seed)
        emb = rng.normal(size=(60, 5)) + rng.integers(0, 3, (60, 1))
        labels = rng.integers(0, c, 60) * 3 + 1  # codes need not be 0..c-1
        if len(np.unique(labels)) < 2:
            return
        assert davies_bouldin(emb, labels) == pytest.approx(davies_bouldin_score(emb, labels),
                                                            rel=1e-12)

    check()
    assert davies_bouldin(np.ones((5, 2)), np.zeros(5)) == np.inf


def test_silhouette_equals_scikit_learns():
    from hypothesis import given
    from hypothesis import strategies as st
    from sklearn.metrics import pairwise_distances, silhouette_score

    from sccase_jax.estimate import silhouette

    @given(st.integers(2, 12), st.integers(0, 2**31 - 1))
    def check(c, seed):
        rng = np.random.default_rng(seed)
        emb = rng.normal(size=(50, 4)) + rng.integers(0, 3, (50, 1))
        labels = rng.integers(0, c, 50) * 5 + 2  # codes need not be 0..c-1; singletons happen
        if not 2 <= len(np.unique(labels)) <= 49:
            return
        D = pairwise_distances(emb)
        assert silhouette(D, labels) == pytest.approx(
            silhouette_score(D, labels, metric="precomputed"), rel=1e-12, abs=1e-14)

    check()
    # A cluster of one cell scores 0 for that cell, as in scikit-learn.
    D = pairwise_distances(np.array([[0.0], [0.1], [0.2], [5.0]]))
    assert silhouette(D, np.array([0, 0, 0, 1])) == pytest.approx(
        silhouette_score(D, [0, 0, 0, 1], metric="precomputed"))


def test_pca_from_the_gram_matrix_is_the_pca_up_to_sign():
    from sccase_jax.estimate import pca_from_gram
    from sccase_jax.evaluation.clustering import pca_embedding

    X = _typed(4, n_per=30)  # peaks x cells
    M = X.T.tocsr()
    ref = pca_embedding(M, 6, transform=None)
    got = pca_from_gram((M @ M.T).toarray(), 6)
    signs = np.sign(np.sum(ref * got, axis=0))
    np.testing.assert_allclose(got * signs, ref, rtol=1e-7, atol=1e-9)
    assert estimate_n_components(X, seed=2, gram=(M @ M.T).toarray()) == estimate_n_components(X, seed=2)
