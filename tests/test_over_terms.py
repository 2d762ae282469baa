"""The alternating step over (layout, terms) (sccase_jax.solver.over_terms), float64:
equal to the Gram-form dense solver on its problems with every step rule, and monotone for
terms it cannot fit (batch and depth on a support)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sccase_jax.layout import DenseLayout, SupportLayout
from sccase_jax.params import Data, Factors, Hyperparams, SolverConfig
from sccase_jax.solver.alternating import run as dense_run
from sccase_jax.solver.over_terms import run as terms_run
from sccase_jax.terms import Batch, Objective, Term, TermData, register_term, sccase_terms


def _problem(seed=0, m=15, n=10, d=4, k=3, off=1.0, alpha=0.0, lam=20.0):
    rng = np.random.default_rng(seed)
    X = jnp.asarray(rng.random((m, n)) * (rng.random((m, n)) < 0.5))
    R = jnp.asarray(rng.random((n, n)) < 0.9)
    idx = np.stack([np.concatenate([[j], rng.permutation(np.delete(np.arange(n), j))[: d - 1]])
                    for j in range(n)]).astype(np.int32)
    layout = SupportLayout.create(X, idx, np.ones(idx.shape, bool), off)
    layout = layout._replace(mask=layout.gather(R))
    P, M = np.zeros((m, k)), np.zeros(k)
    if alpha:
        P[:, 0], M[0] = rng.random(m), 1.0
    data = TermData(X, P=jnp.asarray(P), M=jnp.asarray(M),
                    batch=jnp.asarray(np.eye(2)[np.arange(n) % 2]), depth=jnp.asarray(rng.random(n) + 0.5))
    f = Factors(jnp.asarray(rng.random((m, k))), jnp.asarray(rng.random((k, n))),
                jnp.asarray(rng.random((n, n)) / n))
    hp = Hyperparams.create(lam, 1.0, 1.0, alpha, dtype=jnp.float64)
    return data, R, layout, f, hp


@pytest.mark.parametrize(("z_step", "w_step", "h_step"), [
    ("gradient", "exact", "backtrack"), ("gradient", "printed", "exact"),
    ("free", "exact", "exact"), ("auto", "exact", "backtrack")])
def test_over_terms_equals_the_dense_solver(z_step, w_step, h_step):
    # Every step rule has one meaning on both solvers: the same iterates from the same start.
    data, R, _, f, hp = _problem(seed=1)
    layout = DenseLayout.create(data.X, R)
    config = SolverConfig(max_iter=6, tol=0.0, z_step=z_step, w_step=w_step, h_step=h_step)
    res = terms_run(Objective(sccase_terms(hp)), data, layout, f, config)
    dense = Data(X=data.X, G=layout.G, R=R, P=data.P, M=data.M)
    want = dense_run(dense, f, hp, config)
    np.testing.assert_allclose(res.loss, want.loss, rtol=1e-9)
    for a, b in ((res.W, want.W), (res.H, want.H), (res.Z, want.Z)):
        np.testing.assert_allclose(a, b, rtol=1e-7, atol=1e-10)


@pytest.mark.slow
@pytest.mark.parametrize("h_step", ["backtrack", "exact"])
def test_batch_and_depth_on_a_support_decrease_F(h_step):
    # scCASER's pull, the batch term and the depth term together on the support layout:
    # no hand-written solver fits this combination.
    data, _, layout, f, hp = _problem(seed=2, off=0.0, alpha=2.0)
    objective = Objective((*sccase_terms(hp, depth=True), Batch(jnp.asarray(10.0))))
    res = terms_run(objective, data, layout, f._replace(Z=layout.gather(f.Z)),
                    SolverConfig(max_iter=10, tol=0.0, h_step=h_step))
    hist = np.concatenate([[float(res.initial_loss)], np.asarray(res.loss)])
    assert np.all(np.diff(hist) <= 1e-12 * np.abs(hist[:-1])) and hist[-1] < hist[0]
    assert all(np.all(np.asarray(a) >= 0) for a in (res.W, res.H, res.Z))
    end = objective.value(Factors(res.W, res.H, res.Z), data, layout)
    np.testing.assert_allclose(res.loss[-1], end, rtol=1e-10)


def test_taylor_change_is_the_exact_change_of_F():
    # Every built-in term is polynomial: the Taylor coefficients along a move sum to
    # F(x + delta) - F(x) (degree 2 in Z and W, 4 in H).
    from sccase_jax.solver.over_terms import DEGREE, polynomial, taylor_coefficients

    data, _, layout, f, hp = _problem(seed=4, off=0.0, alpha=2.0)
    f = f._replace(Z=layout.gather(f.Z))
    objective = Objective((*sccase_terms(hp, depth=True), Batch(jnp.asarray(3.0))))
    assert polynomial(objective)
    rng = np.random.default_rng(0)
    change = jax.jit(lambda f, delta, block: sum(taylor_coefficients(
        objective, f, data, layout, block, delta, DEGREE[block])), static_argnums=2)
    for block in ("W", "H", "Z"):
        x = getattr(f, block)
        delta = jnp.asarray(rng.standard_normal(x.shape)) * 0.1
        got = change(f, delta, block)
        want = (objective.value(f._replace(**{block: x + delta}), data, layout)
                - objective.value(f, data, layout))
        np.testing.assert_allclose(got, want, rtol=1e-9)


@pytest.mark.parametrize("off", [0.0, 1.0, None])
def test_closed_form_higher_orders_equal_the_taylor_default(off):
    # Every built-in term writes its higher-order change in closed form: it agrees with the
    # default (half the jvp curvature in Z and W, nested jvp in H) on both layouts.
    from sccase_jax.terms import Depth, Term

    data, R, layout, f, hp = _problem(seed=5, off=0.0 if off is None else off, alpha=2.0)
    if off is None:
        layout, f = DenseLayout.create(data.X, R), f
    else:
        f = f._replace(Z=layout.gather(f.Z))
    rng = np.random.default_rng(1)
    for term in (*sccase_terms(hp), Depth(jnp.asarray(3.0)), Batch(jnp.asarray(2.0))):
        for block in ("W", "H", "Z"):
            delta = jnp.asarray(rng.standard_normal(getattr(f, block).shape))
            got = term.higher(f, data, layout, block, delta)
            want = Term.higher(term, f, data, layout, block, delta)
            full = term.value(f._replace(**{block: getattr(f, block) + delta}), data, layout) \
                - term.value(f, data, layout) - jnp.vdot(getattr(term.grad(f, data, layout), block), delta)
            np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9 * (1 + abs(float(want))))
            np.testing.assert_allclose(got, full, rtol=1e-8, atol=1e-8 * (1 + abs(float(want))))


@register_term("pull_h_test")
class _PullH(Term):
    """``weight ||H - 1||^2``: its gradient moves a zero row of H."""

    polynomial = True

    weight: float = 1.0

    def value(self, factors, data, layout):
        return self.weight * jnp.sum((factors.H - 1.0) ** 2)


def test_components_that_do_not_move_give_the_smaller_fit():
    # A sweep pads each K's start to the largest K; the padded components must not move.
    data, R, _, f, hp = _problem(seed=3)
    layout = DenseLayout.create(data.X, R)
    data = data._replace(P=None, M=None)
    objective = Objective(sccase_terms(hp, reference=False))
    config = SolverConfig(max_iter=4, tol=0.0)
    small = terms_run(objective, data, layout, f, config)
    padded = f._replace(W=jnp.pad(f.W, ((0, 0), (0, 2))), H=jnp.pad(f.H, ((0, 2), (0, 0))))
    components = jnp.asarray([1.0, 1.0, 1.0, 0.0, 0.0])
    big = terms_run(objective, data, layout, padded, config, components)
    np.testing.assert_allclose(big.loss, small.loss, rtol=1e-10)
    for a, b in ((big.W[:, :3], small.W), (big.H[:3], small.H), (big.Z, small.Z)):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
    assert np.all(np.asarray(big.W[:, 3:]) == 0) and np.all(np.asarray(big.H[3:]) == 0)
    pulled = Objective((*objective.terms, _PullH(jnp.asarray(2.0))))
    held = terms_run(pulled, data, layout, padded, config, components)
    assert np.all(np.asarray(held.H[3:]) == 0) and np.all(np.asarray(held.W[:, 3:]) == 0)
    free = terms_run(pulled, data, layout, padded, config)
    assert np.any(np.asarray(free.H[3:]) > 0)  # without the mask the pull moves them


def test_auto_z_rule_takes_one_curvature_product_under_vmap(monkeypatch):
    # Members of a vmapped fit are rough or not each: the rule selects each member's
    # direction (the gradient step while rough, else the free one) and then forms one
    # curvature product, where a cond would run both branches.
    from sccase_jax.solver import over_terms as ot

    data, R, _, f, hp = _problem(seed=3, lam=0.01)
    layout = DenseLayout.create(data.X, R)
    objective = Objective(sccase_terms(hp))
    # entries at the bound, some with g > 0 (X S above W H: the data term pushes Z up)
    f = f._replace(W=f.W * 1e-3, Z=f.Z.at[0].set(0.0))
    mv = ot.Move(objective, f, data, layout, SolverConfig())
    g = objective.grad(f, data, layout).Z
    assert bool(jnp.any((f.Z <= 0) & (g > 0)))
    calls = []
    real = ot.Move.curvature
    monkeypatch.setattr(ot.Move, "curvature", lambda self, *a, **k: calls.append(1) or real(self, *a, **k))
    P, t = jax.vmap(lambda r: ot.z_auto(mv, g, r))(jnp.asarray([True, False]))
    assert len(calls) == 1
    for i, rule in enumerate((ot.z_gradient, ot.z_free)):
        P_i, t_i = rule(mv, g, None)
        np.testing.assert_array_equal(np.asarray(P[i]), np.asarray(P_i))
        np.testing.assert_allclose(float(t[i]), float(t_i), rtol=1e-12)
