"""Analytic gradients equal jax.grad of the pure losses (float64)."""

import jax
import jax.numpy as jnp
import numpy as np
from helpers import SHAPES, tiny_problem
from hypothesis import given
from hypothesis import strategies as st

from sccase_jax.objectives.sccase import (
    grad_h_gram,
    grad_w_gram,
    grad_z_gram,
    gram_loss,
    sccase_grads,
    sccase_loss,
    sccaser_grads,
    sccaser_loss,
)
from sccase_jax.ops import wt_x

problems = st.builds(
    tiny_problem,
    seed=st.integers(0, 10_000),
    m=st.just(12),
    n=st.just(9),
    k=st.just(3),
    lam=st.sampled_from([0.0, 0.3, 2.0, 1e3]),
    scale=st.floats(0.01, 10.0),
)


def close(a, b):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-9, atol=1e-9 * (1 + float(jnp.abs(b).max())))


@given(problems)
def test_sccase_grads_match_autodiff(problem):
    data, (W, H, Z), hp = problem
    kw = dict(lam=hp.lam, gamma1=hp.gamma1, gamma2=hp.gamma2)
    auto = jax.grad(lambda W, H, Z: sccase_loss(data.X, Z, data.R, W, H, **kw), argnums=(0, 1, 2))(W, H, Z)
    ana = sccase_grads(data.X, Z, data.R, W, H, **kw)
    for a, b in zip(ana, auto):
        close(a, b)


@given(st.integers(0, 10_000), st.sampled_from(SHAPES), st.integers(1, 2), st.floats(0.0, 50.0))
def test_sccaser_grads_match_autodiff(seed, shape, k_ref, alpha):
    m, n, k = shape
    data, (W, H, Z), hp = tiny_problem(seed, m, n, k, k_ref=min(k_ref, k - 1))
    rng = np.random.default_rng(seed + 1)
    W1, W2 = jnp.asarray(rng.random((m, k))), jnp.asarray(rng.random((m, k)))
    M = jnp.broadcast_to(data.M[None, :], (m, k))
    N = 1.0 - M
    kw = dict(lam=hp.lam, gamma1=hp.gamma1, gamma2=hp.gamma2, alpha=alpha)
    f = lambda W1, W2, H, Z: sccaser_loss(data.X, Z, data.R, W1, W2, H, data.P, M, N, **kw)  # noqa: E731
    auto = jax.grad(f, argnums=(0, 1, 2, 3))(W1, W2, H, Z)
    ana = sccaser_grads(data.X, Z, data.R, W1, W2, H, data.P, M, N, **kw)
    for a, b in zip(ana, auto):
        close(a, b)


@given(st.integers(0, 10_000), st.sampled_from(SHAPES), st.sampled_from([0, 1]))
def test_gram_form_grads_match_autodiff(seed, shape, k_ref):
    """The solver's Gram-form gradients (stacked W = [W1 | W2]) equal jax.grad."""
    m, n, k = shape
    data, (W, H, Z), hp = tiny_problem(seed, m, n, k, k_ref=k_ref)
    Rf = data.R.astype(Z.dtype)

    def F(W, H, Z):
        S = Z * Rf
        return gram_loss(S, data.G @ S, wt_x(data.X, W), W, H, Z, data.P, data.M, hp)

    dW, dH, dZ = jax.grad(F, argnums=(0, 1, 2))(W, H, Z)
    S = Z * Rf
    Q = Z - H.T @ H
    B = wt_x(data.X, W)
    close(grad_z_gram(data.G @ S, B, H, Q, Rf, hp.lam), dZ)
    close(grad_w_gram(W, data.X @ (S @ H.T), H @ H.T, data.P, data.M, hp.gamma1, hp.alpha), dW)
    close(grad_h_gram(B @ S, W.T @ W, H, Q, hp.lam, hp.gamma2), dH)


@given(st.integers(0, 10_000), st.sampled_from(SHAPES), st.sampled_from([0, 1]))
def test_gram_loss_equals_direct_loss(seed, shape, k_ref):
    m, n, k = shape
    data, (W, H, Z), hp = tiny_problem(seed, m, n, k, k_ref=k_ref)
    S = Z * data.R.astype(Z.dtype)
    gram = gram_loss(S, data.G @ S, wt_x(data.X, W), W, H, Z, data.P, data.M, hp)
    Mm = jnp.broadcast_to(data.M[None, :], (m, k))
    direct = sccaser_loss(
        data.X, Z, data.R, W, W, H, data.P, Mm, 1.0 - Mm,
        lam=hp.lam, gamma1=hp.gamma1, gamma2=hp.gamma2, alpha=hp.alpha,
    )
    np.testing.assert_allclose(float(gram), float(direct), rtol=1e-10)
    if k_ref == 0:
        plain = sccase_loss(data.X, Z, data.R, W, H, lam=hp.lam, gamma1=hp.gamma1, gamma2=hp.gamma2)
        np.testing.assert_allclose(float(gram), float(plain), rtol=1e-10)
