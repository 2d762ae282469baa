"""enhance(): keys, copy semantics, bad input, .h5ad round trip."""

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
from helpers import dense

import sccase_jax
from sccase_jax.datasets import granja_bm600
from sccase_jax.preprocessing import filter_peaks, preprocess, tfidf


@pytest.fixture(scope="module")
def small():
    a = granja_bm600()
    idx = np.concatenate([np.flatnonzero(a.obs["cell_type"] == t)[:25] for t in a.obs["cell_type"].cat.categories])
    return a[idx].copy()


@pytest.fixture(scope="module")
def enhanced(small):
    return sccase_jax.enhance(small, 4, max_iter=3, seed=1)


def test_keys_and_shapes(small, enhanced):
    out = enhanced
    C = small.X.T.tocsr()
    _, keep = filter_peaks(C, 0.0)  # enhance default: only empty peaks dropped
    assert out.shape == (small.n_obs, int(keep.sum()))
    assert list(out.var_names) == list(small.var_names[keep])
    assert list(out.obs_names) == list(small.obs_names)
    assert (out.obs["cell_type"] == small.obs["cell_type"]).all()
    assert out.layers["sccase"].shape == out.shape
    assert out.obsm["X_sccase"].shape == (out.n_obs, 4)
    assert out.varm["sccase_W"].shape == (out.n_vars, 4)
    assert out.obsp["sccase_Z"].shape == (out.n_obs, out.n_obs)
    info = out.uns["sccase"]
    # The default stopping rule (x_tol) may end the fit before max_iter = 3.
    assert 1 <= info["n_iter"] <= 3 and len(info["loss"]) == info["n_iter"]
    assert info["params"]["n_components"] == 4 and info["params"]["seed"] == 1
    assert isinstance(info["converged"], (bool, np.bool_))
    np.testing.assert_array_equal(out.X.toarray(), small.X[:, keep].toarray())


@pytest.mark.parametrize("variant", ["paper", "l2"])
def test_enhanced_matrix_is_x_times_z(small, variant):
    out = sccase_jax.enhance(small, 3, max_iter=2, tfidf=variant, output="xz",
                             scale_output=False)
    X, _, _ = preprocess(small.X.T, min_cells_frac=0.0, tfidf_variant=variant)
    Z = dense(out.obsp["sccase_Z"])
    np.testing.assert_allclose(out.layers["sccase"], (X @ Z).T, rtol=1e-4, atol=1e-7)


def test_default_output_blends_each_cell_with_its_z_average(small, enhanced):
    X, _, _ = preprocess(small.X.T, min_cells_frac=0.0, tfidf_variant="l2")
    X = X.toarray()
    Z = dense(enhanced.obsp["sccase_Z"]).astype(np.float64)
    avg = X @ (Z / Z.sum(axis=0, keepdims=True))  # each column a weighted mean of cells
    expect = 0.2 * X + 0.8 * avg
    np.testing.assert_allclose(enhanced.layers["sccase"], expect.T, rtol=1e-4, atol=1e-6)
    params = enhanced.uns["sccase"]["params"]
    assert params["output"] == "blend" and params["blend"] == 0.8
    assert not params["scale_output"]


def test_xz_output_is_minmax_scaled_by_default(small):
    from sccase_jax.output import minmax_scale

    out = sccase_jax.enhance(small, 4, max_iter=3, seed=1, output="xz")
    X, _, _ = preprocess(small.X.T, min_cells_frac=0.0, tfidf_variant="l2")
    expect = minmax_scale((X @ dense(out.obsp["sccase_Z"])).T.astype(np.float32))
    np.testing.assert_allclose(out.layers["sccase"], expect, rtol=1e-3, atol=1e-5)
    E = out.layers["sccase"]
    np.testing.assert_allclose(E.max(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(E.min(axis=1), 0.0, atol=1e-6)
    rel = sccase_jax.enhance(small, 4, max_iter=1, preset="release")
    assert rel.uns["sccase"]["params"]["output"] == "xz"
    assert rel.uns["sccase"]["params"]["scale_output"]


def test_output_weights():
    from sccase_jax.output import output_weights

    Z = np.array([[2.0, 0.0, 1.0], [2.0, 0.0, 0.0], [0.0, 0.0, 3.0]], np.float32)
    np.testing.assert_array_equal(output_weights(Z, "xz"), Z)
    B = output_weights(Z, "blend", 0.8)
    # columns of the blend sum to 1; an all-zero column keeps the cell's own profile
    np.testing.assert_allclose(B.sum(axis=0), 1.0, rtol=1e-6)
    np.testing.assert_allclose(B[:, 1], [0.0, 1.0, 0.0])
    np.testing.assert_allclose(B[:, 0], [0.2 + 0.4, 0.4, 0.0], rtol=1e-6)
    np.testing.assert_allclose(output_weights(Z, "blend", 0.0), np.eye(3))
    for bad in (-0.1, 1.5, float("nan"), "a"):
        with pytest.raises(sccase_jax.InputError, match="blend"):
            output_weights(Z, "blend", bad)
    with pytest.raises(sccase_jax.InputError, match="output must be"):
        output_weights(Z, "wz")
    # integer weights are weights, not rounded away by the column scaling
    np.testing.assert_allclose(output_weights(Z.astype(np.int64), "blend", 0.8), B, rtol=1e-6)
    np.testing.assert_allclose(output_weights(Z.astype(np.uint8), "blend", 0.8, neighbors=1),
                               output_weights(Z, "blend", 0.8, neighbors=1), rtol=1e-6)


def test_output_weights_neighbors_words(monkeypatch):
    # "auto" and "all" mean in output_weights what they mean in enhance, whose default
    # is "auto"; neither the cut nor the copy path changes the caller's Z.
    import inspect

    import sccase_jax.output as output
    import sccase_jax.tl as tl

    assert inspect.signature(tl.enhance).parameters["neighbors"].default == "auto"
    assert output.DEFAULT_NEIGHBORS == 300
    monkeypatch.setattr(output, "DEFAULT_NEIGHBORS", 2)
    monkeypatch.setattr(output, "NEIGHBORS_MIN", 1)  # else every one of the 5 cells
    rng = np.random.default_rng(3)
    Z = rng.random((5, 5)).astype(np.float32)
    before = Z.copy()
    np.testing.assert_array_equal(output.output_weights(Z, "blend", 0.8, neighbors="auto"),
                                  output.output_weights(Z, "blend", 0.8, neighbors=2))
    np.testing.assert_array_equal(output.output_weights(Z, "xz", neighbors="auto"), Z)
    np.testing.assert_array_equal(output.output_weights(Z, "blend", 0.8, neighbors="all"),
                                  output.output_weights(Z, "blend", 0.8))
    output.output_weights(Z, "blend", 0.8, neighbors=50)  # >= n: a copy, scaled in place
    np.testing.assert_array_equal(Z, before)
    with pytest.raises(sccase_jax.InputError, match="neighbors"):
        output.output_weights(Z, "blend", 0.8, neighbors="most")


def test_output_weights_keep_each_cells_largest_weights():
    from sccase_jax.output import keep_largest, output_weights

    rng = np.random.default_rng(5)
    Z = rng.random((6, 6)).astype(np.float32)
    K = keep_largest(Z, 2)
    assert ((K != 0).sum(axis=0) == 2).all()
    # the kept entries are each column's two largest, unchanged
    top2 = np.sort(Z, axis=0)[-2:]
    np.testing.assert_array_equal(np.sort(K, axis=0)[-2:], top2)
    np.testing.assert_array_equal(keep_largest(Z, 6), Z)
    np.testing.assert_array_equal(keep_largest(Z, 60), Z)
    B = output_weights(Z, "blend", 0.8, neighbors=2)
    np.testing.assert_allclose(B.sum(axis=0), 1.0, rtol=1e-6)
    np.testing.assert_allclose(B, output_weights(K, "blend", 0.8), rtol=1e-6)
    np.testing.assert_array_equal(output_weights(Z, "xz", neighbors=2), K)
    np.testing.assert_allclose(output_weights(Z, "blend", 0.8, neighbors=6),
                               output_weights(Z, "blend", 0.8))
    for bad in (0, -3, 2.5, True, "3"):
        with pytest.raises(sccase_jax.InputError, match="neighbors"):
            output_weights(Z, "blend", 0.8, neighbors=bad)


def test_keep_largest_in_column_blocks(monkeypatch):
    # Blocks of columns (a short last one too) select exactly what one whole-matrix
    # argpartition selects, ties included, and the caller's Z is left as it was.
    import sccase_jax.output as output

    rng = np.random.default_rng(7)
    Z = rng.random((40, 40)).astype(np.float32)
    Z[Z < 0.4] = 0
    Z[:6] = 0.5  # ties at the cut
    before = Z.copy()
    idx = np.argpartition(-Z, 8, axis=0)[:9]
    ref = np.zeros_like(Z)
    np.put_along_axis(ref, idx, np.take_along_axis(Z, idx, axis=0), axis=0)
    monkeypatch.setattr(output, "KEEP_BLOCK", 7)
    np.testing.assert_array_equal(output.keep_largest(Z, 9), ref)
    B = output.output_weights(Z, "blend", 0.8, neighbors=9)
    expect = ref * (0.8 / ref.sum(axis=0)).astype(np.float32)
    expect[np.diag_indices(40)] += 0.2
    np.testing.assert_array_equal(B, expect)
    np.testing.assert_array_equal(Z, before)
    output.output_weights(Z, "blend", 0.8)
    np.testing.assert_array_equal(Z, before)


def test_enhance_with_neighbors(small):
    X, _, _ = preprocess(small.X.T, min_cells_frac=0.0, tfidf_variant="l2")
    out = sccase_jax.enhance(small, 3, max_iter=2, seed=2, neighbors=5)
    Z = dense(out.obsp["sccase_Z"]).astype(np.float64)
    Zk = np.where(Z >= np.sort(Z, axis=0)[-5][None, :], Z, 0)  # no ties in a fitted Z
    expect = 0.2 * X.toarray() + 0.8 * X.toarray() @ (Zk / Zk.sum(axis=0, keepdims=True))
    np.testing.assert_allclose(out.layers["sccase"], expect.T, rtol=1e-4, atol=1e-6)
    assert out.uns["sccase"]["params"]["neighbors"] == 5
    # "auto" on 150 cells: 30 % of them (45) is below the floor of 50
    assert sccase_jax.enhance(small, 3, max_iter=1).uns["sccase"]["params"]["neighbors"] == 50
    for bad in (0, "some", 2.5, True):
        with pytest.raises(sccase_jax.InputError, match="neighbors"):
            sccase_jax.enhance(small, 3, max_iter=1, neighbors=bad)


def test_enhance_default_neighbors(small, monkeypatch):
    # The default ("auto") keeps the rule's number of weights a cell for the blend and all
    # of Z for X Z; the rule is set here to 7 of the 150 cells (no pool, no share of the
    # cells, a floor of 7).
    import sccase_jax.output as output
    import sccase_jax.tl as tl

    monkeypatch.setattr(output, "DEFAULT_NEIGHBORS", 7)
    monkeypatch.setattr(output, "NEIGHBORS_SHARE", 0.0)
    monkeypatch.setattr(output, "POOLED_ENTRIES", 1)
    monkeypatch.setattr(output, "NEIGHBORS_MIN", 7)
    fit = dict(n_components=3, max_iter=1, seed=2)
    auto = tl.enhance(small, **fit)
    assert auto.uns["sccase"]["params"]["neighbors"] == 7
    np.testing.assert_array_equal(auto.layers["sccase"],
                                  tl.enhance(small, neighbors=7, **fit).layers["sccase"])
    every = tl.enhance(small, neighbors="all", **fit)
    assert every.uns["sccase"]["params"]["neighbors"] == "none"
    np.testing.assert_array_equal(every.layers["sccase"],
                                  tl.enhance(small, neighbors=None, **fit).layers["sccase"])
    assert not np.allclose(every.layers["sccase"], auto.layers["sccase"])
    for kw in ({"output": "xz"}, {"preset": "release"}):
        assert tl.enhance(small, **fit, **kw).uns["sccase"]["params"]["neighbors"] == "none"
    assert output.resolve_neighbors("auto", "blend") == 7
    assert output.resolve_neighbors("auto", "xz") is None
    assert output.resolve_neighbors(12, "xz") == 12


def test_input_untouched(small):
    before = small.copy()
    sccase_jax.enhance(small, 2, max_iter=1)
    assert (small.X != before.X).nnz == 0
    assert list(small.layers.keys()) == list(before.layers.keys())
    assert list(small.obsm.keys()) == list(before.obsm.keys())
    assert small.uns.keys() == before.uns.keys()


def test_same_seed_same_result(small):
    a = sccase_jax.enhance(small, 3, max_iter=2, seed=5)
    b = sccase_jax.enhance(small, 3, max_iter=2, seed=5)
    np.testing.assert_array_equal(a.layers["sccase"], b.layers["sccase"])


def test_h5ad_round_trip(tmp_path, enhanced):
    p = tmp_path / "out.h5ad"
    enhanced.write_h5ad(p)
    back = ad.read_h5ad(p)
    np.testing.assert_array_equal(back.layers["sccase"], enhanced.layers["sccase"])
    np.testing.assert_array_equal(dense(back.obsp["sccase_Z"]), dense(enhanced.obsp["sccase_Z"]))
    np.testing.assert_array_equal(back.uns["sccase"]["loss"], enhanced.uns["sccase"]["loss"])
    assert back.uns["sccase"]["params"]["tfidf"] == "l2"
    estimated = back.uns["sccase"]["params"]["n_components_estimated"]
    assert estimated is False or not estimated


def test_layer_input(small):
    a = small.copy()
    a.layers["counts"] = a.X.copy()
    a.X = sp.csr_matrix(a.shape, dtype=np.float32)
    out = sccase_jax.enhance(a, 2, max_iter=1, layer="counts")
    assert out.layers["sccase"].shape[0] == a.n_obs


@pytest.mark.parametrize(
    ("mutate", "kwargs", "match"),
    [
        (lambda a: a.X.data.__setitem__(0, -1.0), {}, "negative"),
        (lambda a: a.X.data.__setitem__(0, np.nan), {}, "NaN or infinite"),
        (lambda a: a.X.data.__setitem__(0, np.inf), {}, "NaN or infinite"),
        (None, {"n_components": 0}, ">= 1"),
        (None, {"n_components": 10_000}, "exceeds"),
        (None, {"layer": "nope"}, "layer 'nope' not found"),
        (None, {"lam": -1.0}, "lam must be"),
        (None, {"keep_prob": 0.0}, "keep_prob"),
        (None, {"max_iter": -1}, "max_iter"),
        (None, {"tfidf": "bm25"}, "tfidf variant"),
        (None, {"output": "xzz"}, "output must be"),
        (None, {"blend": 2.0}, "blend must be"),
    ],
)
def test_bad_input_is_one_clear_error(small, mutate, kwargs, match):
    a = small.copy()
    if mutate is not None:
        mutate(a)
    kwargs = {"n_components": 2, "max_iter": 1, **kwargs}
    with pytest.raises(sccase_jax.InputError, match=match):
        sccase_jax.enhance(a, **kwargs)


def test_fewer_cells_than_components():
    a = granja_bm600()[:3].copy()
    with pytest.raises(sccase_jax.InputError, match="exceeds"):
        sccase_jax.enhance(a, 5, min_cells_frac=0.0, drop_empty_cells=True)


def test_empty_cells_reported_and_droppable(small):
    a = small.copy()
    X = a.X.tolil()
    X[0, :] = 0
    X[1, :] = 0
    a.X = X.tocsr()
    with pytest.raises(sccase_jax.InputError, match="2 of 150 cells have no counts"):
        sccase_jax.enhance(a, 2, max_iter=1)
    out = sccase_jax.enhance(a, 2, max_iter=1, drop_empty_cells=True)
    assert out.n_obs == 148
    assert list(out.obs_names) == list(a.obs_names[2:])


def test_tfidf_variants():
    C = sp.csr_matrix(np.array([[1, 0, 2], [1, 1, 0], [0, 3, 1.0]]))
    n = 3
    paper = tfidf(C, "paper").toarray()
    c = C.toarray()
    expect = c / c.sum(0, keepdims=True) * np.maximum(np.log(n / c.sum(1, keepdims=True)), 0)
    np.testing.assert_allclose(paper, expect)
    l2 = tfidf(C, "l2").toarray()
    x = c * np.log(n / (c > 0).sum(1, keepdims=True))
    np.testing.assert_allclose(l2, x / np.linalg.norm(x, axis=0, keepdims=True))
    np.testing.assert_allclose(np.linalg.norm(l2, axis=0), 1.0)


def test_release_preset_runs_three_iterations(small):
    out = sccase_jax.enhance(small, 3, preset="release")
    info = out.uns["sccase"]
    assert info["n_iter"] == 3 and info["params"]["tfidf"] == "l2"
    assert info["params"]["jaccard_normalize"] == "row"
    E = out.layers["sccase"]
    assert E.min() >= 0 and E.max() <= 1 + 1e-6


def test_peak_filter_default_keeps_every_peak_with_a_read_release_uses_one_percent(small):
    C = small.X.T.tocsr()
    seen = np.asarray(C.getnnz(axis=1) > 0)
    out = sccase_jax.enhance(small, 3, max_iter=1)
    assert out.n_vars == int(seen.sum())
    assert out.uns["sccase"]["params"]["min_cells_frac"] == 0.0
    rel = sccase_jax.enhance(small, 3, preset="release")
    _, keep = filter_peaks(C, 0.01)
    assert rel.n_vars == int(keep.sum())
    assert rel.uns["sccase"]["params"]["min_cells_frac"] == 0.01


def test_enhance_progress_names_each_stage(small, capfd):
    # Long starts (K estimate, Gram, NMF) are announced before the iteration lines.
    sccase_jax.enhance(small, max_iter=2, seed=1, progress=True)
    err = capfd.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    stages = [ln for ln in lines if ln.startswith(("estimating", "estimated", "start:"))]
    assert [s.split()[0] for s in stages] == ["estimating", "estimated", "start:"], err
    assert "cell types" in stages[1] and "k = " in stages[1]
    iters = [ln for ln in lines if ln.startswith("iter")]
    assert len(iters) == 2 and lines.index(stages[-1]) < lines.index(iters[0])
    sccase_jax.enhance(small, 3, max_iter=1, seed=1)
    assert not [ln for ln in capfd.readouterr().err.splitlines()
                if ln.startswith(("estimating", "start:", "iter"))]
