"""The enhanced matrix on demand: the weights B stored for every layout, the dense layer
only within its budget, and every way of getting the values (chosen cells, peaks or
regions, lazily, written block by block, products for the PCA) equal to the layer; the
commands that need the whole matrix (evaluate, peaks) work on a file without it."""

import json
import re

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

import sccase_jax
from sccase_jax import cli, tl
from sccase_jax.datasets import granja_bm600
from sccase_jax.evaluation.clustering import implicit_pca, pca_embedding
from sccase_jax.implicit import EnhancedMatrix
from sccase_jax.validate import InputError

FAST = dict(max_iter=2, nmf_iter=5)
LAYOUTS = {
    "default blend, 5 neighbours": dict(neighbors=5),
    "xz over all cells, min-max scaled": dict(output="xz"),
    "blend over all cells": dict(neighbors="all"),
    # 20 output neighbours, more than the 8 candidates of the support ("auto" on these 60
    # cells is 50, the rule's floor: most of them)
    "knn support": dict(z_support="knn", n_neighbors=8, neighbors=20),  # weights from H^T H
    "scaled, float16, 7 neighbours": dict(output="xz", neighbors=7, layer_dtype="float16"),
}


@pytest.fixture(scope="module")
def small():
    """60 cells of the bundled Granja data (10 of each type), raw counts."""
    a = granja_bm600()
    idx = np.concatenate([np.flatnonzero(a.obs["cell_type"] == t)[:10]
                          for t in a.obs["cell_type"].cat.categories])
    return a[idx].copy()


@pytest.fixture(scope="module", params=list(LAYOUTS))
def pair(request, small):
    """``(with the layer, without it)``: the same fit, stored both ways."""
    kw = LAYOUTS[request.param]
    full = sccase_jax.enhance(small, 3, **kw, **FAST)
    lean = sccase_jax.enhance(small, 3, layer_budget=0, **kw, **FAST)
    return full, lean


def test_weights_are_sparse_whenever_the_output_uses_neighbours(pair, request):
    full, lean = pair
    params = lean.uns["sccase"]["params"]
    knn = "knn" in request.node.callspec.id
    assert "sccase" in full.layers and "sccase" not in lean.layers
    assert lean.uns["sccase"]["layer"].startswith("not stored: ") and "tl.enhanced" in lean.uns["sccase"]["layer"]
    assert full.uns["sccase"]["layer"].startswith("stored in layers['sccase']")
    if params["neighbors"] == "none" and not knn:
        assert "sccase_weights" not in lean.obsp  # a function of the stored full Z
        assert not sp.issparse(lean.obsp["sccase_Z"])
    else:
        B = lean.obsp["sccase_weights"]
        assert sp.issparse(B) and B.shape == (lean.n_obs, lean.n_obs)
        per_cell = np.diff(sp.csc_matrix(B).indptr)
        assert per_cell.max() <= lean.n_obs // 2  # never n x n


def test_on_demand_values_equal_the_layer_bit_for_bit(pair):
    full, lean = pair
    L = full.layers["sccase"]
    np.testing.assert_array_equal(tl.enhanced(lean), L)
    np.testing.assert_array_equal(tl.enhanced_layer(lean), L)
    assert tl.enhanced(lean).dtype == L.dtype
    rows, cols = [7, 0, 59], [1800, 3, 17, 3]
    np.testing.assert_array_equal(tl.enhanced(lean, peaks=cols, cells=rows), L[np.ix_(rows, cols)])
    names = lean.var_names[[10, 2]]
    np.testing.assert_array_equal(tl.enhanced(lean, peaks=names, cells=lean.obs_names[5:9]),
                                  L[5:9][:, [10, 2]])
    mask = np.zeros(lean.n_vars, bool)
    mask[::97] = True
    np.testing.assert_array_equal(tl.enhanced(lean, peaks=mask), L[:, mask])
    # the file round trip (uns arrays, sparse weights) keeps it exact
    np.testing.assert_array_equal(tl.enhanced(_round_trip(lean), cells=[1, 2]), L[[1, 2]])


def _round_trip(a):
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        a.write_h5ad(f"{d}/a.h5ad")
        return ad.read_h5ad(f"{d}/a.h5ad")


def test_regions_choose_the_overlapping_peaks(pair, tmp_path):
    full, lean = pair
    v = lean.var
    i = 12
    region = f"{v['chr'].iloc[i]}:{v['start'].iloc[i] + 10}-{v['start'].iloc[i] + 20}"
    want = np.flatnonzero((v["chr"] == v["chr"].iloc[i]) & (v["start"] < v["start"].iloc[i] + 20)
                          & (v["end"] > v["start"].iloc[i] + 10))
    np.testing.assert_array_equal(tl.enhanced(lean, regions=region), full.layers["sccase"][:, want])
    bed = tmp_path / "r.bed"
    bed.write_text(f"{v['chr'].iloc[i]}\t{v['start'].iloc[i]}\t{v['end'].iloc[i]}\n")
    np.testing.assert_array_equal(tl.enhanced(lean, regions=bed), full.layers["sccase"][:, want])
    with pytest.raises(InputError, match="peaks or regions, not both"):
        tl.enhanced(lean, peaks=[1], regions=region)
    with pytest.raises(InputError, match="not found"):
        tl.enhanced(lean, peaks=["chrZ:1-2"])


def test_lazy_dask_array_and_block_writer(pair, tmp_path):
    pytest.importorskip("dask")
    full, lean = pair
    L = full.layers["sccase"]
    lazy = tl.enhanced(lean, lazy=True, block=16)
    assert lazy.shape == L.shape and lazy.dtype == L.dtype and lazy.chunks[0][0] == 16
    np.testing.assert_array_equal(lazy[20:45, 100:900].compute(), L[20:45, 100:900])
    # a reduction over chunks adds in another order: equal to rounding
    np.testing.assert_allclose(lazy.sum(axis=0, dtype=np.float64).compute(), L.sum(axis=0, dtype=np.float64),
                               rtol=1e-12)
    path = tl.write_enhanced(lean, tmp_path / "sub.h5ad", peaks=list(range(50)), cells=slice(0, 30),
                             block=7)
    back = ad.read_h5ad(path)
    np.testing.assert_array_equal(back.layers["sccase"], L[:30, :50])
    assert list(back.var_names) == list(lean.var_names[:50])
    np.testing.assert_array_equal(back.X.toarray(), lean.X[:30, :50].toarray())


def test_products_match_the_dense_matrix(pair):
    full, lean = pair
    enh = tl.enhanced_matrix(lean).select(cells=np.arange(0, 60, 2), peaks=np.arange(0, lean.n_vars, 3))
    D = enh.astype(np.float64).toarray()
    rng = np.random.default_rng(0)
    v, u = rng.standard_normal(D.shape[1]), rng.standard_normal(D.shape[0])
    for center in (False, True):
        M = D - D.mean(axis=0) if center else D
        op = enh.linear_operator(center=center)
        # the operator works before the float32 rounding (and float16 cast) of the values
        tol = 2e-3 if enh.dtype == np.float16 else 1e-5
        np.testing.assert_allclose(op @ v, M @ v, rtol=tol, atol=tol * np.abs(M @ v).max())
        np.testing.assert_allclose(op.T @ u, M.T @ u, rtol=tol, atol=tol * np.abs(M.T @ u).max())


def test_implicit_pca_is_the_pca_of_the_dense_matrix(small):
    lean = sccase_jax.enhance(small, 3, store_layer=False, **FAST)
    enh = tl.enhanced_matrix(lean)
    D = enh.toarray().astype(np.float64)
    U, S, _ = np.linalg.svd(D - D.mean(axis=0), full_matrices=False)  # the exact PCA
    implicit = implicit_pca(enh, 10)
    assert implicit.shape == (60, 10) and implicit.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(implicit, axis=0), S[:10], rtol=1e-5)
    for j in range(2):  # well separated singular values: the same component up to sign
        assert abs(np.corrcoef(implicit[:, j], U[:, j])[0, 1]) > 0.9999
    np.testing.assert_array_equal(pca_embedding(enh, 10, transform=None), implicit)
    with pytest.raises(ValueError, match="transform=None"):
        pca_embedding(enh, 10)


def test_budget_default_and_cli(small, tmp_path, capsys):
    # the default budget (500 MB) keeps small layers; none (below) always keeps it
    assert "sccase" in sccase_jax.enhance(small, 3, **FAST).layers
    src = tmp_path / "in.h5ad"
    small.write_h5ad(src)
    out = tmp_path / "lean.h5ad"
    code = cli.main(["enhance", str(src), str(out), "--k", "3", "--max-iter", "2", "--layer-budget", "1kB"])
    err = capsys.readouterr().err
    assert code == 0 and re.search(r"enhanced layer: not stored: \S+ kB float32 dense is above "
                                   r"layer_budget 1\.0 kB; sccase_jax\.tl\.enhanced", err), err
    lean = ad.read_h5ad(out)
    assert "sccase" not in lean.layers and "sccase_weights" in lean.obsp
    code = cli.main(["enhance", str(src), str(tmp_path / "f.h5ad"), "--k", "3", "--max-iter", "2",
                     "--layer-budget", "none", "--quiet"])
    assert code == 0
    full = ad.read_h5ad(tmp_path / "f.h5ad")
    np.testing.assert_array_equal(tl.enhanced(lean), full.layers["sccase"])
    assert cli.main(["enhance", str(src), str(tmp_path / "x.h5ad"), "--layer-budget", "lots"]) == 2
    assert "layer_budget must be a number of bytes" in capsys.readouterr().err


@pytest.fixture(scope="module")
def lean_file(small, tmp_path_factory):
    d = tmp_path_factory.mktemp("lean")
    for name, budget in (("lean", 0), ("full", None)):
        sccase_jax.enhance(small, 3, layer_budget=budget, out_file=d / f"{name}.h5ad", **FAST)
    return d


def test_evaluate_runs_on_a_file_without_the_layer(lean_file, capsys):
    scores = {}
    for name in ("lean", "full"):
        rep = lean_file / f"rep_{name}"
        code = cli.main(["evaluate", str(lean_file / f"{name}.h5ad"), "--labels", "cell_type",
                         "--out", str(rep), "--graph", "knn", "--no-umap", "--seeds", "0",
                         "--n-pcs", "10"])
        err = capsys.readouterr().err
        assert code == 0, err
        assert ("never formed" in err) == (name == "lean")
        scores[name] = json.loads((rep / "metrics.json").read_text())["results"]["enhanced (sccase)"]
    # Scores of both (the lean file's PCA is the exact one, test above; the dense path's is
    # sklearn's randomized PCA, so the numbers need not agree on 60 cells)
    for r in scores.values():
        assert -1 <= r["ari"] <= 1 and 0 <= r["ami"] <= 1 and r["reached"]


def test_peaks_run_on_a_file_without_the_layer(lean_file, monkeypatch):
    import pandas as pd

    from sccase_jax.tl import peaks

    monkeypatch.setattr(peaks, "PEAK_BLOCK_ENTRIES", 60 * 700)  # several peak blocks
    tables = {}
    for name in ("lean", "full"):
        out = lean_file / f"peaks_{name}"
        for method in ("factor", "wilcoxon"):
            code = cli.main(["peaks", str(lean_file / f"{name}.h5ad"), "--groupby", "cell_type",
                             "--out", str(out / method), "--method", method, "--n-top", "20", "--quiet"])
            assert code == 0
            tables[name, method] = pd.read_csv(out / method / "specific_peaks.tsv", sep="\t")
            assert (out / method / "heatmap.png").exists()
    pd.testing.assert_frame_equal(tables["lean", "factor"], tables["full", "factor"])
    lean, full = tables["lean", "wilcoxon"], tables["full", "wilcoxon"]
    np.testing.assert_allclose(lean["score"], full["score"], rtol=1e-6)
    np.testing.assert_allclose(lean["p_adj"], full["p_adj"], rtol=1e-6)
    for g, lg in lean.groupby("group"):  # the same peaks, up to the order of tied scores
        fg = full[full["group"] == g]
        cut = lg["score"].min()
        assert set(lg["peak"][lg["score"] > cut]) == set(fg["peak"][fg["score"] > cut])
        same = lg.merge(fg, on="peak")
        np.testing.assert_allclose(same["score_x"], same["score_y"], rtol=1e-6)


def test_enhanced_matrix_checks():
    X = sp.random(6, 4, density=0.5, random_state=0, format="csr")
    with pytest.raises(InputError, match="weights are"):
        EnhancedMatrix(X, np.eye(3))
    E = EnhancedMatrix(X, np.eye(4))
    np.testing.assert_array_equal(E[1:3, 2], X.T.toarray()[1:3, 2].astype(np.float32))
    assert E[0, 0] == np.float32(X[0, 0])
    with pytest.raises(InputError, match="positions must lie in"):
        E.select(cells=[9])
    with pytest.raises(InputError, match="before selecting"):
        E.select(cells=[1]).with_scaling()


def _no_dense_z(monkeypatch):
    """Make every way of densifying a sparse matrix, and the dense selection of Z, raise."""
    from sccase_jax import output

    def boom(*a, **kw):
        raise AssertionError("an n x n array was formed")

    for cls in (sp.csr_matrix, sp.csc_matrix, sp.csr_array, sp.csc_array):
        monkeypatch.setattr(cls, "toarray", boom)
        monkeypatch.setattr(cls, "todense", boom)
    monkeypatch.setattr(output, "keep_largest", boom)
    monkeypatch.setattr(output, "weights", boom)


def test_weights_recomputed_from_a_sparse_z_are_the_stored_ones(pair, monkeypatch):
    # An output whose weights are lost (or a file written before they were stored): they
    # come back from the stored sparse Z (for the knn support with fewer candidates than
    # the output's neighbours, from H^T H of the stored embedding) as enhance built them,
    # bit for bit, and without ever forming an n x n array.
    import importlib

    from sccase_jax import output

    full, lean = pair
    if not sp.issparse(lean.obsp["sccase_Z"]):
        pytest.skip("a dense stored Z (an output over every cell)")
    params = lean.uns["sccase"]["params"]
    want = sp.csc_matrix(lean.obsp["sccase_weights"])
    gone = lean.copy()
    del gone.obsp["sccase_weights"]
    weights = importlib.import_module("sccase_jax.tl.enhanced")._weights
    with monkeypatch.context() as m:
        _no_dense_z(m)
        got = weights(gone, "sccase", params)
    assert sp.issparse(got) and got.dtype == want.dtype
    assert (got != want).nnz == 0
    np.testing.assert_array_equal(tl.enhanced(gone), full.layers["sccase"])
    if params.get("z_support") != "knn":
        # the dense computation from the same stored Z, bit for bit
        Z = output.keep_largest(gone.obsp["sccase_Z"].toarray(), int(params["neighbors"]))
        blend = float(params["blend"]) if params["output"] == "blend" else 0.0
        np.testing.assert_array_equal(got.toarray(), output.weights(Z, params["output"], blend, True))
