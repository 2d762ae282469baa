"""Step sizes: the exact Z, W and H steps minimise F along their search line."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import SHAPES, tiny_problem
from hypothesis import given
from hypothesis import strategies as st

from sccase_jax.objectives.sccase import grad_h_gram, grad_w_gram, gram_loss
from sccase_jax.ops import wt_x
from sccase_jax.solver.linesearch import (
    exact_h_step,
    exact_w_step,
    exact_z_step,
    line_search,
    quartic_h_coefficients,
)


def _loss_fn(data, hp):
    def F(W, H, Z):
        S = Z * data.R.astype(Z.dtype)
        return gram_loss(S, data.G @ S, wt_x(data.X, W), W, H, Z, data.P, data.M, hp)

    return F


def _assert_line_minimum(phi, d):
    d = float(d)
    assert d > 0
    slope = float(jax.grad(phi)(jnp.asarray(d)))
    scale = abs(float(jax.grad(phi)(jnp.asarray(0.0))))
    assert abs(slope) <= 1e-7 * scale
    f0 = float(phi(jnp.asarray(d)))
    for eps in (1e-3, 1e-2):
        assert float(phi(jnp.asarray(d * (1 + eps)))) > f0
        assert float(phi(jnp.asarray(d * (1 - eps)))) > f0


@given(st.integers(0, 10_000), st.sampled_from(SHAPES), st.sampled_from([0.0, 1.0, 1e4]))
def test_exact_z_step_is_line_minimiser(seed, shape, lam):
    data, (W, H, Z), hp = tiny_problem(seed, *shape, lam=lam)
    F = _loss_fn(data, hp)
    D = jax.grad(F, argnums=2)(W, H, Z)
    Rf = data.R.astype(Z.dtype)
    d = exact_z_step(D, data.R, data.G @ (D * Rf), hp.lam)
    _assert_line_minimum(lambda t: F(W, H, Z - t * D), d)


@given(st.integers(0, 10_000), st.sampled_from(SHAPES), st.sampled_from([0, 1]))
def test_exact_w_step_is_line_minimiser(seed, shape, k_ref):
    data, (W, H, Z), hp = tiny_problem(seed, *shape, k_ref=k_ref)
    F = _loss_fn(data, hp)
    S = Z * data.R.astype(Z.dtype)
    D = grad_w_gram(W, data.X @ (S @ H.T), H @ H.T, data.P, data.M, hp.gamma1, hp.alpha)
    np.testing.assert_allclose(D, jax.grad(F)(W, H, Z), rtol=1e-9, atol=1e-12)
    Mr = data.M[None, :]
    # Each block of the stacked W on its own, as the solver moves them.
    for mask, ridge in ((Mr, hp.gamma1 + hp.alpha), (1.0 - Mr, hp.gamma1)):
        Db = D * mask
        if float(jnp.vdot(Db, Db)) == 0:
            assert float(exact_w_step(Db, H @ H.T, ridge)) == 0.0
            continue
        d = exact_w_step(Db, H @ H.T, ridge)
        _assert_line_minimum(lambda t: F(W - t * Db, H, Z), d)


def test_printed_w_step_differs_when_gamma1_positive():
    data, (W, H, Z), hp = tiny_problem(3)
    F = _loss_fn(data, hp)
    D = jax.grad(F)(W, H, Z)
    exact = float(exact_w_step(D, H @ H.T, hp.gamma1))
    printed = float(exact_w_step(D, H @ H.T, 0.0))
    assert printed > exact  # without the ridge curvature the printed step overshoots
    phi = lambda t: F(W - t * D, H, Z)  # noqa: E731
    assert float(phi(jnp.asarray(exact))) < float(phi(jnp.asarray(printed)))


@given(st.integers(0, 10_000), st.sampled_from(SHAPES), st.sampled_from([0.0, 1.0, 1e3]))
def test_quartic_coefficients_and_exact_h_step(seed, shape, lam):
    data, (W, H, Z), hp = tiny_problem(seed, *shape, lam=lam)
    F = _loss_fn(data, hp)
    D = jax.grad(F, argnums=1)(W, H, Z)
    S = Z * data.R.astype(Z.dtype)
    Q = Z - H.T @ H
    B = wt_x(data.X, W)
    np.testing.assert_allclose(D, grad_h_gram(B @ S, W.T @ W, H, Q, hp.lam, hp.gamma2), rtol=1e-9, atol=1e-12)
    coefs = quartic_h_coefficients(H, D, Q, H @ Q, B @ S, W.T @ W, hp.lam, hp.gamma2)
    phi = lambda t: F(W, H - t * D, Z)  # noqa: E731
    # The polynomial reproduces F along the line, and its slope at 0 is -<D, D>.
    np.testing.assert_allclose(float(coefs[0]), -float(jnp.vdot(D, D)), rtol=1e-9)
    f0 = float(phi(jnp.asarray(0.0)))
    for t in (1e-3, 0.05, 0.4):
        poly = sum(float(c) * t ** (i + 1) for i, c in enumerate(coefs))
        np.testing.assert_allclose(float(phi(jnp.asarray(t))) - f0, poly, rtol=1e-8, atol=1e-9 * abs(f0))
    d = exact_h_step(coefs)
    _assert_line_minimum(phi, d)
    # It is the global minimiser over d > 0: no grid point does better.
    grid = jnp.geomspace(float(d) * 1e-3, float(d) * 1e3, 200)
    assert float(phi(d)) <= float(jnp.min(jax.vmap(phi)(grid))) + 1e-12 * abs(f0)


def test_exact_h_step_picks_lower_of_two_minima():
    # phi(d) = (d-1)^2 (d-3)^2 - 9 - 0.5 d has two local minima; the one near 3 is lower.
    npp = np.polynomial.polynomial
    p = npp.polyadd(npp.polymul([3, -4, 1], [3, -4, 1]), [-9, -0.5])
    assert abs(p[0]) < 1e-12
    d = float(exact_h_step(tuple(jnp.asarray(c) for c in p[1:])))
    crit = np.sort(npp.polyroots(npp.polyder(p)).real)
    assert d == pytest.approx(crit[-1], rel=1e-9)
    assert npp.polyval(d, p) < npp.polyval(crit[0], p)


def test_line_search_backtracks_and_never_increases():
    f = lambda x, d=None: (jnp.sum((x - 1.0) ** 2), None)  # noqa: E731
    x = jnp.zeros(3)
    D = -2.0 * jnp.ones(3)  # gradient at 0
    F0 = f(x)[0]
    # A huge first step overshoots; halving finds a decrease.
    x1, F1, _ = line_search(x, D, 10.0, 0.5, 10, f, F0, None)
    assert float(F1) < float(F0)
    np.testing.assert_allclose(float(f(x1)[0]), float(F1))
    # No trial can decrease F: x is kept.
    x2, F2, _ = line_search(x, -D, 1.0, 0.5, 5, f, F0, None)
    np.testing.assert_array_equal(x2, x)
    assert float(F2) == float(F0)
    # Projection onto >= 0 is applied.
    x3, _, _ = line_search(x, D, 10.0, 0.5, 1, f, F0, None, accept_any=True)
    assert float(jnp.min(x3)) >= 0


def test_line_search_returns_first_passing_trial_and_its_aux():
    # F(x) = (x - 1)^2 from x = 0 along -D = +1: trials 8, 4, 2, 1, ... ; 8 and 4 overshoot
    # (F = 49, 9 > F0 = 1); 2 gives F = 1 = F0 and is the first to pass.
    f = lambda x, d=None: (jnp.sum((x - 1.0) ** 2), {"cand": x, "twice": 2.0 * x})  # noqa: E731
    x = jnp.zeros(1)
    D = -jnp.ones(1)
    F0 = f(x)[0]
    aux0 = {"cand": x, "twice": 2.0 * x}
    x1, F1, aux1 = line_search(x, D, 8.0, 0.5, 10, f, F0, aux0)
    np.testing.assert_array_equal(x1, [2.0])
    np.testing.assert_array_equal(aux1["cand"], x1)
    np.testing.assert_array_equal(aux1["twice"], 2.0 * x1)
    assert float(F1) == 1.0
    # Too few trials to reach a passing step: x and aux0 come back unchanged.
    x2, F2, aux2 = line_search(x, D, 8.0, 0.5, 2, f, F0, aux0)
    np.testing.assert_array_equal(x2, x)
    np.testing.assert_array_equal(aux2["twice"], aux0["twice"])
    assert float(F2) == float(F0)


def test_line_search_passes_each_trial_its_step():
    # objective(candidate, d): the free Z step rebuilds G S of a trial from d.
    x = jnp.zeros(1)
    D = -jnp.ones(1)
    f = lambda c, d: (jnp.sum((c - 1.0) ** 2), {"d": d, "cand": c})  # noqa: E731
    aux0 = {"d": jnp.zeros(()), "cand": x}
    x1, _, aux1 = line_search(x, D, 8.0, 0.5, 10, f, f(x, 0.0)[0], aux0)
    assert float(aux1["d"]) == 2.0  # trials 8, 4 overshoot; 2 is the first to pass
    np.testing.assert_array_equal(aux1["cand"], x1)
