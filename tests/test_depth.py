"""The depth term lam ||Z - P H^T H||^2 (P = diag(depth / median)): gradients, exact steps,
the fit, enhance(correct_depth=True)."""

import anndata as ad
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from helpers import checked_update, tiny_problem, typed_counts
from hypothesis import given
from hypothesis import strategies as st

import sccase_jax
from sccase_jax.layout import DenseLayout
from sccase_jax.objectives.depth import relative_depth, sccase_depth_grads, sccase_depth_loss
from sccase_jax.objectives.sccase import similarity_term
from sccase_jax.params import Factors, SolverConfig
from sccase_jax.solver import over_terms as OT
from sccase_jax.solver.alternating import run
from sccase_jax.solver.over_terms import run as terms_run
from sccase_jax.terms import Objective, TermData, sccase_terms
from sccase_jax.validate import InputError


def depths(n, seed):
    return jnp.asarray(relative_depth(np.random.default_rng(seed).lognormal(0.0, 0.7, n)))


def over_terms(data, hp, p):
    """``(objective, data, layout)`` of scCASE with the depth term over terms (dense layout)."""
    tdata = TermData(data.X, P=data.P, M=data.M, depth=jnp.asarray(p))
    return Objective(sccase_terms(hp, depth=True)), tdata, DenseLayout(data.R, data.G)


def close(a, b):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-9, atol=1e-9 * (1 + float(jnp.abs(b).max())))


@given(st.integers(0, 10_000), st.sampled_from([0.0, 2.0, 1e3]))
def test_depth_grads_match_autodiff_and_gram_form(seed, lam):
    data, (W, H, Z), hp = tiny_problem(seed, lam=lam)
    p = depths(Z.shape[0], seed)
    kw = dict(lam=hp.lam, gamma1=hp.gamma1, gamma2=hp.gamma2)
    f = lambda W, H, Z: sccase_depth_loss(data.X, Z, data.R, W, H, p, **kw)  # noqa: E731
    for a, b in zip(sccase_depth_grads(data.X, Z, data.R, W, H, p, **kw), jax.grad(f, argnums=(0, 1, 2))(W, H, Z)):
        close(a, b)
    objective, tdata, layout = over_terms(data, hp, p)
    F = objective.value(Factors(W, H, Z), tdata, layout)
    assert float(F) == pytest.approx(float(f(W, H, Z)), rel=1e-10)
    # p = 1 is plain scCASE
    assert float(similarity_term(Z, H, jnp.ones(Z.shape[0]))) == pytest.approx(float(similarity_term(Z, H)))


@pytest.mark.parametrize("z_step", ["auto", "free", "gradient"])
def test_each_iteration_reports_the_exact_change_with_depth(z_step):
    # The depth term is fitted by the solver over terms (sccase_jax.fit routes it there).
    data, f0, hp = tiny_problem(3, lam=2.0)
    p = depths(f0.Z.shape[0], 3)
    objective, tdata, layout = over_terms(data, hp, p)
    cfg = SolverConfig(z_step=z_step, max_iter=3, tol=0.0)
    state = OT.init_state(objective, tdata, layout, f0, cfg)
    new = checked_update(objective, tdata, layout, state, cfg)
    assert not np.allclose(np.asarray(new.H), np.asarray(state.H))  # the H step moved


def test_fit_with_depth_is_monotone_and_follows_the_depth_target():
    data, f0, hp = tiny_problem(1, m=30, n=20, k=3, lam=50.0)
    p = depths(20, 1)
    cfg = SolverConfig(max_iter=25, tol=0.0)
    ones = terms_run(*over_terms(data, hp, jnp.ones(20)), f0, cfg)
    base = run(data, f0, hp, cfg)
    np.testing.assert_allclose(np.asarray(ones.Z), np.asarray(base.Z), rtol=1e-8, atol=1e-11)
    res = terms_run(*over_terms(data, hp, p), f0, cfg)
    hist = np.concatenate([[float(res.initial_loss)], np.asarray(res.loss)[: int(res.n_iter)]])
    assert np.all(np.diff(hist) <= 1e-9 * np.abs(hist[:-1]))
    # the fit follows the depth target P H^T H, not H^T H
    assert float(similarity_term(res.Z, res.H, p)) < 0.5 * float(similarity_term(res.Z, res.H))
    assert float(jnp.sum(res.Z)) > 0 and not np.allclose(np.asarray(res.Z), np.asarray(base.Z))
    with pytest.raises(ValueError, match="over_terms"):  # the Gram-form solver fits no depth term
        run(data._replace(depth=p), f0, hp, cfg)


def _adata():
    C, lab = typed_counts(n_per=40, seed=0)
    C = C * np.random.default_rng(0).integers(1, 4, C.shape)
    return ad.AnnData(sp.csr_matrix(C.astype(np.float32)),
                      obs=pd.DataFrame({"cell_type": lab.astype(str)}, index=[f"c{i}" for i in range(C.shape[0])]))


def test_enhance_correct_depth_records_it_and_checks_input(tmp_path):
    a = _adata()
    out = sccase_jax.enhance(a, 4, correct_depth=True, max_iter=3)
    assert out.uns["sccase"]["params"]["correct_depth"] is True
    plain = sccase_jax.enhance(a, 4, max_iter=3)
    assert not np.allclose(out.obsm["X_sccase"], plain.obsm["X_sccase"])
    with pytest.raises(InputError, match="correct_depth"):
        sccase_jax.enhance(a, 4, correct_depth="yes")
    from sccase_jax.params import SolverConfig as SC

    # the exact quartic H step holds for the depth term (quartic in H along a line too)
    exact = sccase_jax.enhance(a, 4, correct_depth=True, config=SC(h_step="exact"), max_iter=3)
    hist = np.concatenate([[exact.uns["sccase"]["initial_loss"]], exact.uns["sccase"]["loss"]])
    assert np.all(np.diff(hist) <= 1e-6 * np.abs(hist[:-1]))
    with pytest.raises(InputError, match="every cell"):
        relative_depth([3.0, 0.0, 2.0])


def test_cli_correct_depth_flag(tmp_path):
    from sccase_jax.cli import main

    path, out = tmp_path / "in.h5ad", tmp_path / "out.h5ad"
    _adata().write_h5ad(path)
    assert main(["enhance", str(path), str(out), "--k", "4", "--max-iter", "2", "--correct-depth", "--quiet"]) == 0
    assert ad.read_h5ad(out).uns["sccase"]["params"]["correct_depth"]
