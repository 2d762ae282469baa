"""The depth term lam ||Z - P H^T H||^2 (P = diag(depth / median)): gradients, exact steps,
the fit, enhance(correct_depth=True)."""

import anndata as ad
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from helpers import tiny_problem, typed_counts
from hypothesis import given
from hypothesis import strategies as st

import sccase_jax
from sccase_jax import ops
from sccase_jax.objectives.depth import relative_depth, sccase_depth_grads, sccase_depth_loss
from sccase_jax.objectives.sccase import gram_loss, similarity_term
from sccase_jax.ops import masked
from sccase_jax.params import SolverConfig
from sccase_jax.solver import get_rule
from sccase_jax.solver import wh_steps as WH
from sccase_jax.solver.alternating import init_state, run
from sccase_jax.validate import InputError


def depths(n, seed):
    return jnp.asarray(relative_depth(np.random.default_rng(seed).lognormal(0.0, 0.7, n)))


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
    Sm = masked(Z, data.R)
    F = gram_loss(Sm, data.G @ Sm, ops.wt_x(data.X, W), W, H, Z, data.P, data.M, hp, depth=p)
    assert float(F) == pytest.approx(float(f(W, H, Z)), rel=1e-10)
    # p = 1 is plain scCASE
    assert float(similarity_term(Z, H, jnp.ones(Z.shape[0]))) == pytest.approx(float(similarity_term(Z, H)))


@pytest.mark.parametrize("z_step", ["auto", "free", "gradient"])
def test_each_step_reports_the_exact_change_with_depth(z_step):
    data, f0, hp = tiny_problem(3, lam=2.0)
    p = depths(f0.Z.shape[0], 3)
    data = data._replace(depth=p)
    cfg = SolverConfig(z_step=z_step)
    state = init_state(data, f0, hp, cfg)

    def full(Sm, B, W, H, Z):
        return float(gram_loss(Sm, data.G @ Sm, B, W, H, Z, data.P, data.M, hp, depth=p))

    assert float(state.loss) == pytest.approx(full(masked(f0.Z, data.R), state.B, f0.W, f0.H, f0.Z), rel=1e-12)
    Z, F1, GS, _, _, _ = get_rule("z_step", z_step)(state, data, hp, cfg, state.loss)
    Sm = masked(Z, data.R)
    assert float(F1) == pytest.approx(full(Sm, state.B, state.W, state.H, Z), rel=1e-12)
    W, F2 = WH.w_move(state.W, state.H, Sm, data, hp, cfg, F1)
    B = ops.wt_x(data.X, W)
    H, F3, sim = WH.h_move(W, state.H, Z, Sm, B, hp, cfg, F2, depth=p)
    assert float(F3) == pytest.approx(full(Sm, B, W, H, Z), rel=1e-12)
    assert float(sim) == pytest.approx(float(similarity_term(Z, H, p)), rel=1e-10)
    assert float(F3) <= float(F2) <= float(F1) <= float(state.loss) and float(F3) < float(state.loss)
    assert not np.allclose(np.asarray(H), np.asarray(state.H))  # the H step moved


def test_fit_with_depth_is_monotone_and_follows_the_depth_target():
    data, f0, hp = tiny_problem(1, m=30, n=20, k=3, lam=50.0)
    p = depths(20, 1)
    cfg = SolverConfig(max_iter=25, tol=0.0)
    ones = run(data._replace(depth=jnp.ones(20)), f0, hp, cfg)
    base = run(data, f0, hp, cfg)
    np.testing.assert_allclose(np.asarray(ones.Z), np.asarray(base.Z), rtol=1e-9, atol=1e-12)
    res = run(data._replace(depth=p), f0, hp, cfg)
    hist = np.concatenate([[float(res.initial_loss)], np.asarray(res.loss)[: int(res.n_iter)]])
    assert np.all(np.diff(hist) <= 1e-9 * np.abs(hist[:-1]))
    # the fit follows the depth target P H^T H, not H^T H
    assert float(similarity_term(res.Z, res.H, p)) < 0.5 * float(similarity_term(res.Z, res.H))
    assert float(jnp.sum(res.Z)) > 0 and not np.allclose(np.asarray(res.Z), np.asarray(base.Z))


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

    with pytest.raises(InputError, match="backtracking H step"):
        sccase_jax.enhance(a, 4, correct_depth=True, config=SC(h_step="exact"))
    with pytest.raises(InputError, match="every cell"):
        relative_depth([3.0, 0.0, 2.0])


def test_cli_correct_depth_flag(tmp_path):
    from sccase_jax.cli import main

    path, out = tmp_path / "in.h5ad", tmp_path / "out.h5ad"
    _adata().write_h5ad(path)
    assert main(["enhance", str(path), str(out), "--k", "4", "--max-iter", "2", "--correct-depth", "--quiet"]) == 0
    assert ad.read_h5ad(out).uns["sccase"]["params"]["correct_depth"]
