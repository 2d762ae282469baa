"""The batch term mu ||A Z||^2 (A = C - J, the between-batch variance of each column of Z):
gradients, the exact Z steps, the fit, enhance(batch_key=...), the simulator, the scores."""

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
from sccase_jax.cli import main
from sccase_jax.layout import DenseLayout
from sccase_jax.objectives.batch import batch_penalty, one_hot
from sccase_jax.objectives.sccase import sccase_batch_loss, sccase_grads
from sccase_jax.params import Factors, SolverConfig
from sccase_jax.solver import over_terms as OT
from sccase_jax.solver.alternating import run
from sccase_jax.solver.over_terms import run as terms_run
from sccase_jax.terms import Objective, TermData, sccase_terms
from sccase_jax.validate import InputError


def with_batch(data, n, mu, seed=0, n_batches=2):
    codes = np.arange(n) % n_batches
    codes = np.random.default_rng(seed).permutation(codes)
    return data._replace(batch=jnp.asarray(one_hot(codes)), batch_mu=jnp.asarray(mu, data.X.dtype))


def over_terms(data, hp, mu, seed=5):
    """``(objective, data, layout)`` of scCASE with the batch term (weight ``mu``) over terms
    on the dense layout, the batches of :func:`with_batch`."""
    db = with_batch(data, data.R.shape[0], mu, seed)
    tdata = TermData(db.X, P=db.P, M=db.M, batch=db.batch)
    return Objective(sccase_terms(hp, batch_mu=db.batch_mu)), tdata, DenseLayout(db.R, db.G)


def projection(Ob):
    """A = C - J as a dense matrix: batch means minus the overall mean."""
    Ob = np.asarray(Ob)
    n = Ob.shape[0]
    C = Ob @ np.diag(1.0 / Ob.sum(0)) @ Ob.T
    return C - np.full((n, n), 1.0 / n)


def between(Z, Ob):
    """Share of ||Z||^2 in the between-batch part ||A Z||^2."""
    Z = np.asarray(Z)
    return float(np.sum((projection(Ob) @ Z) ** 2) / np.sum(Z**2))


@given(st.integers(0, 10_000), st.sampled_from([0.0, 0.5, 30.0]), st.sampled_from([0.0, 2.0, 1e3]))
def test_batch_gradient_matches_autodiff(seed, mu, lam):
    data, (W, H, Z), hp = tiny_problem(seed, lam=lam)
    data = with_batch(data, Z.shape[0], mu, seed)
    kw = dict(lam=hp.lam, gamma1=hp.gamma1, gamma2=hp.gamma2)
    f = lambda W, H, Z: sccase_batch_loss(data.X, Z, data.R, W, H, data.batch, mu=mu, **kw)  # noqa: E731
    auto = jax.grad(f, argnums=(0, 1, 2))(W, H, Z)
    dW, dH, dZ = sccase_grads(data.X, Z, data.R, W, H, **kw)
    A = projection(data.batch)
    np.testing.assert_allclose(A @ A, A, atol=1e-12)  # an orthogonal projection
    ana = (dW, dH, dZ + 2 * mu * A @ Z)
    for a, b in zip(ana, auto):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-9, atol=1e-9 * (1 + float(jnp.abs(b).max())))
    # the terms the solver over terms evaluates (dense layout) equal the direct form
    objective, tdata, layout = over_terms(data, hp, mu, seed)
    F = objective.value(Factors(W, H, Z), tdata, layout)
    assert float(F) == pytest.approx(float(f(W, H, Z)), rel=1e-10)


def test_batch_penalty_is_the_between_batch_variance():
    Ob = jnp.asarray(one_hot([0, 0, 1]))
    Z = jnp.asarray([[1.0, 0.0], [3.0, 2.0], [5.0, 4.0]])
    # column 0: batch means 2, 5, overall 3 -> 2 (2 - 3)^2 + 1 (5 - 3)^2 = 6; column 1: 1, 4,
    # overall 2 -> 2 + 4 = 6
    assert float(batch_penalty(Z, Ob, 2.0)) == pytest.approx(2.0 * 12.0)
    assert float(batch_penalty(jnp.ones((3, 2)) * 7.0, Ob, 2.0)) == pytest.approx(0.0)


@pytest.mark.parametrize("z_step", ["auto", "free", "gradient"])
@pytest.mark.parametrize("sparse", [False, True])
def test_an_iteration_with_the_batch_term_reports_the_exact_change(z_step, sparse):
    # The batch term is fitted by the solver over terms (sccase_jax.fit routes it there): an
    # iteration's reported change of F is the change of F recomputed at the new point.
    from jax.experimental import sparse as jsparse

    data, f0, hp = tiny_problem(5, lam=3.0)
    objective, tdata, layout = over_terms(data, hp, 7.0)
    if sparse:
        tdata = tdata._replace(X=jsparse.BCOO.fromdense(tdata.X))
    cfg = SolverConfig(z_step=z_step, max_iter=3, tol=0.0)
    state = OT.init_state(objective, tdata, layout, f0, cfg)
    for _ in range(2):
        state = checked_update(objective, tdata, layout, state, cfg)


def test_fit_with_batch_term_is_monotone_and_shrinks_within_batch_mass():
    data, f0, hp = tiny_problem(1, m=30, n=20, k=3, lam=2.0)
    cfg = SolverConfig(max_iter=25, tol=0.0)
    base = run(data, f0, hp, cfg)
    zero = terms_run(*over_terms(data, hp, 0.0, 1), f0, cfg)
    np.testing.assert_allclose(np.asarray(zero.Z), np.asarray(base.Z), rtol=1e-9, atol=1e-11)
    objective, tdata, layout = over_terms(data, hp, 4.0, 1)
    res = terms_run(objective, tdata, layout, f0, cfg)
    hist = np.concatenate([[float(res.initial_loss)], np.asarray(res.loss)[: int(res.n_iter)]])
    assert np.all(np.diff(hist) <= 1e-9 * np.abs(hist[:-1]))
    assert between(res.Z, tdata.batch) < 0.5 * between(base.Z, tdata.batch)
    assert float(np.sum(np.asarray(res.Z))) > 0.2 * float(np.sum(np.asarray(base.Z)))  # no collapse
    with pytest.raises(ValueError, match="over_terms"):  # the Gram-form solver fits no batch term
        run(with_batch(data, 20, 4.0, 1), f0, hp, cfg)


def _batched(n_per=40, seed=0):
    C, lab = typed_counts(n_per=n_per, seed=seed)
    batch = np.where(np.arange(C.shape[0]) % 2 == 0, "b1", "b2")
    obs = pd.DataFrame({"cell_type": lab.astype(str), "batch": batch}, index=[f"c{i}" for i in range(C.shape[0])])
    return ad.AnnData(sp.csr_matrix(C.astype(np.float32)), obs=obs)


def test_enhance_with_batch_key_records_it_and_moves_mass_across_batches():
    a = _batched()
    kw = dict(max_iter=5, seed=0, store_z="full", output="xz", neighbors="all")
    plain = sccase_jax.enhance(a, 4, **kw)
    corr = sccase_jax.enhance(a, 4, batch_key="batch", batch_method="term", batch_weight=3.0, **kw)
    assert corr.uns["sccase"]["params"]["batch_key"] == "batch"
    assert corr.uns["sccase"]["params"]["batch_method"] == "term"
    assert corr.uns["sccase"]["params"]["batch_weight"] == 3.0
    Ob = one_hot(np.unique(a.obs["batch"], return_inverse=True)[1])
    assert between(corr.obsp["sccase_Z"], Ob) < 0.5 * between(plain.obsp["sccase_Z"], Ob)


def test_enhance_batch_composes_with_a_reference():
    a = _batched()
    sums = [np.asarray(a.X[(a.obs.cell_type == t).to_numpy()].sum(0)) for t in "012"]
    ref = ad.AnnData(np.vstack(sums).astype(np.float32), var=a.var.copy())
    out = sccase_jax.enhance(a, 4, reference=ref, batch_key="batch", max_iter=3)
    assert out.uns["sccase"]["params"]["batch_key"] == "batch" and "reference" in out.uns["sccase"]


@pytest.mark.parametrize("batch, msg", [
    (None, "not a column"),
    (["b1"] * 120, "single batch"),
    (["b1"] * 119 + ["b2"], "has one cell"),
    (["b1", None] * 60, "without a batch"),
])
def test_bad_batches(batch, msg, tmp_path):
    a = _batched()
    if batch is not None:
        a.obs["batch"] = batch
    else:
        del a.obs["batch"]
    out = tmp_path / "o.h5ad"
    with pytest.raises(InputError, match=msg):
        sccase_jax.enhance(a, 3, batch_key="batch", out_file=str(out))
    assert not out.exists()
    path = tmp_path / "in.h5ad"
    a.write_h5ad(path)
    assert main(["enhance", str(path), str(out), "--k", "3", "--batch-key", "batch", "--quiet"]) == 2
    assert not out.exists()


def test_batch_weight_is_checked():
    with pytest.raises(InputError, match="batch_weight"):
        sccase_jax.enhance(_batched(), 3, batch_key="batch", batch_weight=-1.0)
    with pytest.raises(InputError, match="batch_weight needs batch_key"):
        sccase_jax.enhance(_batched(), 3, batch_weight=2.0)
    with pytest.raises(InputError, match="batch_method='term'"):
        sccase_jax.enhance(_batched(), 3, batch_key="batch", batch_weight=2.0)
    with pytest.raises(InputError, match="batch_method"):
        sccase_jax.enhance(_batched(), 3, batch_key="batch", batch_method="combat")


def _shifted(seed=0):
    """Two types x two batches in 3 dimensions; batch 1 shifted along the first axis."""
    rng = np.random.default_rng(seed)
    lab = np.repeat([0, 1], 60)
    batch = np.tile([0, 1], 60)
    emb = np.where(lab[:, None] == 0, [3.0, 0.0, 1.0], [0.0, 3.0, 1.0]) + 0.2 * rng.normal(size=(120, 3))
    emb[batch == 1, 0] += 2.0
    return emb, lab, batch


def test_harmony_mixes_the_batches_and_keeps_the_types():
    from sccase_jax.evaluation.batch import batch_scores
    from sccase_jax.integration import harmony

    emb, lab, batch = _shifted()
    corr = harmony(emb, batch, seed=0)
    assert corr.shape == emb.shape
    before, after = batch_scores(emb, batch, lab), batch_scores(corr, batch, lab)
    assert after["other_batch_fraction"] > before["other_batch_fraction"] + 0.2
    assert after["celltype_asw"] > 0.7
    with pytest.raises(InputError, match="two batches"):
        harmony(emb, np.zeros(120))
    with pytest.raises(InputError, match="one batch per cell"):
        harmony(emb, batch[:5])


def test_harmony_needs_harmonypy(monkeypatch):
    import sys

    from sccase_jax.integration import harmony

    monkeypatch.setitem(sys.modules, "harmonypy", None)
    emb, _, batch = _shifted()
    with pytest.raises(InputError, match="pip install"):
        harmony(emb, batch)


def test_enhance_harmony_builds_the_output_from_the_corrected_embedding():
    from sccase_jax import output

    a = _batched()
    out = sccase_jax.enhance(a, 4, batch_key="batch", max_iter=3, seed=0, neighbors=20, store_z=20)
    p = out.uns["sccase"]["params"]
    assert p["batch_method"] == "harmony" and p["batch_weight"] == "none"
    Hc = out.obsm["X_sccase_harmony"]
    assert Hc.shape == out.obsm["X_sccase"].shape
    np.testing.assert_allclose(out.obsp["sccase_Z"].toarray(),
                               output.embedding_similarity(Hc, 20).toarray(), rtol=1e-5)


def test_batch_and_depth_terms_compose():
    a = _batched()
    out = sccase_jax.enhance(a, 4, batch_key="batch", correct_depth=True, max_iter=4)
    p = out.uns["sccase"]["params"]
    assert p["batch_key"] == "batch" and p["correct_depth"] is True
    hist = np.concatenate([[out.uns["sccase"]["initial_loss"]], np.asarray(out.uns["sccase"]["loss"])])
    assert np.all(np.isfinite(hist)) and np.all(np.diff(hist) <= 1e-6 * np.abs(hist[:-1]))


def test_simulate_batches_is_seeded_thins_counts_and_checks_input():
    from sccase_jax.datasets import simulate_batches

    a = _batched(n_per=60)
    a.X = sp.csr_matrix(np.asarray(a.X.todense()) * 3)
    before = a.obs["batch"].copy()
    s1 = simulate_batches(a, 2, depth=(1.0, 0.3), efficiency_sd=0.5, seed=4)
    s2 = simulate_batches(a, 2, depth=(1.0, 0.3), efficiency_sd=0.5, seed=4)
    assert (s1.X != s2.X).nnz == 0 and list(s1.obs.batch) == list(s2.obs.batch)
    assert np.all(s1.X.toarray() <= a.X.toarray())
    b = s1.obs.batch.to_numpy()
    assert (b == "batch0").sum() == (b == "batch1").sum() == 90
    tot = np.asarray(s1.X.sum(1)).ravel()
    assert tot[b == "batch1"].mean() < 0.5 * tot[b == "batch0"].mean()
    assert a.obs["batch"].equals(before)  # the input is not modified
    with pytest.raises(InputError, match="one fraction per batch"):
        simulate_batches(a, 3, depth=(1.0, 0.5))


def test_batch_scores_tell_mixed_from_separated():
    pytest.importorskip("sklearn")
    from sccase_jax.evaluation.batch import batch_scores

    rng = np.random.default_rng(0)
    labels = np.repeat(["a", "b"], 100)
    centre = np.where(labels == "a", 0.0, 10.0)[:, None]
    batch = np.tile(["x", "y"], 100)
    mixed = centre + rng.normal(size=(200, 5))
    split = mixed + np.where(batch == "x", 0.0, 5.0)[:, None]
    good, bad = batch_scores(mixed, batch, labels), batch_scores(split, batch, labels)
    assert good["ilisi"] > 0.8 and bad["ilisi"] < 0.1
    assert good["batch_asw"] > 0.9 and bad["batch_asw"] < 0.6
    assert good["graph_connectivity"] == 1.0 and good["celltype_asw"] > 0.7


@pytest.mark.parametrize("seed", [0, pytest.param(1, marks=pytest.mark.slow)])
def test_correction_recovers_the_unbatched_clustering_on_real_counts(seed):
    """Batches simulated on the bundled Granja counts (batch 1 keeps 40 % of the reads, a
    log-normal efficiency per peak and batch): with the batch term the clustering is closer
    to the unbatched data's and no longer follows the batches (k-means on PCA(20))."""
    decomposition = pytest.importorskip("sklearn.decomposition")
    cluster = pytest.importorskip("sklearn.cluster")
    from sklearn.metrics import adjusted_rand_score as ari

    from sccase_jax.datasets import granja_bm600, simulate_batches

    def clusters(out):
        emb = decomposition.PCA(20, random_state=0).fit_transform(np.asarray(out.layers["sccase"]))
        return cluster.KMeans(6, n_init=10, random_state=0).fit_predict(emb)

    a = granja_bm600()
    sim = simulate_batches(a, 2, depth=(1.0, 0.4), efficiency_sd=0.6, seed=seed)
    keep = np.asarray(sim.X.sum(axis=1)).ravel() > 0
    sim, a = sim[keep].copy(), a[keep].copy()
    kw = dict(seed=0, max_iter=10)
    ref = clusters(sccase_jax.enhance(a, 7, **kw))
    plain = clusters(sccase_jax.enhance(sim, 7, **kw))
    corr = clusters(sccase_jax.enhance(sim, 7, batch_key="batch", **kw))
    batch = sim.obs["batch"].to_numpy()
    assert ari(ref, corr) > ari(ref, plain) + 0.05
    assert ari(batch, corr) < 0.5 * ari(batch, plain) and ari(batch, plain) > 0.02


def test_cli_batch_key(tmp_path):
    path, out = tmp_path / "in.h5ad", tmp_path / "out.h5ad"
    _batched().write_h5ad(path)
    assert main(["enhance", str(path), str(out), "--k", "3", "--max-iter", "2", "--batch-key", "batch",
                 "--batch-method", "term", "--batch-weight", "2", "--quiet"]) == 0
    params = ad.read_h5ad(out).uns["sccase"]["params"]
    assert params["batch_key"] == "batch" and params["batch_weight"] == 2.0
    out2 = tmp_path / "harmony.h5ad"
    assert main(["enhance", str(path), str(out2), "--k", "3", "--max-iter", "2", "--batch-key",
                 "batch", "--quiet"]) == 0
    res = ad.read_h5ad(out2)
    assert res.uns["sccase"]["params"]["batch_method"] == "harmony" and "X_sccase_harmony" in res.obsm
