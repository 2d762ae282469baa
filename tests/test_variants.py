"""Loss variants: every registered objective gets the gradient, jit, vmap and dtype checks;
the projected optax solver reaches the analytic solver's objective on scCASE."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import tiny_problem
from jax.test_util import check_grads

from sccase_jax.fitting import fit_variant
from sccase_jax.objectives import OBJECTIVES, get_objective, register_objective
from sccase_jax.objectives.sccase import sccase_grads
from sccase_jax.params import SolverConfig
from sccase_jax.result import MAX_ITER
from sccase_jax.solver import run, run_variant

NAMES = sorted(OBJECTIVES)
# One optimiser object for every test: it is a static argument, so sharing it lets the
# compiled solver be reused across tests.
ADAM = optax.adam(1e-2)
CFG = SolverConfig(max_iter=25, tol=1e-3)
LONG = SolverConfig(max_iter=3000, tol=0.0)


def _hp(obj, lam=2.0, dtype=jnp.float64):
    return obj.hyper(dtype, lam=lam, gamma1=0.5, gamma2=0.3)


def test_registry_has_the_documented_variants():
    assert {"sccase", "sccase_l1z", "sccase_laplacian"} <= set(NAMES)
    with pytest.raises(ValueError, match="unknown objective"):
        get_objective("nope")
    with pytest.raises(ValueError, match="no weight"):
        OBJECTIVES["sccase"].hyper(jnp.float64, beta=1.0)


@pytest.mark.parametrize("name", NAMES)
def test_gradient_check(name):
    obj = OBJECTIVES[name]
    data, (W, H, Z), _ = tiny_problem(3)
    hp = _hp(obj)
    f = lambda W, H, Z: obj(data.X, Z, data.R, W, H, hp)  # noqa: E731
    check_grads(f, (W, H, Z), order=1, modes=["rev"], atol=1e-5, rtol=1e-5)


def test_sccase_autodiff_matches_analytic_gradients():
    obj = OBJECTIVES["sccase"]
    data, (W, H, Z), _ = tiny_problem(4)
    hp = _hp(obj, lam=7.0)
    auto = jax.grad(lambda W, H, Z: obj(data.X, Z, data.R, W, H, hp), argnums=(0, 1, 2))(W, H, Z)
    ref = sccase_grads(data.X, Z, data.R, W, H, lam=hp["lam"], gamma1=hp["gamma1"], gamma2=hp["gamma2"])
    for a, b in zip(auto, ref):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", NAMES)
def test_jit_equals_eager(name):
    obj = OBJECTIVES[name]
    data, f0, _ = tiny_problem(5)
    cfg = SolverConfig(max_iter=1, tol=0.0)
    jitted = run_variant(data, f0, _hp(obj), objective=obj, optimizer=ADAM, config=cfg)
    with jax.disable_jit():
        eager = run_variant(data, f0, _hp(obj), objective=obj, optimizer=ADAM, config=cfg)
    assert int(jitted.n_iter) == 1 and int(jitted.status) == MAX_ITER
    for a, b in zip(jax.tree.leaves(jitted), jax.tree.leaves(eager)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_vmap_over_weights_equals_separate_runs(name):
    obj = OBJECTIVES[name]
    data, f0, _ = tiny_problem(6)
    cfg = CFG
    lams = jnp.asarray([0.5, 3.0, 50.0])
    hps = {k: jnp.broadcast_to(v, (3,)) for k, v in _hp(obj).items()} | {"lam": lams}
    vm = jax.vmap(lambda h: run_variant(data, f0, h, objective=obj, optimizer=ADAM, config=cfg))(hps)
    for i, lam in enumerate(lams):
        one = run_variant(data, f0, _hp(obj, lam=lam), objective=obj, optimizer=ADAM, config=cfg)
        assert int(vm.n_iter[i]) == int(one.n_iter)
        for a, b in zip(jax.tree.leaves(vm), jax.tree.leaves(one)):
            np.testing.assert_allclose(np.asarray(a)[i], np.asarray(b), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_float32_stays_float32_and_nonnegative(name):
    obj = OBJECTIVES[name]
    data, f0, _ = tiny_problem(7, dtype=jnp.float32)
    res = run_variant(data, f0, _hp(obj, dtype=jnp.float32), objective=obj, optimizer=ADAM,
                      config=CFG)
    for leaf in jax.tree.leaves(res):
        if jnp.issubdtype(leaf.dtype, jnp.floating):
            assert leaf.dtype == jnp.float32
    for A in res.factors:
        assert float(jnp.min(A)) >= 0
    assert np.all(np.isfinite(np.asarray(res.loss)[: int(res.n_iter)]))


def test_optax_reaches_analytic_objective_large_lam(seed=1):
    # lam = 1e6: the analytic solver stops on its relative rule; projected Adam on the same
    # objective gets at least as low.
    data, f0, hp = tiny_problem(seed, lam=1e6)
    a = run(data, f0, hp, SolverConfig(max_iter=500, tol=1e-4))
    Fa = float(a.loss[int(a.n_iter) - 1])
    v = run_variant(data, f0, _hp(OBJECTIVES["sccase"], lam=1e6), objective=OBJECTIVES["sccase"],
                    optimizer=ADAM, config=LONG)
    Fv = float(v.loss[-1])
    assert Fv <= Fa * (1 + 1e-3)
    assert Fv < 1e-5 * float(a.initial_loss) + Fa


def test_optax_and_analytic_agree_small_lam():
    # lam = 5: both drive F to (nearly) its infimum 0; they agree to 1e-6 of F0.
    data, f0, hp = tiny_problem(1, lam=5.0)
    a = run(data, f0, hp, SolverConfig(max_iter=500, tol=0.0))
    v = run_variant(data, f0, _hp(OBJECTIVES["sccase"], lam=5.0), objective=OBJECTIVES["sccase"],
                    optimizer=ADAM, config=LONG)
    F0 = float(a.initial_loss)
    assert abs(float(v.loss[-1]) - float(a.loss[-1])) < 1e-6 * F0


def test_stopping_rule_is_shared():
    data, f0, hp = tiny_problem(1, lam=1e6)
    obj = OBJECTIVES["sccase"]
    res = run_variant(data, f0, _hp(obj, lam=1e6), objective=obj,
                      optimizer=ADAM, config=SolverConfig(max_iter=1000, tol=1e-3))
    n = int(res.n_iter)
    hist = np.asarray(res.loss)
    assert bool(res.converged) and 1 <= n < 1000
    assert np.all(np.isnan(hist[n:]))
    prev = hist[n - 2] if n > 1 else float(res.initial_loss)
    assert abs(hist[n - 1] - prev) / abs(prev) < 1e-3


def test_l1_variant_sparsifies_z():
    # The real variant at work: a strong L1 weight lowers sum(Z) against plain scCASE.
    data, f0, _ = tiny_problem(3)
    cfg = LONG
    plain = run_variant(data, f0, _hp(OBJECTIVES["sccase"], lam=10.0),
                        objective=OBJECTIVES["sccase"], optimizer=ADAM, config=cfg)
    obj = OBJECTIVES["sccase_l1z"]
    l1 = run_variant(data, f0, obj.hyper(jnp.float64, lam=10.0, gamma1=0.5, gamma2=0.3, beta=5.0),
                     objective=obj, optimizer=ADAM, config=cfg)
    assert float(l1.factors.Z.sum()) < 0.9 * float(plain.factors.Z.sum())


def test_fit_variant_builds_the_start_like_fit():
    rng = np.random.default_rng(0)
    X = rng.random((20, 14)) * (rng.random((20, 14)) < 0.5)
    res = fit_variant(X, 3, objective="sccase_l1z", hyper={"beta": 0.1}, lam=10.0,
                      max_iter=5, tol=0.0, nmf_iter=10, optimizer=ADAM)
    assert res.n_iter == 5 and res.W.shape == (20, 3) and res.Z.shape == (14, 14)
    assert res.params["objective"] == "sccase_l1z" and res.params["hyper"]["beta"] == 0.1
    assert res.loss[-1] < res.initial_loss


def test_registering_a_new_objective():
    @register_objective("_test_l2z", lam=1.0, gamma1=1.0, gamma2=1.0, eta=0.5)
    def l2z(X, Z, R, W, H, hp):
        return OBJECTIVES["sccase"](X, Z, R, W, H, hp) + hp["eta"] * jnp.vdot(Z, Z)

    try:
        obj = get_objective("_test_l2z")
        data, f0, _ = tiny_problem(2)
        res = run_variant(data, f0, obj.hyper(jnp.float64), objective=obj, optimizer=ADAM,
                          config=CFG)
        assert float(res.loss[int(res.n_iter) - 1]) < float(res.initial_loss)
    finally:
        del OBJECTIVES["_test_l2z"]
