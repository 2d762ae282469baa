"""Loss terms over Z's layouts (sccase_jax.terms, sccase_jax.layout), float64.

Every term's value and gradient against jax.grad of an independent direct dense statement,
on the dense and the support layout (the support's value is the dense value of the dense Z
with zeros off the support, the similarity-type terms' off-support part weighed by
``layout.off``); the jvp-derived exact steps against the analytic Z and W steps of the
solver; the full support (d = n) against the dense layout to 1e-9.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sccase_jax.layout import DenseLayout, SupportLayout, full_support, local_quad
from sccase_jax.objectives.batch import batch_penalty
from sccase_jax.params import Factors, Hyperparams
from sccase_jax.solver.linesearch import exact_w_step, exact_z_step, z_step_length
from sccase_jax.terms import (
    TERMS,
    Batch,
    DataFit,
    Depth,
    Objective,
    Reference,
    RidgeH,
    RidgeW,
    Similarity,
    Term,
    TermData,
    register_term,
    sccase_terms,
)

M_, N_, K_ = 7, 6, 2


# -- independent direct statements (dense X, dense n x n Z) ---------------------------------

def _sq(A):
    return jnp.sum(A * A)


def _similarity(Q, on, off):
    return jnp.sum(jnp.where(on, Q * Q, off * Q * Q))


def _batch_projection(Ob):
    C = Ob @ jnp.diag(1.0 / Ob.sum(0)) @ Ob.T
    return C - jnp.full(C.shape, 1.0 / C.shape[0])


DIRECT = {  # (term class, f(W, H, Z, X, R, on, off, data) -> the term at weight 1)
    "data": lambda W, H, Z, X, R, on, off, d: _sq(X @ (Z * R) - W @ H),
    "similarity": lambda W, H, Z, X, R, on, off, d: _similarity(Z - H.T @ H, on, off),
    "ridge_w": lambda W, H, Z, X, R, on, off, d: _sq(W),
    "ridge_h": lambda W, H, Z, X, R, on, off, d: _sq(H),
    "reference": lambda W, H, Z, X, R, on, off, d: _sq(d.P - W * d.M[None, :]),
    "batch": lambda W, H, Z, X, R, on, off, d: _sq(_batch_projection(d.batch) @ Z),
    "depth": lambda W, H, Z, X, R, on, off, d: _similarity(Z - d.depth[:, None] * (H.T @ H), on, off),
}
BUILT_IN = {"data": DataFit, "similarity": Similarity, "ridge_w": RidgeW, "ridge_h": RidgeH,
            "reference": Reference, "batch": Batch, "depth": Depth}


def random_support(rng, n, d):
    idx = np.empty((n, d), np.int32)
    for j in range(n):
        idx[j] = np.concatenate([[j], rng.permutation(np.delete(np.arange(n), j))[: d - 1]])
    return idx


def problem(seed, d=3, off=1.0, full=False):
    """Factors, data and both layouts of one random problem; ``full``: d = n, shuffled."""
    rng = np.random.default_rng(seed)
    X = jnp.asarray(rng.random((M_, N_)) * (rng.random((M_, N_)) < 0.6))
    R = jnp.asarray(rng.random((N_, N_)) < 0.8)
    W, H, Z = (jnp.asarray(rng.random(s)) for s in ((M_, K_), (K_, N_), (N_, N_)))
    codes = np.arange(N_) % 2
    data = TermData(X, P=jnp.asarray(rng.random((M_, K_))), M=jnp.asarray([1.0, 0.0]),
                    batch=jnp.asarray(np.eye(2)[rng.permutation(codes)]),
                    depth=jnp.asarray(rng.random(N_) + 0.5))
    dense = DenseLayout.create(X, R)
    idx = full_support(N_, rng.permutation(N_)) if full else random_support(rng, N_, d)
    support = SupportLayout.create(X, idx, np.zeros(idx.shape, bool), off)
    support = support._replace(mask=support.gather(R))
    V = support.gather(Z)
    return Factors(W, H, Z), Factors(W, H, V), data, dense, support


def _check_against_direct(name, weight, F_layout, factors, data, layout, Zd, Rd, on, off):
    term = BUILT_IN[name](jnp.asarray(weight))
    W, H = factors.W, factors.H
    direct = lambda W, H, Z: weight * DIRECT[name](W, H, Z, data.X, Rd, on, off, data)  # noqa: E731
    np.testing.assert_allclose(term.value(factors, data, layout), direct(W, H, Zd), rtol=1e-10)
    gW, gH, gZ = jax.grad(direct, argnums=(0, 1, 2))(W, H, Zd)
    g = term.grad(factors, data, layout)
    scale = 1e-10 * (1.0 + float(jnp.max(jnp.abs(gZ))) + float(jnp.max(jnp.abs(gH))))
    np.testing.assert_allclose(g.W, gW, rtol=1e-10, atol=scale)
    np.testing.assert_allclose(g.H, gH, rtol=1e-10, atol=scale)
    np.testing.assert_allclose(g.Z, layout.gather(gZ), rtol=1e-10, atol=scale)
    F_both, g_both = term.value_and_grad(factors, data, layout)  # one pass where it shares work
    np.testing.assert_allclose(F_both, term.value(factors, data, layout), rtol=1e-12)
    for a, b in zip(g_both, g):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12 * scale)


@pytest.mark.parametrize("name", sorted(BUILT_IN))
@settings(max_examples=5)
@given(seed=st.integers(0, 2**31 - 1), weight=st.floats(0.1, 50.0))
def test_term_on_dense_layout_matches_direct_statement(name, seed, weight):
    dense_f, _, data, dense, _ = problem(seed)
    on = jnp.ones((N_, N_), bool)
    _check_against_direct(name, weight, None, dense_f, data, dense, dense_f.Z, dense.R, on, 1.0)


@pytest.mark.parametrize("name", sorted(BUILT_IN))
@settings(max_examples=5)
@given(seed=st.integers(0, 2**31 - 1), weight=st.floats(0.1, 50.0), d=st.sampled_from([1, 4]),
       off=st.sampled_from([0.0, 1.0]))
def test_term_on_support_layout_is_dense_term_with_z_zero_off_support(name, seed, weight, d, off):
    _, supp_f, data, _, support = problem(seed, d=d, off=off)
    Zd = support.to_dense(supp_f.Z)
    Rd = support.to_dense(support.mask) > 0
    on = support.to_dense(jnp.ones(support.idx.shape)) > 0
    _check_against_direct(name, weight, None, supp_f, data, support, Zd, Rd, on, off)


# -- exact steps: the jvp-derived ones against the analytic formulas ------------------------

@settings(max_examples=5)
@given(seed=st.integers(0, 2**31 - 1), lam=st.floats(0.1, 1e3), mu=st.sampled_from([None, 2.5]))
def test_jvp_z_step_equals_the_analytic_dense_z_step(seed, lam, mu):
    f, _, data, dense, _ = problem(seed)
    hp = Hyperparams.create(lam, 0.7, 1.3, 2.0, dtype=jnp.float64)
    obj = Objective(sccase_terms(hp, batch_mu=None if mu is None else jnp.asarray(mu)))
    D = obj.grad(f, data, dense).Z
    GDR = dense.G @ jnp.where(dense.R, D, 0)
    if mu is None:
        want = exact_z_step(D, dense.R, GDR, hp.lam)
    else:
        dgd = jnp.vdot(jnp.where(dense.R, D, 0), GDR) + batch_penalty(D, data.batch, mu)
        want = z_step_length(jnp.vdot(D, D), dgd, hp.lam)
    np.testing.assert_allclose(obj.exact_step(f, data, dense, "Z", -D), want, rtol=1e-10)


@settings(max_examples=5)
@given(seed=st.integers(0, 2**31 - 1), lam=st.floats(0.1, 1e3), d=st.sampled_from([1, 4]),
       off=st.sampled_from([0.0, 1.0]))
def test_jvp_z_step_equals_the_analytic_support_z_step(seed, lam, d, off):
    # Paper Eq. 9-11 restricted to the support: <D, D> / (2 (sum_j d_j^T L_j d_j + lam <D, D>)).
    _, f, data, _, layout = problem(seed, d=d, off=off)
    hp = Hyperparams.create(lam, 0.7, 1.3, 2.0, dtype=jnp.float64)
    obj = Objective(sccase_terms(hp))
    D = obj.grad(f, data, layout).Z
    want = z_step_length(jnp.vdot(D, D), local_quad(layout.L, jnp.where(layout.mask, D, 0)), hp.lam)
    np.testing.assert_allclose(obj.exact_step(f, data, layout, "Z", -D), want, rtol=1e-10)


@pytest.mark.parametrize("kind", ["dense", "support"])
@settings(max_examples=5)
@given(seed=st.integers(0, 2**31 - 1), alpha=st.sampled_from([0.0, 3.0]))
def test_jvp_w_step_equals_the_analytic_w_step_per_block(kind, seed, alpha):
    dense_f, supp_f, data, dense, support = problem(seed, d=3)
    f, layout = (dense_f, dense) if kind == "dense" else (supp_f, support)
    hp = Hyperparams.create(7.0, 0.7, 1.3, alpha, dtype=jnp.float64)
    obj = Objective(sccase_terms(hp))
    Mr = data.M[None, :]
    HHt = f.H @ f.H.T
    for mask, gamma in ((Mr, hp.gamma1 + hp.alpha), (1.0 - Mr, hp.gamma1)):
        D = obj.grad(f, data, layout).W * mask  # the solver's block of the gradient
        np.testing.assert_allclose(obj.exact_step(f, data, layout, "W", -D),
                                   exact_w_step(D, HHt, gamma), rtol=1e-10)


@pytest.mark.parametrize("kind", ["dense", "support"])
@pytest.mark.parametrize("block", ["W", "Z"])
@settings(max_examples=5)
@given(seed=st.integers(0, 2**31 - 1))
def test_exact_step_of_every_term_together_zeroes_the_slope(kind, block, seed):
    # All seven terms (batch and depth through jax.grad): F is quadratic along the line,
    # so the derivative of F(x + t D) vanishes at t*.
    dense_f, supp_f, data, dense, support = problem(seed, d=4, off=0.0)
    f, layout = (dense_f, dense) if kind == "dense" else (supp_f, support)
    obj = Objective((DataFit(1.0), Similarity(3.0), Depth(2.0), RidgeW(0.7), RidgeH(1.3),
                     Reference(2.0), Batch(4.0)))
    D = -getattr(obj.grad(f, data, layout), block)
    t = obj.exact_step(f, data, layout, block, D)
    assert t > 0
    along = lambda s: obj.value(f._replace(**{block: getattr(f, block) + s * D}), data, layout)  # noqa: E731
    slope0 = jax.grad(along)(0.0)
    assert abs(float(jax.grad(along)(t))) <= 1e-9 * abs(float(slope0))


# -- the full support is the dense layout ---------------------------------------------------

@pytest.mark.parametrize("off", [0.0, 1.0])
def test_full_support_equals_the_dense_layout(off):
    dense_f, supp_f, data, dense, support = problem(11, off=off, full=True)
    assert support.idx.shape == (N_, N_) and np.all(np.asarray(support.idx[:, 0]) == np.arange(N_))
    terms = [cls(jnp.asarray(2.0)) for cls in BUILT_IN.values()]
    for term in (*terms, Objective(tuple(terms))):
        np.testing.assert_allclose(term.value(supp_f, data, support), term.value(dense_f, data, dense),
                                   rtol=1e-9)
        gs, gd = term.grad(supp_f, data, support), term.grad(dense_f, data, dense)
        F_both, g_both = term.value_and_grad(dense_f, data, dense)
        np.testing.assert_allclose(F_both, term.value(dense_f, data, dense), rtol=1e-12)
        np.testing.assert_allclose(g_both.Z, gd.Z, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(gs.W, gd.W, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(gs.H, gd.H, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(gs.Z, support.gather(gd.Z), rtol=1e-9, atol=1e-9)
        for block in ("W", "Z"):
            Dd = -getattr(gd, block)
            Ds = Dd if block == "W" else support.gather(Dd)
            np.testing.assert_allclose(term.exact_step(supp_f, data, support, block, Ds),
                                       term.exact_step(dense_f, data, dense, block, Dd), rtol=1e-9)
    np.testing.assert_allclose(support.to_dense(supp_f.Z), dense_f.Z)
    np.testing.assert_allclose(support.to_host(supp_f.Z).toarray(), dense.to_host(dense_f.Z))


# -- transformations and the registry -------------------------------------------------------

@pytest.mark.parametrize("kind", ["dense", "support"])
def test_terms_jit_and_vmap_over_their_weights(kind):
    dense_f, supp_f, data, dense, support = problem(5, d=3)
    f, layout = (dense_f, dense) if kind == "dense" else (supp_f, support)
    lams = jnp.asarray([0.5, 3.0, 40.0])
    hp = Hyperparams.create(lams, 0.7, 1.3, 2.0, dtype=jnp.float64)
    value = lambda obj, f, data, layout: obj.value(f, data, layout)  # noqa: E731
    batched = jax.jit(jax.vmap(value, in_axes=(0, None, None, None)))(
        Objective(sccase_terms(hp._replace(gamma1=jnp.full(3, 0.7), gamma2=jnp.full(3, 1.3),
                                           alpha=jnp.full(3, 2.0)))), f, data, layout)
    for i, lam in enumerate(lams):
        one = Objective(sccase_terms(Hyperparams.create(lam, 0.7, 1.3, 2.0, dtype=jnp.float64)))
        np.testing.assert_allclose(batched[i], one.value(f, data, layout), rtol=1e-12)
    step = jax.jit(lambda o, f, d, l, D: o.exact_step(f, d, l, "Z", D))  # noqa: E741
    obj = Objective(sccase_terms(Hyperparams.create(3.0, 0.7, 1.3, 2.0, dtype=jnp.float64)))
    D = -obj.grad(f, data, layout).Z
    np.testing.assert_allclose(step(obj, f, data, layout, D), obj.exact_step(f, data, layout, "Z", D),
                               rtol=1e-12)


def test_register_term():
    assert set(BUILT_IN) <= set(TERMS)
    with pytest.raises(ValueError, match="built-in"):
        register_term("similarity", replace=True)(type("Mine", (Term,), {}))
    with pytest.raises(TypeError, match="subclass"):
        register_term("_test_not_a_term")(type("Plain", (), {}))

    @register_term("_test_sum_h")
    class SumH(Term):
        weight: float = 1.0

        def value(self, factors, data, layout):
            return self.weight * jnp.sum(factors.H)

    try:
        with pytest.raises(ValueError, match="replace=True"):
            register_term("_test_sum_h")(SumH)
        f, _, data, dense, _ = problem(0)
        g = SumH(jnp.asarray(2.0)).grad(f, data, dense)  # jax.grad of value
        np.testing.assert_allclose(g.H, 2.0 * jnp.ones_like(f.H))
        assert jax.tree.leaves(SumH(jnp.asarray(2.0))) == [2.0]
    finally:
        TERMS.pop("_test_sum_h")


def test_unknown_block_is_refused():
    f, _, data, dense, _ = problem(0)
    with pytest.raises(ValueError, match="block"):
        RidgeW(1.0).exact_step(f, data, dense, "V", f.W)
