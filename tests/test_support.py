"""The support-restricted scCASE fit (the solver over terms on the support layout): its
objective, the exact H quartic, monotone F, and agreement with the dense fit."""

import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sccase_jax.layout import SupportLayout, dense_z
from sccase_jax.objectives.sccase import sccase_loss
from sccase_jax.params import Data, Factors, Hyperparams, SolverConfig
from sccase_jax.solver.alternating import run as dense_run
from sccase_jax.solver.over_terms import quartic_coefficients, run
from sccase_jax.terms import Objective, TermData, sccase_terms


def random_support(rng, n, d):
    """``idx`` (n x d) with ``idx[j, 0] = j`` and distinct entries per row."""
    idx = np.empty((n, d), np.int32)
    for j in range(n):
        others = rng.permutation(np.delete(np.arange(n), j))[: d - 1]
        idx[j] = np.concatenate([[j], others])
    return idx


def small_problem(seed, m=7, n=6, d=3, k=2, lam=3.0, alpha=0.0, off=1.0):
    """``(objective, data, layout, factors, hp)`` of a random support-restricted problem."""
    rng = np.random.default_rng(seed)
    X = jnp.asarray(rng.random((m, n)) * (rng.random((m, n)) < 0.6))
    idx = random_support(rng, n, d)
    layout = SupportLayout.create(X, idx, rng.random((n, d)) < 0.8, off)
    P, M = np.zeros((m, k)), np.zeros(k)
    if alpha:
        P[:, 0], M[0] = rng.random(m), 1.0
    data = TermData(X, P=jnp.asarray(P), M=jnp.asarray(M))
    f = Factors(jnp.asarray(rng.random((m, k))), jnp.asarray(rng.random((k, n))),
                jnp.asarray(rng.random((n, d))))
    hp = Hyperparams.create(lam, 0.7, 1.3, alpha, dtype=jnp.float64)
    return Objective(sccase_terms(hp)), data, layout, f, hp


@given(st.integers(0, 10_000), st.integers(1, 6), st.sampled_from([0.0, 2.0]))
def test_restricted_objective_is_the_dense_one_with_z_zero_off_support(seed, d, alpha):
    obj, data, layout, f, hp = small_problem(seed, d=d, alpha=alpha)
    Z = dense_z(f.Z, layout.idx)
    R = dense_z(layout.mask, layout.idx) > 0
    F_dense = sccase_loss(data.X, Z, R, f.W, f.H, lam=hp.lam, gamma1=hp.gamma1, gamma2=hp.gamma2)
    F_dense = F_dense + hp.alpha * jnp.sum((data.P - f.W * data.M[None, :]) ** 2)
    np.testing.assert_allclose(obj.value(f, data, layout), F_dense, rtol=1e-11)


def test_on_support_only_similarity():
    obj, data, layout, f, hp = small_problem(5, d=4, off=0.0)
    Q = dense_z(f.Z, layout.idx) - f.H.T @ f.H
    on = dense_z(jnp.ones_like(f.Z), layout.idx) > 0
    full = obj.value(f, data, layout._replace(off=jnp.asarray(1.0)))
    part = obj.value(f, data, layout)
    np.testing.assert_allclose(full - part, hp.lam * jnp.sum(jnp.where(on, 0, Q) ** 2), rtol=1e-10)


def full_support_pair(seed, n=12, m=20, k=3):
    """A dense problem and its support-restricted twin with d = n (same R, same start)."""
    rng = np.random.default_rng(seed)
    X = rng.random((m, n)) * (rng.random((m, n)) < 0.5)
    R = rng.random((n, n)) < 0.9
    f0 = Factors(jnp.asarray(rng.random((m, k))), jnp.asarray(rng.random((k, n))),
                 jnp.asarray(rng.random((n, n)) / n))
    idx = random_support(rng, n, n)
    hp = Hyperparams.create(50.0, 1.0, 1.0, 0.0, dtype=jnp.float64)
    dense = Data(X=jnp.asarray(X), G=jnp.asarray(X.T @ X), R=jnp.asarray(R),
                 P=jnp.zeros((m, k)), M=jnp.zeros(k))
    cols = np.broadcast_to(np.arange(n)[:, None], idx.shape)
    layout = SupportLayout.create(jnp.asarray(X), idx, R[idx, cols], 1.0)
    data = TermData(jnp.asarray(X), P=jnp.zeros((m, k)), M=jnp.zeros(k))
    return dense, f0, Objective(sccase_terms(hp)), data, layout, hp


@pytest.mark.parametrize("h_step", ["backtrack", "exact"])
@pytest.mark.parametrize("w_step", ["exact", "printed"])
def test_full_support_fit_equals_the_dense_fit(h_step, w_step):
    dense, f0, obj, data, layout, hp = full_support_pair(0)
    config = SolverConfig(max_iter=8, tol=0.0, z_step="gradient", h_step=h_step, w_step=w_step)
    rd = dense_run(dense, f0, hp, config)
    rs = run(obj, data, layout, f0._replace(Z=layout.gather(f0.Z)), config)
    assert int(rs.n_iter) == int(rd.n_iter) == 8
    np.testing.assert_allclose(rs.loss, rd.loss, rtol=1e-9)
    np.testing.assert_allclose(rs.W, rd.W, rtol=1e-7, atol=1e-10)
    np.testing.assert_allclose(rs.H, rd.H, rtol=1e-7, atol=1e-10)
    np.testing.assert_allclose(layout.to_dense(rs.Z), rd.Z, rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize("off", [1.0, 0.0])
@pytest.mark.parametrize(("h_step", "z_step"), [("backtrack", "auto"), ("exact", "free"),
                                                ("backtrack", "gradient")])
def test_restricted_fit_decreases_F_monotonically(off, h_step, z_step):
    obj, data, layout, f, hp = small_problem(3, m=15, n=10, d=4, k=3, lam=20.0, off=off)
    res = run(obj, data, layout, f, SolverConfig(max_iter=20, tol=0.0, h_step=h_step, z_step=z_step))
    F_end = obj.value(Factors(res.W, res.H, res.Z), data, layout)
    np.testing.assert_allclose(res.loss[-1], F_end, rtol=1e-10)
    hist = np.concatenate([[float(res.initial_loss)], np.asarray(res.loss)])
    assert np.all(np.diff(hist) <= 1e-12 * np.abs(hist[:-1]))
    assert hist[-1] < hist[0]
    assert np.all(np.asarray(res.Z) >= 0) and np.all(np.asarray(res.H) >= 0)


@given(st.integers(0, 10_000), st.sampled_from([1.0, 0.0, 0.4]), st.floats(0.01, 2.0))
def test_h_quartic_coefficients_are_exact(seed, off, t):
    # The exact H step's quartic on the support (c1 from the gradient, the rest by jvp).
    obj, data, layout, f, hp = small_problem(seed, d=3, off=off)
    D = jnp.asarray(np.random.default_rng(seed + 1).normal(size=f.H.shape))
    g = obj.grad(f, data, layout).H
    c1, c2, c3, c4 = quartic_coefficients(obj, f, data, layout, "H", D, g=g)
    F0 = obj.value(f, data, layout)
    want = obj.value(f._replace(H=f.H - t * D), data, layout) - F0
    np.testing.assert_allclose(c1 * t + c2 * t**2 + c3 * t**3 + c4 * t**4, want, rtol=1e-8,
                               atol=1e-9 * abs(float(F0)))
