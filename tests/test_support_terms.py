"""The support-restricted fit with scCASER's reference, the batch term and the depth term
(z_support="knn" through the solver over the loss terms): with every cell a candidate it is
the dense fit, float64; "auto" picks it at scale; enhance, the stored weights and the
refusals."""

import importlib

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

import sccase_jax
from sccase_jax.fitting import _knn, fit_with
from sccase_jax.objectives.depth import relative_depth
from sccase_jax.options import KNN_AUTO_CELLS, Options
from sccase_jax.params import SolverConfig

N, M, K = 48, 90, 4


def counts(n=N, m=M, seed=0):
    rng = np.random.default_rng(seed)
    types = rng.integers(0, 3, n)
    prob = rng.random((3, m)) * 0.4
    return sp.csr_matrix((rng.random((n, m)) < prob[types]).astype(np.float64)), types


@pytest.fixture(scope="module")
def problem():
    C, types = counts()
    X, _, _ = sccase_jax.preprocess(C.T.tocsr())
    rng = np.random.default_rng(1)
    P = rng.random((X.shape[0], 2)) * 0.2
    batch = np.arange(N) % 3  # three batches, each type in each
    depth = relative_depth(np.asarray(C.sum(axis=1)).ravel())
    return X, P, batch, depth


# The same model on both layouts: every cell a candidate of every cell, the off-support
# part kept (nothing is off the support), the mask R all ones (the support draws its R on
# the support, n x d, a different draw from the dense n x n one), the paper's Z step (the
# dense fit's "auto" rule also takes the free step, which the support fit has no form of).
COMMON = dict(dtype="float64", keep_prob=1.0, lam=50.0, alpha=2.0, tol=0.0, x_tol=0.0,
              max_iter=4, seed=3, config=SolverConfig(z_step="gradient"))
FULL = dict(z_support="knn", n_neighbors=N, off_support="exact")

CASES = {
    "reference": dict(P=True),
    "batch": dict(batch=True),
    "depth": dict(depth=True),
    "all three": dict(P=True, batch=True, depth=True),
}
# ~10-40 s each on the shared 2-core CPU (two compilations); "all three" runs by default.
SLOW = pytest.mark.slow


def _fit(problem, case, **options):
    X, P, batch, depth = problem
    want = CASES[case]
    opts = Options(**COMMON, **options)
    if not want.get("P"):
        opts = opts.replace(alpha=0.0)
    return fit_with(X, K, opts, P=P if want.get("P") else None,
                    batch=batch if want.get("batch") else None,
                    depth=depth if want.get("depth") else None)


@pytest.mark.parametrize("case", [pytest.param(c, marks=() if c == "all three" else SLOW)
                                  for c in CASES])
def test_full_support_fit_equals_the_dense_fit(problem, case):
    dense = _fit(problem, case, z_support="dense")
    knn = _fit(problem, case, **FULL)
    assert knn.params["z_support"] == "knn" and knn.params["gram"] == "support"
    assert "z_support" not in dense.params or dense.params["z_support"] != "knn"
    assert knn.params["k_ref"] == dense.params["k_ref"] == (2 if CASES[case].get("P") else 0)
    assert sp.issparse(knn.Z) and not sp.issparse(dense.Z)
    assert int(knn.n_iter) == int(dense.n_iter) == COMMON["max_iter"]
    # Each move of W, H and Z is a visible fraction of the factor (not a fit at rest).
    assert float(dense.loss[-1]) < 0.99 * float(dense.initial_loss)
    # Float64: both paths take the same steps; what differs is the order of the sums (local
    # Gram blocks against G, jvp curvatures against the analytic ones), ~1e-14 relative per
    # operation, grown by four iterations of line searches to well under 1e-8.
    np.testing.assert_allclose(knn.initial_loss, dense.initial_loss, rtol=1e-12)
    np.testing.assert_allclose(knn.loss, dense.loss, rtol=1e-9)
    np.testing.assert_allclose(knn.W, dense.W, rtol=1e-8, atol=1e-12 * np.abs(dense.W).max())
    np.testing.assert_allclose(knn.H, dense.H, rtol=1e-8, atol=1e-12 * np.abs(dense.H).max())
    np.testing.assert_allclose(knn.Z.toarray(), dense.Z, rtol=1e-8,
                               atol=1e-12 * np.abs(dense.Z).max())
    # The recorded F with the off-support part is the fit's own F here (nothing off it).
    np.testing.assert_allclose(knn.params["eq2_loss"], knn.loss[-1], rtol=1e-10)


def test_terms_reach_the_support_fit(problem):
    # A reference, batch and depth term on a support of 12 candidates with the default
    # off_support ("drop"), against the plain support fit.
    X, P, batch, depth = problem
    opts = Options(**COMMON, z_support="knn", n_neighbors=12)
    plain = fit_with(X, K, opts.replace(alpha=0.0))
    assert plain.params["k_ref"] == 0
    res = fit_with(X, K, opts, P=P, batch=batch, depth=depth)
    assert res.params["k_ref"] == 2 and res.params["off_support"] == "drop"
    assert res.Z.shape == (N, N) and np.all(np.diff(res.Z.indptr) <= 12)
    assert not np.allclose(res.H, plain.H, rtol=1e-6)
    hist = np.concatenate([[float(res.initial_loss)], np.asarray(res.loss)])
    assert np.all(np.diff(hist) <= 1e-10 * np.abs(hist[:-1])) and hist[-1] < hist[0]
    # the reference block of W starts at P and is pulled towards it
    assert np.linalg.norm(res.W[:, :2] - P) < np.linalg.norm(plain.W[:, :2] - P)
    # with off-support parts dropped the recorded F with them differs from the fit's own
    assert res.params["eq2_loss"] != pytest.approx(float(res.loss[-1]), rel=1e-6)


def test_auto_picks_the_support_with_terms_but_not_with_init():
    from sccase_jax.fitting import dense_z

    opts = Options()
    n = KNN_AUTO_CELLS + 1
    assert _knn(opts, n) and not _knn(opts, KNN_AUTO_CELLS)
    assert not _knn(opts, n, dense_only=True)
    assert _knn(Options(z_support="knn"), 10, dense_only=True)  # asked for: fit_with refuses
    assert dense_z(opts, KNN_AUTO_CELLS) and not dense_z(opts, n)
    assert not dense_z(opts, n, terms=True)  # a reference, batch or depth term: the support
    assert dense_z(opts, n, init=True)  # a given start is n x n
    # the release's printed W step has a form over the terms: the support with or without them
    release = Options(preset="release")
    assert not dense_z(release, n, terms=True) and not dense_z(release, n)


def test_knn_refuses_init_and_fits_the_printed_w_step(problem):
    X, P, _, _ = problem
    f = sccase_jax.fit(X, K, max_iter=0, dtype="float64")
    with pytest.raises(sccase_jax.InputError, match="no init"):
        sccase_jax.fit(X, K, z_support="knn", init=(f.W, f.H, f.Z), dtype="float64")
    # The printed W step (no W ridge in its length) over the terms: a longer W step than
    # the exact one, so a different fit.
    kw = dict(z_support="knn", P=P, dtype="float64", max_iter=3, tol=0.0)
    printed = sccase_jax.fit(X, K, config=SolverConfig(w_step="printed"), **kw)
    exact = sccase_jax.fit(X, K, **kw)
    assert printed.params["config"]["w_step"] == "printed"
    assert not np.allclose(printed.W, exact.W, rtol=1e-6)


def _adata(seed=0):
    C, types = counts(n=60, m=120, seed=seed)
    a = ad.AnnData(C.astype(np.float32))
    a.obs["batch"] = np.array(["a", "b"])[np.arange(60) % 2]
    a.obs["cell_type"] = types.astype(str)
    a.var_names = [f"chr1:{100 * i}-{100 * i + 50}" for i in range(a.n_vars)]
    return a


def test_enhance_passes_reference_batch_and_depth_to_the_knn_fit():
    a = _adata()
    ref = sccase_jax.reference.pseudobulk_reference(a.X, a.obs["cell_type"], var=a.var)
    out = sccase_jax.enhance(a, 5, reference=ref, batch_key="batch", batch_method="term",
                             correct_depth=True, z_support="knn", n_neighbors=10, neighbors=8,
                             max_iter=3, dtype="float32")  # enhance's default
    p = out.uns["sccase"]["params"]
    assert p["z_support"] == "knn" and p["gram"] == "support"
    assert p["k_ref"] == out.uns["sccase"]["reference"]["k_ref"] > 0
    assert p["batch_method"] == "term" and p["correct_depth"]
    Z = out.obsp["sccase_Z"]
    assert sp.issparse(Z) and np.all(np.diff(sp.csc_matrix(Z).indptr) <= 10)
    B = out.obsp["sccase_weights"]
    assert sp.issparse(B) and B.shape == (60, 60)
    E = out.layers["sccase"]
    assert E.shape == (60, out.n_vars) and np.all(np.isfinite(E))
    # the stored weights reproduce the layer; without them, the stored sparse Z (8 output
    # neighbours of the 10 candidates; float32, the fit's dtype) gives the same weights
    np.testing.assert_array_equal(sccase_jax.tl.enhanced(out), E)
    gone = out.copy()
    del gone.obsp["sccase_weights"]
    weights = importlib.import_module("sccase_jax.tl.enhanced")._weights
    got = weights(gone, "sccase", p)
    assert sp.issparse(got) and (got != sp.csc_matrix(B)).nnz == 0
    np.testing.assert_array_equal(sccase_jax.tl.enhanced(gone), E)
    # and equal to the dense computation from the same Z up to float32 rounding (enhance
    # builds a support's weights in float64, the dense output's in the fit's dtype)
    Zd = sccase_jax.output.keep_largest(Z.toarray().astype(np.float32), 8)
    dense = sccase_jax.output.weights(Zd, "blend", p["blend"], inplace=True)
    np.testing.assert_allclose(got.toarray(), dense, rtol=1e-6, atol=1e-7)
    hist = np.concatenate([[out.uns["sccase"]["initial_loss"]], out.uns["sccase"]["loss"]])
    assert np.all(np.diff(hist) <= 1e-9 * np.abs(hist[:-1]))


def test_command_line_fits_reference_batch_and_depth_on_the_support(tmp_path):
    from sccase_jax.cli import main

    a = _adata(seed=1)
    ref = sccase_jax.reference.pseudobulk_reference(a.X, a.obs["cell_type"], var=a.var)
    a.write_h5ad(tmp_path / "in.h5ad")
    ref.write_h5ad(tmp_path / "ref.h5ad")
    out = tmp_path / "out.h5ad"
    assert main(["enhance", str(tmp_path / "in.h5ad"), str(out), "--k", "5", "--reference",
                 str(tmp_path / "ref.h5ad"), "--batch-key", "batch", "--batch-method", "term",
                 "--correct-depth", "--z-support", "knn", "--n-neighbors", "10",
                 "--neighbors", "8", "--max-iter", "2", "--layer-budget", "0", "--quiet"]) == 0
    res = ad.read_h5ad(out)
    p = res.uns["sccase"]["params"]
    assert p["z_support"] == "knn" and p["k_ref"] > 0 and p["batch_method"] == "term"
    assert p["correct_depth"] and "sccase" not in res.layers
    # the layer on demand from the file: through the stored weights, or without them
    E = sccase_jax.tl.enhanced(res)
    assert E.shape == (60, res.n_vars) and np.all(np.isfinite(E))
    del res.obsp["sccase_weights"]
    # (the tests run the fit in float64, x64 on; obsp keeps Z in float32: equal to float32
    # rounding, bit for bit for enhance's float32 fit, test_enhance_passes_...)
    np.testing.assert_allclose(sccase_jax.tl.enhanced(res), E, rtol=1e-6, atol=1e-7)
