"""The start of a fit: the NMF's sweeps, its objective trace and its tolerance."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse as sp

from sccase_jax.problem import device_matrix
from sccase_jax.start import nmf


def _x(m=60, n=40, seed=0):
    rng = np.random.default_rng(seed)
    X = sp.random(m, n, density=0.3, random_state=rng, dtype=np.float64)
    X.data = rng.random(X.nnz)
    return X


@pytest.mark.parametrize("fmt", ["dense", "sparse"])
def test_nmf_trace_is_the_objective_after_each_sweep(fmt):
    X = _x()
    Xd = device_matrix(X, np.float64, fmt)
    key = jax.random.PRNGKey(3)
    W, H, sweeps, hist = nmf(Xd, 4, key, 12, trace=True)
    assert int(sweeps) == 12
    hist = np.asarray(hist)
    # The objective after the last sweep is ||X - W H||^2 of the returned factors.
    direct = np.sum((X.toarray() - np.asarray(W) @ np.asarray(H)) ** 2)
    assert hist[-1, 0] == pytest.approx(direct, rel=1e-9)
    # HALS never raises it; the relative decrease is what the tolerance reads.
    assert np.all(np.diff(hist[:, 0]) <= 1e-12 * hist[:-1, 0])
    np.testing.assert_allclose(hist[1:, 1], (hist[:-1, 0] - hist[1:, 0]) / hist[:-1, 0],
                               rtol=1e-9, atol=1e-15)
    # The same factors with and without the trace, and without it (n_iter sweeps, tol 0).
    W2, H2 = nmf(Xd, 4, key, 12)
    np.testing.assert_array_equal(np.asarray(W), np.asarray(W2))
    np.testing.assert_array_equal(np.asarray(H), np.asarray(H2))


def test_nmf_tol_stops_at_the_first_small_decrease():
    X = device_matrix(_x(seed=1), np.float64, "dense")
    key = jax.random.PRNGKey(0)
    _, _, _, full = nmf(X, 3, key, 100, trace=True)
    rel = np.asarray(full)[:, 1]
    tol = float(np.quantile(rel[1:40], 0.5))
    expect = int(np.argmax(rel < tol)) + 1  # sweeps run, the first small one included
    W, H, sweeps, _ = nmf(X, 3, key, 100, tol=tol, trace=True)
    assert int(sweeps) == expect < 100
    # Stopping early gives the iterate of that many sweeps.
    We, He = nmf(X, 3, key, expect)
    np.testing.assert_array_equal(np.asarray(W), np.asarray(We))
    np.testing.assert_array_equal(np.asarray(H), np.asarray(He))


def test_crossprod_splits_peaks_between_dense_and_sparse_products(monkeypatch):
    import sccase_jax.start as start

    rng = np.random.default_rng(4)
    X = sp.random(300, 40, density=0.1, random_state=rng, format="csr")
    X.data = rng.random(X.nnz)
    X[:5] = rng.random((5, 40))  # five peaks open in every cell: the dense part
    X = sp.csr_matrix(X)
    D = X.toarray()
    for speedup in (1e-9, 64.0, 1e12):  # all sparse, split, all dense
        monkeypatch.setattr(start, "DENSE_SPEEDUP", speedup)
        np.testing.assert_allclose(start.crossprod(X), D.T @ D, rtol=1e-6)
        B = (D > 0).astype(float)
        np.testing.assert_array_equal(start.crossprod(X, binary=True), B.T @ B)


@pytest.mark.parametrize("dense_fraction", [0.0, 0.2, 2.0])
def test_host_products_give_the_device_nmf(monkeypatch, dense_fraction):
    # On the host the peaks open in many cells go through a dense block, the others stay
    # sparse (all dense, a mix, all sparse); W comes back in X's own row order.
    import sccase_jax.start as start

    X = _x(seed=2)
    key = jax.random.PRNGKey(1)
    Xd = device_matrix(X, np.float32, "sparse")
    W, H = nmf(Xd, 3, key, 30)
    monkeypatch.setattr(start, "HOST_NNZ", 0)
    monkeypatch.setattr(start, "NMF_DENSE_FRACTION", dense_fraction)
    Wh, Hh = nmf(Xd, 3, key, 30, host=X)  # the same sweeps, scipy's products
    np.testing.assert_allclose(np.asarray(Wh), np.asarray(W), rtol=2e-3, atol=1e-5)
    np.testing.assert_allclose(np.asarray(Hh), np.asarray(H), rtol=2e-3, atol=1e-5)


def test_nndsvda_mean_takes_shapes_past_int32():
    # m n above 2^31 (20,000 cells x 150,000 peaks) once overflowed JAX's int32 argument
    from sccase_jax.start import _nndsvda

    m, n, k = 150_000, 20_000, 2
    rng = np.random.default_rng(0)
    X = sp.csr_matrix((rng.random(3000, dtype=np.float32) + 0.5,
                       (rng.integers(0, m, 3000), rng.integers(0, n, 3000))), shape=(m, n))
    run = jax.jit(lambda key: _nndsvda(  # traced as in the NMF, in 32-bit mode (the default)
        lambda A: jax.pure_callback(lambda a: (X @ np.asarray(a)).astype(np.float32),
                                    jax.ShapeDtypeStruct((m, A.shape[1]), jnp.float32), A),
        lambda B: jax.pure_callback(lambda b: (X.T @ np.asarray(b)).astype(np.float32),
                                    jax.ShapeDtypeStruct((n, B.shape[1]), jnp.float32), B),
        (m, n), jnp.float32, k, key))
    with jax.enable_x64(False):
        W, H = run(jax.random.PRNGKey(0))[:2]
    assert W.shape == (m, k) and H.shape == (k, n)
    assert np.all(np.isfinite(np.asarray(W))) and np.all(np.isfinite(np.asarray(H)))


def test_sketched_sweeps_are_the_sweeps_on_x_when_the_sketch_is_exact():
    # X of rank 6 <= k + 10: the start's range basis Q spans X's columns, Q Q^T X = X, so the
    # sweeps on the sketch are the sweeps on X up to rounding.
    rng = np.random.default_rng(4)
    X = rng.random((70, 6)) @ rng.random((6, 45))
    Xd = device_matrix(X, np.float64, "dense")
    key = jax.random.PRNGKey(2)
    W, H = nmf(Xd, 4, key, 40)
    Ws, Hs = nmf(Xd, 4, key, 40, sketch=40)
    np.testing.assert_allclose(np.asarray(Ws), np.asarray(W), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(np.asarray(Hs), np.asarray(H), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("fmt", ["dense", "sparse"])
def test_sweeps_on_x_after_the_sketch_reach_the_objective_of_sweeps_on_x(fmt):
    X = _x(m=300, n=80, seed=5)  # full rank: the sketch (rank 13) is far from X
    Xd = device_matrix(X, np.float64, fmt)
    key = jax.random.PRNGKey(0)
    _, _, _, exact = nmf(Xd, 3, key, 200, trace=True)
    W, H, sweeps, hist = nmf(Xd, 3, key, 200, trace=True, sketch=150)
    assert int(sweeps) == 200
    hist, exact = np.asarray(hist), np.asarray(exact)
    direct = np.sum((X.toarray() - np.asarray(W) @ np.asarray(H)) ** 2)
    assert hist[-1, 0] == pytest.approx(direct, rel=1e-9)  # the last entries are X's objective
    assert direct <= exact[0, 0]  # below the first sweep on X from the same start
    assert direct == pytest.approx(exact[-1, 0], rel=2e-2)
    # The tolerance stops the sweeps on X only.
    _, _, stopped, _ = nmf(Xd, 3, key, 200, tol=1e-3, trace=True, sketch=150)
    assert 150 < int(stopped) < 200


def test_sketch_on_host_products_gives_the_device_sketch(monkeypatch):
    import sccase_jax.start as start

    X = _x(seed=6)
    key = jax.random.PRNGKey(1)
    Xd = device_matrix(X, np.float32, "sparse")
    W, H = nmf(Xd, 3, key, 30, sketch=20)
    monkeypatch.setattr(start, "HOST_NNZ", 0)
    Wh, Hh = nmf(Xd, 3, key, 30, host=X, sketch=20)
    np.testing.assert_allclose(np.asarray(Wh), np.asarray(W), rtol=2e-3, atol=1e-5)
    np.testing.assert_allclose(np.asarray(Hh), np.asarray(H), rtol=2e-3, atol=1e-5)


def test_bad_sketch_counts():
    from sccase_jax.options import Options
    from sccase_jax.validate import InputError

    Xd = device_matrix(_x(), np.float64, "dense")
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="sketch"):
            nmf(Xd, 2, jax.random.PRNGKey(0), 10, sketch=bad)
    for bad in (-1, "x", 2.5):
        with pytest.raises(InputError, match="nmf_sketch"):
            Options(nmf_sketch=bad)
    # More sketched sweeps than sweeps: every sweep is on the sketch.
    a = nmf(Xd, 2, jax.random.PRNGKey(0), 10, sketch=10)
    b = nmf(Xd, 2, jax.random.PRNGKey(0), 10, sketch=99)
    np.testing.assert_array_equal(np.asarray(a[1]), np.asarray(b[1]))
