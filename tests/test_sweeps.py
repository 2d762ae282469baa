"""Sweeps: vmapped (lam, K) grid == separate fits; padded K == unpadded K; inactive
components stay exactly zero."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import tiny_problem

from sccase_jax.fitting import fit, fit_variant
from sccase_jax.objectives import OBJECTIVES
from sccase_jax.objectives.sccase import sccase_grads
from sccase_jax.params import SolverConfig
from sccase_jax.solver import member_solver, run
from sccase_jax.sweeps import masked_run, pad_factors, sweep
from sccase_jax.validate import InputError

OPTS = dict(max_iter=60, tol=1e-5, nmf_iter=20)
LAMS, KS = [1e5, 1e6], [2, 3]


def _data(seed=0, m=20, n=14):
    rng = np.random.default_rng(seed)
    return rng.random((m, n)) * (rng.random((m, n)) < 0.5)


@pytest.fixture(scope="module")
def swept():
    # batch_size 3 over 4 members: two batches, the last one padded.
    return sweep(_data(), lams=LAMS, ks=KS, batch_size=3, score=lambda r: {"neg_loss": -r.loss[-1]},
                 **OPTS)


def test_sweep_equals_separate_fits(swept):
    assert swept.final_loss.shape == swept.n_iter.shape == (2, 2)
    assert swept.Z.shape == (2, 2, 14, 14) and swept.W.shape == (2, 2, 20, 3)
    for i, lam in enumerate(LAMS):
        for j, k in enumerate(KS):
            one = fit(_data(), k, lam=lam, seed=0, **OPTS)
            mem = swept.member(i, j)
            assert swept.lam[i, j] == lam and swept.k[i, j] == k
            assert swept.n_iter[i, j] == one.n_iter == mem.n_iter
            assert mem.status == one.status
            np.testing.assert_allclose(swept.final_loss[i, j], one.loss[-1], rtol=1e-10)
            np.testing.assert_allclose(mem.loss, one.loss, rtol=1e-10)
            for name in ("W", "H", "Z"):
                np.testing.assert_allclose(getattr(mem, name), getattr(one, name), rtol=1e-8, atol=1e-12)


def test_sweep_inactive_components_are_zero(swept):
    for i in range(2):
        assert np.all(swept.W[i, 0][:, 2:] == 0) and np.all(swept.H[i, 0][2:] == 0)
        assert np.any(swept.W[i, 1][:, 2:] != 0)


def test_sweep_metrics_rank_members(swept):
    assert swept.metrics["neg_loss"].shape == (2, 2)
    np.testing.assert_allclose(swept.metrics["neg_loss"], -swept.final_loss)
    i, j = swept.best()
    assert swept.final_loss[i, j] == np.nanmin(swept.final_loss)
    assert swept.best("neg_loss", maximize=True) == (i, j)


def test_zero_component_is_a_fixed_point_of_every_gradient():
    data, f0, hp = tiny_problem(0, k=2)
    (W, H, Z), _ = pad_factors(f0, 4)
    dW, dH, dZ = sccase_grads(data.X, Z, data.R, W, H, lam=hp.lam, gamma1=hp.gamma1, gamma2=hp.gamma2)
    assert np.all(np.asarray(dW[:, 2:]) == 0) and np.all(np.asarray(dH[2:]) == 0)
    for name, obj in OBJECTIVES.items():
        h = obj.hyper(jnp.float64, lam=2.0)
        g = jax.grad(lambda W, H: obj(data.X, Z, data.R, W, H, h), argnums=(0, 1))(W, H)
        assert np.all(np.asarray(g[0][:, 2:]) == 0) and np.all(np.asarray(g[1][2:]) == 0), name


@pytest.mark.parametrize("h_step", ["backtrack", "exact"])
def test_padded_k_equals_unpadded_k(h_step):
    data, f0, hp = tiny_problem(1, k=2, lam=1e6)
    cfg = SolverConfig(max_iter=40, tol=1e-6, h_step=h_step)
    ref = run(data, f0, hp, cfg)
    padded, mask = pad_factors(f0, 4)
    data4 = data._replace(P=jnp.pad(data.P, ((0, 0), (0, 2))), M=jnp.pad(data.M, (0, 2)))
    for res in (run(data4, padded, hp, cfg), jax.jit(masked_run, static_argnames="config")(
            data4, padded, hp, mask, config=cfg)):
        assert int(res.n_iter) == int(ref.n_iter)
        np.testing.assert_allclose(res.loss, ref.loss, rtol=1e-12)
        np.testing.assert_allclose(res.factors.W[:, :2], ref.factors.W, rtol=1e-10, atol=1e-14)
        np.testing.assert_allclose(res.factors.H[:2], ref.factors.H, rtol=1e-10, atol=1e-14)
        np.testing.assert_allclose(res.factors.Z, ref.factors.Z, rtol=1e-10, atol=1e-14)
        # Inactive components stay exactly zero, with or without the mask.
        assert np.all(np.asarray(res.factors.W[:, 2:]) == 0)
        assert np.all(np.asarray(res.factors.H[2:]) == 0)


def test_rescale_h_keeps_padded_rows_zero():
    data, f0, hp = tiny_problem(2, k=2, lam=1e6)
    padded, mask = pad_factors(f0, 3)
    data3 = data._replace(P=jnp.pad(data.P, ((0, 0), (0, 1))), M=jnp.pad(data.M, (0, 1)))
    res = run(data3, padded, hp, SolverConfig(max_iter=5, tol=0.0, rescale_h=True))
    assert np.all(np.isfinite(np.asarray(res.factors.H)))
    assert np.all(np.asarray(res.factors.H[2:]) == 0)


def test_variant_sweep_equals_fit_variant():
    X = _data(1)
    adam = optax.adam(1e-2)
    opts = dict(max_iter=15, tol=0.0, nmf_iter=20)
    res = sweep(X, lams=[10.0], ks=[2, 3], solver=member_solver("sccase_l1z", adam),
                hyper={"beta": 0.1}, keep_factors=True, **opts)
    for j, k in enumerate([2, 3]):
        one = fit_variant(X, k, objective="sccase_l1z", optimizer=adam, hyper={"beta": 0.1},
                          lam=10.0, **opts)
        mem = res.member(0, j)
        assert mem.n_iter == one.n_iter == 15
        np.testing.assert_allclose(mem.loss, one.loss, rtol=1e-10)
        np.testing.assert_allclose(mem.Z, one.Z, rtol=1e-8, atol=1e-12)
    assert np.all(res.W[0, 0][:, 2:] == 0) and np.all(res.H[0, 0][2:] == 0)


def test_sweep_rejects_bad_input():
    X = _data()
    with pytest.raises(InputError, match="unknown"):
        sweep(X, lams=[1.0], ks=[2], init=None)
    with pytest.raises(InputError, match="integers"):
        sweep(X, lams=[1.0], ks=[2.5])
    with pytest.raises(InputError, match="batch_size"):
        sweep(X, lams=[1.0], ks=[2], batch_size=0)
    with pytest.raises(InputError, match="hyper"):
        sweep(X, lams=[1.0], ks=[2], hyper={"beta": 1.0})


@pytest.mark.parametrize(("kwargs", "match"), [
    (dict(lams=[1.0, -5.0], ks=[3]), r"lams\[1\].*-5"),
    (dict(lams=[1.0, float("nan")], ks=[3]), r"lams\[1\]"),
    (dict(lams=[1.0, 2.0, float("inf")], ks=[3]), r"lams\[2\]"),
    (dict(lams=[1.0, "a"], ks=[3]), r"lams\[1\].*'a'"),
    (dict(lams=[1.0], ks=[3, 0]), r"ks\[1\].*>= 1"),
    (dict(lams=[1.0], ks=[3, -2]), r"ks\[1\]"),
    (dict(lams=[1.0], ks=[2, True]), r"ks\[1\]"),
    (dict(lams=[1.0], ks=[2, 99]), r"ks\[1\] = 99 exceeds"),
    (dict(lams=[1.0], ks=[2], batch_size=2.5), "batch_size"),
])
def test_sweep_checks_every_member_before_any_work(kwargs, match, monkeypatch):
    # The bug: only lams[0] was checked (lams=[1, -5] ran and returned F = -7.3e27).
    import sccase_jax.sweeps as sweeps

    def no_work(*a, **k):
        raise AssertionError("the grid must be checked before any start is built")

    monkeypatch.setattr(sweeps, "prepare", no_work)
    with pytest.raises(InputError, match=match):
        sweep(_data(), **kwargs)


def test_sweep_checks_every_variant_weight_before_any_work(monkeypatch):
    import sccase_jax.sweeps as sweeps

    monkeypatch.setattr(sweeps, "prepare", lambda *a, **k: pytest.fail("work before the check"))
    solver = member_solver("sccase_l1z", optax.adam(1e-2))
    with pytest.raises(InputError, match=r"hyper\['beta'\].*-1"):
        sweep(_data(), lams=[1.0], ks=[2], solver=solver, hyper={"beta": -1.0})
    with pytest.raises(InputError, match="no weight 'eta'"):
        sweep(_data(), lams=[1.0], ks=[2], solver=solver, hyper={"eta": 1.0})
    with pytest.raises(InputError, match="lam"):
        sweep(_data(), lams=[1.0], ks=[2], solver=solver, hyper={"lam": 1.0})
