"""fit() on arrays: validation, float32 default, sparse/dense agreement."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse as sp

import sccase_jax
from sccase_jax.problem import prepare
from sccase_jax.start import gram_matrix, jaccard_similarity, jaccard_similarity_device


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


@pytest.mark.parametrize("normalize", ["column", "row", None])
def test_device_jaccard_equals_host(normalize):
    X = _data(4, m=80, n=40)
    X = sp.csr_matrix(X.toarray() * (np.arange(40) != 5))  # an empty cell: 0 row and column
    got = jaccard_similarity_device(jnp.asarray(X.toarray()), normalize)
    np.testing.assert_allclose(got, jaccard_similarity(X, normalize), rtol=1e-12, atol=1e-15)
    with pytest.raises(ValueError, match="normalize"):
        jaccard_similarity_device(jnp.asarray(X.toarray()), "both")


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_prepare_reduces_on_device_or_host_alike(dtype):
    X = _data(5)
    host = prepare(X, 3, reduce_on="host", dtype=dtype)
    dev = prepare(X, 3, reduce_on="device", dtype=dtype)
    rtol = 1e-6 if dtype == jnp.float32 else 1e-12
    np.testing.assert_allclose(dev.data.G, host.data.G, rtol=rtol)
    np.testing.assert_allclose(dev.factors.Z, host.factors.Z, rtol=rtol, atol=1e-7 * rtol)
    assert dev.factors.Z.dtype == dtype
    np.testing.assert_array_equal(dev.data.R, host.data.R)
    with pytest.raises(sccase_jax.InputError, match="dense on device"):
        prepare(X, 3, reduce_on="device", x_format="sparse")
    with pytest.raises(sccase_jax.InputError, match="reduce_on"):
        prepare(X, 3, reduce_on="gpu")


def test_solver_products_use_the_configured_precision():
    # Tensor-core modes (JAX's default for float32 on GPUs) are opt-in: the default fit
    # asks for true float32 in every product, whatever the global setting.
    prob = prepare(_data(6), 3, dtype=jnp.float32)
    from sccase_jax.solver import run

    def hlo(config):
        return run.lower(prob.data, prob.factors, prob.hp, config=config).as_text()

    with jax.default_matmul_precision("bfloat16"):
        text = hlo(sccase_jax.SolverConfig(max_iter=2))
    assert "precision = [HIGHEST, HIGHEST]" in text and "DEFAULT" not in text
    text = hlo(sccase_jax.SolverConfig(max_iter=2, precision="tensorfloat32"))
    assert "precision = [HIGH, HIGH]" in text and "HIGHEST" not in text


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


def test_x_tol_defaults_follow_tol_preset_and_config():
    from sccase_jax.options import DEFAULT_X_TOL, Options
    from sccase_jax.params import SolverConfig

    assert Options().resolved().x_tol == DEFAULT_X_TOL
    assert Options(tol=1e-6).resolved().x_tol == 0.0  # tol given: the paper's rule alone
    assert Options(tol=1e-6, x_tol=1e-3).resolved().x_tol == 1e-3
    assert Options(preset="release").resolved().x_tol == 0.0
    assert Options(config=SolverConfig(x_tol=5e-5)).resolved().x_tol == 5e-5
    with pytest.raises(sccase_jax.validate.InputError):
        Options(x_tol=-1.0)


def test_default_fit_ends_converged_on_the_iterate_rule():
    from sccase_jax.datasets import granja_bm600

    a = granja_bm600()
    X, _, _ = sccase_jax.preprocess(a.X.T)
    res = sccase_jax.fit(X, 7, seed=0, dtype="float32")
    assert res.status == "converged" and res.n_iter <= 5
    assert res.x_change < res.params["x_tol"] == 1e-4
    assert "settled" in res.message and "x_tol" in res.message
    paper = sccase_jax.fit(X, 7, seed=0, dtype="float32", tol=1e-6, max_iter=res.n_iter + 2)
    assert paper.params["x_tol"] == 0.0 and paper.n_iter == res.n_iter + 2
