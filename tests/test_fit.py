"""fit() on arrays: validation, float32 default, sparse/dense agreement."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse as sp

import sccase_jax
from sccase_jax.init import gram_matrix, jaccard_similarity


def _data(seed=0, m=60, n=30):
    rng = np.random.default_rng(seed)
    C = (rng.random((m, n)) < 0.2) * rng.integers(1, 4, (m, n))
    return sp.csr_matrix(C.astype(float))


def test_fit_result_fields_and_dtype():
    r = sccase_jax.fit(_data(), 3, max_iter=4, dtype=jnp.float32)
    assert r.W.shape == (60, 3) and r.H.shape == (3, 30) and r.Z.shape == (30, 30)
    assert r.W.dtype == np.float32
    assert r.n_iter == len(r.loss) <= 4
    assert r.status in ("converged", "max_iter")


def test_x64_gives_float64():
    r = sccase_jax.fit(_data(), 3, max_iter=2)  # conftest enables x64
    assert r.W.dtype == np.float64


def test_sparse_and_dense_device_x_agree():
    X = _data(1)
    a = sccase_jax.fit(X, 3, max_iter=5, x_format="dense")
    b = sccase_jax.fit(X, 3, max_iter=5, x_format="sparse")
    np.testing.assert_allclose(a.Z, b.Z, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(a.loss, b.loss, rtol=1e-10)


def test_gram_and_jaccard():
    X = _data(2)
    np.testing.assert_allclose(gram_matrix(X, np.float64), (X.T @ X).toarray())
    J = jaccard_similarity(X, normalize=None)
    B = X.toarray() > 0
    i, j = 3, 7
    assert J[i, j] == pytest.approx((B[:, i] & B[:, j]).sum() / (B[:, i] | B[:, j]).sum())
    np.testing.assert_allclose(J, J.T)
    assert J.min() >= 0 and J.max() <= 1
    np.testing.assert_allclose(jaccard_similarity(X).sum(0), 1.0)
    np.testing.assert_allclose(jaccard_similarity(X, "row").sum(1), 1.0)


def test_jaccard_counts_do_not_overflow():
    # Two cells sharing 40,000 open peaks: int16 counting would wrap around.
    X = sp.csr_matrix(np.ones((40_000, 2)))
    J = jaccard_similarity(X, normalize=None)
    np.testing.assert_allclose(J, 1.0)


@pytest.mark.parametrize(
    ("X", "k", "match"),
    [
        (np.ones((5, 4)) * -1, 2, "negative"),
        (np.full((5, 4), np.nan), 2, "NaN"),
        (np.ones(5), 2, "2-d"),
        (np.ones((5, 4)), 0, ">= 1"),
        (np.ones((5, 4)), 5, "exceeds"),
        (np.ones((5, 4)), 2.5, "integer"),
    ],
)
def test_fit_rejects_bad_input(X, k, match):
    with pytest.raises(sccase_jax.InputError, match=match):
        sccase_jax.fit(X, k)


def test_nonfinite_during_fit_is_reported_not_nan():
    # Values this large overflow float32 inside F: the fit reports it and returns finite factors.
    X = _data(3) * 1e30
    r = sccase_jax.fit(X, 2, max_iter=5, dtype=jnp.float32)
    assert r.status == "nonfinite"
    assert not r.converged
    assert np.all(np.isfinite(r.Z)) or r.n_iter == 0
