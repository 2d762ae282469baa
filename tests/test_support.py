"""The support-restricted scCASE fit: objective, gradients, solver, agreement with dense."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sccase_jax.objectives.sccase import sccase_loss
from sccase_jax.params import Data, Factors, Hyperparams, SolverConfig
from sccase_jax.solver.alternating import run as dense_run
from sccase_jax.support.objective import (
    SupportData,
    dense_z,
    grad_h_support,
    grad_v_support,
    grad_w_support,
    support_loss,
)
from sccase_jax.support.solver import run as support_run


def random_support(rng, n, d):
    """``idx`` (n x d) with ``idx[j, 0] = j`` and distinct entries per row."""
    idx = np.empty((n, d), np.int32)
    for j in range(n):
        others = rng.permutation(np.delete(np.arange(n), j))[: d - 1]
        idx[j] = np.concatenate([[j], others])
    return idx


def local_grams(X, idx):
    Xc = X[:, idx]  # m x n x d
    return np.einsum("mja,mjb->jab", Xc, Xc)


def small_problem(seed, m=7, n=6, d=3, k=2, lam=3.0, alpha=0.0, off=1.0):
    rng = np.random.default_rng(seed)
    X = rng.random((m, n)) * (rng.random((m, n)) < 0.6)
    idx = random_support(rng, n, d)
    mask = rng.random((n, d)) < 0.8
    P = np.zeros((m, k))
    M = np.zeros(k)
    if alpha:
        P[:, 0] = rng.random(m)
        M[0] = 1.0
    data = SupportData(X=jnp.asarray(X), idx=jnp.asarray(idx), mask=jnp.asarray(mask),
                       L=jnp.asarray(local_grams(X, idx)), P=jnp.asarray(P), M=jnp.asarray(M),
                       off=jnp.asarray(off))
    W = jnp.asarray(rng.random((m, k)))
    H = jnp.asarray(rng.random((k, n)))
    V = jnp.asarray(rng.random((n, d)))
    hp = Hyperparams.create(lam, 0.7, 1.3, alpha, dtype=jnp.float64)
    return data, W, H, V, hp


def dense_mask(data):
    n = data.idx.shape[0]
    cols = jnp.broadcast_to(jnp.arange(n)[:, None], data.idx.shape)
    return jnp.zeros((n, n), bool).at[data.idx, cols].set(data.mask)


@given(st.integers(0, 10_000), st.integers(1, 6), st.sampled_from([0.0, 2.0]))
def test_restricted_objective_is_the_dense_one_with_z_zero_off_support(seed, d, alpha):
    data, W, H, V, hp = small_problem(seed, d=d, alpha=alpha)
    Z = dense_z(V, data.idx)
    F_dense = sccase_loss(data.X, Z, dense_mask(data), W, H, lam=hp.lam, gamma1=hp.gamma1,
                          gamma2=hp.gamma2) + hp.alpha * jnp.sum((data.P - W * data.M[None, :]) ** 2)
    np.testing.assert_allclose(support_loss(data, W, H, V, hp), F_dense, rtol=1e-11)


def test_on_support_only_similarity():
    data, W, H, V, hp = small_problem(5, d=4, off=0.0)
    Q = dense_z(V, data.idx) - H.T @ H
    on = dense_z(jnp.ones_like(V), data.idx) > 0
    full = support_loss(data._replace(off=jnp.asarray(1.0)), W, H, V, hp)
    part = support_loss(data, W, H, V, hp)
    np.testing.assert_allclose(full - part, hp.lam * jnp.sum(jnp.where(on, 0, Q) ** 2),
                               rtol=1e-10)


@given(st.integers(0, 10_000), st.integers(1, 6), st.sampled_from([0.0, 2.0]),
       st.sampled_from([1.0, 0.0, 0.3]))
def test_gradients_match_jax_grad(seed, d, alpha, off):
    data, W, H, V, hp = small_problem(seed, d=d, alpha=alpha, off=off)
    gW, gH, gV = jax.grad(lambda W, H, V: support_loss(data, W, H, V, hp), argnums=(0, 1, 2))(
        W, H, V)
    B = W.T @ data.X
    np.testing.assert_allclose(grad_v_support(data, V, B, H, hp.lam), gV, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(grad_h_support(data, V, B, W, H, hp.lam, hp.gamma2), gH,
                               rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(grad_w_support(data, V, W, H, hp), gW, rtol=1e-9, atol=1e-9)


def full_support_pair(seed, h_step, n=12, m=20, k=3):
    """A dense problem and its support-restricted twin with d = n (same R, same start)."""
    rng = np.random.default_rng(seed)
    X = rng.random((m, n)) * (rng.random((m, n)) < 0.5)
    R = rng.random((n, n)) < 0.9
    W = rng.random((m, k))
    H = rng.random((k, n))
    Z = rng.random((n, n)) / n
    idx = random_support(rng, n, n)
    hp = Hyperparams.create(50.0, 1.0, 1.0, 0.0, dtype=jnp.float64)
    dense = Data(X=jnp.asarray(X), G=jnp.asarray(X.T @ X), R=jnp.asarray(R),
                 P=jnp.zeros((m, k)), M=jnp.zeros(k))
    cols = np.broadcast_to(np.arange(n)[:, None], idx.shape)
    supp = SupportData(X=jnp.asarray(X), idx=jnp.asarray(idx), mask=jnp.asarray(R[idx, cols]),
                       L=jnp.asarray(local_grams(X, idx)), P=jnp.zeros((m, k)), M=jnp.zeros(k))
    V = jnp.asarray(Z[idx, cols])
    return dense, Factors(jnp.asarray(W), jnp.asarray(H), jnp.asarray(Z)), supp, V, hp


@pytest.mark.parametrize("h_step", ["backtrack", "exact"])
def test_full_support_fit_equals_the_dense_fit(h_step):
    dense, f0, supp, V0, hp = full_support_pair(0, h_step)
    config = SolverConfig(max_iter=8, tol=0.0, z_step="gradient", h_step=h_step)
    rd = dense_run(dense, f0, hp, config)
    rs = support_run(supp, f0.W, f0.H, V0, hp, config)
    assert int(rs.n_iter) == int(rd.n_iter) == 8
    np.testing.assert_allclose(rs.loss, rd.loss, rtol=1e-9)
    np.testing.assert_allclose(rs.W, rd.W, rtol=1e-7, atol=1e-10)
    np.testing.assert_allclose(rs.H, rd.H, rtol=1e-7, atol=1e-10)
    np.testing.assert_allclose(dense_z(rs.Z, supp.idx), rd.Z, rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize("off", [1.0, 0.0])
@pytest.mark.parametrize("h_step", ["backtrack", "exact"])
def test_restricted_fit_decreases_F_monotonically(off, h_step):
    data, W, H, V, hp = small_problem(3, m=15, n=10, d=4, k=3, lam=20.0, off=off)
    res = support_run(data, W, H, V, hp, SolverConfig(max_iter=20, tol=0.0, h_step=h_step))
    F_end = support_loss(data, res.W, res.H, res.Z, hp)
    np.testing.assert_allclose(res.loss[-1], F_end, rtol=1e-10)
    hist = np.concatenate([[float(res.initial_loss)], np.asarray(res.loss)])
    assert np.all(np.diff(hist) <= 1e-12 * np.abs(hist[:-1]))
    assert hist[-1] < hist[0]
    assert np.all(np.asarray(res.Z) >= 0) and np.all(np.asarray(res.H) >= 0)


@given(st.integers(0, 10_000), st.sampled_from([1.0, 0.0, 0.4]), st.floats(0.01, 2.0))
def test_h_quartic_coefficients_are_exact(seed, off, t):
    from sccase_jax.support.objective import apply_ell
    from sccase_jax.support.solver import _h_quartic

    data, W, H, V, hp = small_problem(seed, d=3, off=off)
    D = jnp.asarray(np.random.default_rng(seed + 1).normal(size=H.shape))
    B = W.T @ data.X
    BS = apply_ell(B, jnp.where(data.mask, V, 0), data.idx)
    c1, c2, c3, c4 = _h_quartic(data, V, H, D, BS, W.T @ W, hp)
    want = support_loss(data, W, H - t * D, V, hp) - support_loss(data, W, H, V, hp)
    np.testing.assert_allclose(c1 * t + c2 * t**2 + c3 * t**3 + c4 * t**4, want, rtol=1e-8,
                               atol=1e-9 * abs(float(support_loss(data, W, H, V, hp))))
