"""scCASER: masked objective, peak matching, reference builders, enhance/CLI with a reference."""

import subprocess
import sys
import warnings

import anndata as ad
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from helpers import tiny_problem
from hypothesis import given
from hypothesis import strategies as st

from sccase_jax.datasets import granja_bm600
from sccase_jax.fitting import fit
from sccase_jax.objectives.sccase import grad_w_gram, gram_loss, sccaser_grads, sccaser_loss
from sccase_jax.ops import wt_x
from sccase_jax.params import SolverConfig
from sccase_jax.problem import prepare
from sccase_jax.reference import (
    ReferenceError,
    bulk_reference,
    default_k_ref,
    map_reference,
    match_peaks,
    parse_peak_names,
    pseudobulk_reference,
    reference_loadings,
    self_reference,
    transform_reference,
)
from sccase_jax.solver import run
from sccase_jax.tl import enhance
from sccase_jax.validate import InputError


def close(a, b, tol=1e-9):
    b = np.asarray(b)
    np.testing.assert_allclose(np.asarray(a), b, rtol=tol, atol=tol * (1 + float(np.abs(b).max())))


# ------------------------------------------------------------------ masked objective


def _loss(X, Z, R, W1, W2, H, P, M, N, lam, g1, g2, alpha):
    return sccaser_loss(X, Z, R, W1, W2, H, P, M, N, lam=lam, gamma1=g1, gamma2=g2, alpha=alpha)


_auto_grads = jax.jit(jax.grad(_loss, argnums=(3, 4, 5, 1)))


@jax.jit
def _ana_grads(X, Z, R, W1, W2, H, P, M, N, lam, g1, g2, alpha):
    return sccaser_grads(X, Z, R, W1, W2, H, P, M, N, lam=lam, gamma1=g1, gamma2=g2, alpha=alpha)


@given(st.integers(0, 10_000), st.integers(0, 3), st.floats(0.0, 1e3), st.floats(0.0, 1e3))
def test_masked_loss_grads_match_autodiff(seed, k_ref, alpha, lam):
    data, (W, H, Z), hp = tiny_problem(seed, 12, 9, 3, k_ref=k_ref)
    rng = np.random.default_rng(seed + 7)
    W1, W2 = jnp.asarray(rng.random((12, 3))), jnp.asarray(rng.random((12, 3)))
    M = jnp.broadcast_to(data.M[None, :], (12, 3))
    N = 1.0 - M
    args = (data.X, Z, data.R, W1, W2, H, data.P, M, N, lam, hp.gamma1, hp.gamma2, alpha)
    auto = _auto_grads(*args)
    ana = _ana_grads(*args)
    for a, b in zip(ana, auto):
        close(a, b)
    # The masks keep each block's gradient inside its own columns.
    assert float(jnp.abs(ana[0] * N).max()) == 0.0
    assert float(jnp.abs(ana[1] * M).max()) == 0.0


@given(st.integers(0, 10_000), st.floats(0.0, 1e3))
def test_gram_w_gradient_with_alpha_matches_autodiff(seed, alpha):
    data, (W, H, Z), hp = tiny_problem(seed, 12, 9, 3, k_ref=2)
    hp = hp._replace(alpha=jnp.asarray(alpha))
    S = Z * data.R.astype(Z.dtype)

    def F(W):
        return gram_loss(S, data.G @ S, wt_x(data.X, W), W, H, Z, data.P, data.M, hp)

    close(grad_w_gram(W, data.X @ (S @ H.T), H @ H.T, data.P, data.M, hp.gamma1, hp.alpha),
          jax.grad(F)(W))


def test_reference_values_outside_the_block_are_ignored():
    # P outside the reference columns only adds a constant: the fit is the same.
    data, f0, hp = tiny_problem(3, k_ref=1, lam=5.0)
    cfg = SolverConfig(max_iter=15, tol=0.0)
    a = run(data, f0, hp, cfg)
    P2 = data.P.at[:, 1:].set(5.0)
    b = run(data._replace(P=P2), f0, hp, cfg)
    for x, y in zip(a.factors, b.factors):
        close(x, y, 1e-8)


def test_w1_starts_from_p_and_w2_from_nmf():
    rng = np.random.default_rng(0)
    X = rng.random((20, 15)) * (rng.random((20, 15)) < 0.5)
    P = rng.random((20, 2))
    prob = prepare(X, 4, P=P, k_ref=2, alpha=1.0, dtype=jnp.float64)
    np.testing.assert_array_equal(np.asarray(prob.factors.W[:, :2]), P)
    free = prepare(X, 2, dtype=jnp.float64).factors.W
    close(prob.factors.W[:, 2:], free, 1e-12)
    assert np.asarray(prob.data.M).tolist() == [1.0, 1.0, 0.0, 0.0]


def test_alpha_pulls_w1_to_p():
    rng = np.random.default_rng(1)
    X = rng.random((20, 15)) * (rng.random((20, 15)) < 0.5)
    P = rng.random((20, 2)) * 0.5
    dist = []
    for alpha in (0.0, 1.0, 100.0, 1e4):
        res = fit(X, 3, P=P, k_ref=2, alpha=alpha, lam=10.0, max_iter=30, tol=0.0, dtype=jnp.float64)
        dist.append(np.linalg.norm(res.W[:, :2] - P) / np.linalg.norm(P))
    assert all(a > b for a, b in zip(dist, dist[1:])), dist
    assert dist[-1] < 1e-2 < dist[0]


# ------------------------------------------------------------------ peak matching


def var_of(names, **cols):
    return pd.DataFrame(cols, index=pd.Index(names))


def test_parse_peak_names_separators():
    c, s, e = parse_peak_names(["chr1:10-20", "chr2-30-40", "chrX_5_9"])
    assert list(c) == ["chr1", "chr2", "chrX"] and list(s) == [10, 30, 5] and list(e) == [20, 40, 9]
    assert parse_peak_names(["chr1:10-20", "peak_b"]) is None
    assert parse_peak_names(["chr1:20-10"]) is None


def test_match_by_name_ignores_order():
    t = var_of(["a", "b", "c", "d"])
    r = var_of(["d", "x", "b"])
    m = match_peaks(t, r)
    assert m.method == "name" and m.n_matched == 2 and m.n_ref_used == 2 and m.fraction == 0.5
    R = np.array([[1.0, 2.0, 3.0]])  # profile on the reference peaks d, x, b
    np.testing.assert_array_equal((m.T @ R.T).ravel(), [0, 3, 0, 1])


def test_match_by_overlap():
    t = var_of(["chr1:100-200", "chr1:300-400", "chr2:100-200", "chr1:1000-1100", "chr3:1-50"])
    # Reference: one peak inside t0, two overlapping t1, one touching t3 (half-open: no
    # overlap), one on chr2 overlapping t2, a wide one on chr1 far away; unsorted, other names.
    r = var_of(["p0", "p1", "p2", "p3", "p4", "p5"],
               chrom=["chr1", "chr1", "chr1", "chr1", "chr2", "chr1"],
               start=[350, 150, 390, 1100, 50, 5000], end=[360, 160, 500, 1200, 101, 9000])
    m = match_peaks(t, r)
    assert m.method == "overlap"
    T = m.T.toarray()
    expect = np.zeros((5, 6))
    expect[0, 1] = expect[1, 0] = expect[1, 2] = expect[2, 4] = 1
    np.testing.assert_array_equal(T, expect)
    assert m.n_matched == 3 and m.n_ref_used == 4
    # Identical names also match by overlap; by name they would not here.
    assert match_peaks(t, r, "name").n_matched == 0
    with pytest.raises(ReferenceError, match="chr/start/end"):
        match_peaks(var_of(["a", "b"]), r, "overlap")


def test_overlap_from_names_in_other_format():
    t = var_of(["chr1:100-200", "chr1:300-400"])
    r = var_of(["chr1-150-250", "chr1_390_395", "chr9-1-2"])
    m = match_peaks(t, r)
    assert m.method == "overlap" and m.T.toarray().tolist() == [[1, 0, 0], [0, 1, 0]]


def ref_ad(X, names, **cols):
    return ad.AnnData(np.asarray(X, np.float32), var=var_of(names, **cols))


def test_map_reference_sums_and_zero_fills():
    t = var_of(["chr1:100-200", "chr1:300-400", "chr2:1-10"])
    ref = ref_ad([[1, 2, 4], [0, 3, 1]], ["chr1:120-130", "chr1:150-160", "chr1:310-320"])
    with pytest.warns(UserWarning, match="poor reference overlap.*2 of 3"):
        Rm, m = map_reference(ref, t, warn_match=0.9)
    np.testing.assert_array_equal(Rm, [[3, 3], [4, 1], [0, 0]])


@pytest.mark.parametrize(
    ("X", "names", "match"),
    [
        ([[1, 2]], ["chr5:1-10", "chr5:20-30"], "shares no peaks"),
        ([[1, -2]], ["chr1:100-200", "chr1:300-400"], "negative"),
        ([[1, np.nan]], ["chr1:100-200", "chr1:300-400"], "NaN"),
        ([[1, 2], [0, 0]], ["chr1:100-200", "chr1:300-400"], "empty profile"),
        ([[1, 0], [0, 2]], ["chr1:100-200", "chr7:300-400"], "empty on the matched peaks"),
        (np.zeros((0, 2)), ["chr1:100-200", "chr1:300-400"], "empty"),
    ],
)
def test_bad_references_are_refused(X, names, match):
    t = var_of(["chr1:100-200", "chr1:300-400"])
    with pytest.raises(ReferenceError, match=match):
        map_reference(ref_ad(X, names), t, warn_match=0.0)


def test_poor_overlap_threshold():
    t = var_of([f"chr1:{i * 100}-{i * 100 + 50}" for i in range(20)])
    ref = ref_ad([[1.0, 2.0]], ["chr1:0-50", "chr1:100-150"])  # 2 of 20 target peaks
    with pytest.raises(ReferenceError, match=r"2 of 20 .* below min_peak_match = 20%"):
        map_reference(ref, t, min_match=0.2)
    with pytest.warns(UserWarning, match="poor reference overlap"):
        map_reference(ref, t, min_match=0.05)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        map_reference(ref, t, min_match=0.0, warn_match=0.0)


# ------------------------------------------------------------------ transform and P


def test_transform_matches_target_tfidf_of_a_mean_cell():
    # A reference profile equal to a cell's counts becomes that cell's TF-IDF column.
    from sccase_jax.preprocessing import tfidf

    rng = np.random.default_rng(2)
    C = rng.poisson(1.0, (30, 12)).astype(float) + (rng.random((30, 12)) < 0.1)
    X = tfidf(C).toarray()
    close(transform_reference(C[:, :3] * 7.0, C), X[:, :3], 1e-12)
    Xl2 = tfidf(C, "l2").toarray()
    close(transform_reference(C[:, :3] * 7.0, C, "l2"), Xl2[:, :3], 1e-12)


def test_reference_loadings_shape_scale_and_default_k():
    rng = np.random.default_rng(3)
    Rt = rng.random((25, 4))
    X = rng.random((25, 18))
    P = reference_loadings(Rt, 3, X=X, n_free=2, dtype=jnp.float64)
    assert P.shape == (25, 3) and P.min() >= 0
    norms = np.linalg.norm(P, axis=0)
    close(norms, np.full(3, norms[0]), 1e-9)
    with pytest.raises(InputError, match="k_ref must be between"):
        reference_loadings(Rt, 5)
    assert default_k_ref(16, 21) == 16 and default_k_ref(16, 10) == 9 and default_k_ref(3, 1) == 1


# ------------------------------------------------------------------ builders


def test_bulk_reference_scales_by_mapped_reads():
    C = np.array([[10.0, 30.0], [1.0, 1.0]])
    b = bulk_reference(C, ["p1", "p2"], sample_names=["s1", "s2"], mapped_reads=[1e6, 2e6])
    np.testing.assert_allclose(b.X, [[10.0, 30.0], [0.5, 0.5]])
    assert list(b.obs_names) == ["s1", "s2"] and list(b.var_names) == ["p1", "p2"]
    np.testing.assert_allclose(bulk_reference(C, ["p1", "p2"], per=1.0).X.sum(axis=1), [1, 1], rtol=1e-6)
    with pytest.raises(InputError, match="negative"):
        bulk_reference(-C, ["p1", "p2"])


def test_pseudobulk_reference_sums_labels():
    C = sp.csr_matrix(np.array([[1, 0, 2], [0, 1, 1], [3, 3, 0], [1, 1, 1]], float))
    pb = pseudobulk_reference(C, ["b", "a", "b", "c"], ["x", "y", "z"], min_cells=1)
    assert list(pb.obs["label"]) == ["a", "b", "c"] and list(pb.obs["n_cells"]) == [1, 2, 1]
    np.testing.assert_array_equal(pb.X, [[0, 1, 1], [4, 3, 2], [1, 1, 1]])
    assert pseudobulk_reference(C, ["b", "a", "b", "c"], ["x", "y", "z"], min_cells=2).n_obs == 1


@pytest.fixture(scope="module")
def bm():
    a = granja_bm600()
    idx = np.concatenate([np.flatnonzero(a.obs["cell_type"] == t)[:20]
                          for t in a.obs["cell_type"].cat.categories])
    return a, a[idx].copy()


def test_self_reference_clusters_and_sums(bm):
    full, _ = bm
    sr = self_reference(full.X, var=full.var, n_clusters=6, min_cells=1, seed=0)
    assert sr.n_obs == 6 and sr.n_vars == full.n_vars
    np.testing.assert_allclose(sr.X.sum(), full.X.sum(), rtol=1e-5)
    assert len(sr.uns["labels"]) == full.n_obs
    # Clusters follow the cell types (the 6 types of bm600 are well separated).
    from sklearn.metrics import adjusted_rand_score

    assert adjusted_rand_score(full.obs["cell_type"], sr.uns["labels"]) > 0.4


# ------------------------------------------------------------------ enhance and CLI


def test_enhance_with_reference_records_match_and_ignores_peak_order(bm):
    full, small = bm
    ref = pseudobulk_reference(full.X, full.obs["cell_type"].values, var=full.var)
    kw = dict(n_components=5, max_iter=3, tol=0.0)
    with pytest.warns(UserWarning, match="keeps k_ref = 4 of the 6"):
        out = enhance(small, reference=ref, **kw)
    info = out.uns["sccase"]
    r = info["reference"]
    assert r["k_ref"] == 4 and r["alpha"] == 1.0 and r["n_profiles"] == 6
    assert r["n_matched"] == r["n_target_peaks"] == out.n_vars and r["match_method"] == "overlap"
    assert info["params"]["lam"] == 1e5 and info["params"]["k_ref"] == 4
    # Reversed reference peaks, named differently: the same fit.
    rev = ref[:, ::-1].copy()
    rev.var_names = [f"{c}-{s}-{e}" for c, s, e in zip(rev.var["chr"], rev.var["start"], rev.var["end"])]
    rev.var = rev.var[[]]
    with pytest.warns(UserWarning, match="keeps k_ref = 4 of the 6"):
        out2 = enhance(small, reference=rev, **kw)
    close(out2.layers["sccase"], out.layers["sccase"], 1e-5)
    # Without a reference the plain lam default holds, and k_ref alone is refused.
    with pytest.raises(InputError, match="need a reference"):
        enhance(small, k_ref=2, **kw)


def test_default_k_with_reference_keeps_a_column_per_profile(bm, monkeypatch):
    import sccase_jax.estimate as est

    full, small = bm
    ref = pseudobulk_reference(full.X, full.obs["cell_type"].values, var=full.var)  # 6 profiles
    monkeypatch.setattr(est, "estimate_n_components", lambda X, seed=0, gram=None: 2)
    out = enhance(small, reference=ref, max_iter=1)
    # c = max(estimate 2, 6 profiles) = 6, then the scCASER rule round(1.3 c) = 8; k_ref 6
    assert out.uns["sccase"]["params"]["n_components"] == 8
    assert out.uns["sccase"]["reference"]["k_ref"] == 6
    monkeypatch.setattr(est, "estimate_n_components", lambda X, seed=0, gram=None: 9)
    out = enhance(small, reference=ref, max_iter=1)
    assert out.uns["sccase"]["params"]["n_components"] == 12  # the estimate wins: round(11.7)
    assert out.uns["sccase"]["reference"]["k_ref"] == 6


def test_too_few_components_for_the_reference_warns(bm):
    full, small = bm
    ref = pseudobulk_reference(full.X, full.obs["cell_type"].values, var=full.var)  # 6 profiles
    fast = dict(max_iter=1, nmf_iter=5)  # the warning comes before the fit
    msg = r"keeps k_ref = 3 of the 6 reference profiles.*>= 7 \(command line: --k\)"
    with pytest.warns(UserWarning, match=msg) as rec:
        enhance(small, reference=ref, n_components=4, **fast)
    assert any(w.filename == __file__ for w in rec if "k_ref" in str(w.message))  # the caller's line
    # The default rule on 5 cells: k is capped at min(peaks, cells), and the advice says so.
    with pytest.warns(UserWarning, match=r"keeps k_ref = 4 of the 6.*data allow no more components"):
        enhance(full[::120].copy(), reference=ref, **fast)
    with warnings.catch_warnings():  # enough columns, or k_ref chosen: no warning
        warnings.filterwarnings("error", message=".*reference profiles")
        enhance(small, reference=ref, n_components=7, **fast)
        enhance(small, reference=ref, n_components=4, k_ref=3, **fast)


def test_enhance_refuses_unusable_reference(bm):
    _, small = bm
    bad = ad.AnnData(np.ones((2, 3), np.float32), var=var_of(["chrZ:1-2", "chrZ:5-9", "chrZ:20-30"]))
    with pytest.raises(ReferenceError, match="shares no peaks"):
        enhance(small, n_components=4, reference=bad, max_iter=1)


def test_cli_reference(bm, tmp_path, capsys):
    from sccase_jax.cli import main

    def cli(*args):
        code = main([str(a) for a in args])
        return code, capsys.readouterr().err

    full, small = bm
    small.write_h5ad(tmp_path / "in.h5ad")
    pseudobulk_reference(full.X, full.obs["cell_type"].values, var=full.var).write_h5ad(tmp_path / "ref.h5ad")
    neg = ad.AnnData(-np.ones((2, 3), np.float32), var=var_of(["chr1:1-2", "chr1:5-9", "chr1:20-30"]))
    neg.write_h5ad(tmp_path / "neg.h5ad")
    code, err = cli("enhance", tmp_path / "in.h5ad", tmp_path / "out.h5ad", "--k", 5, "--k-ref", 3,
                    "--alpha", 2, "--max-iter", 3, "--quiet", "--reference", tmp_path / "ref.h5ad")
    assert code == 0, err
    res = ad.read_h5ad(tmp_path / "out.h5ad")
    assert res.uns["sccase"]["reference"]["k_ref"] == 3 and res.uns["sccase"]["reference"]["alpha"] == 2.0
    code, err = cli("enhance", tmp_path / "in.h5ad", tmp_path / "o2.h5ad", "--k", 5, "--quiet",
                    "--reference", tmp_path / "neg.h5ad")
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("sccase-jax: error:") and "negative" in err
    assert not (tmp_path / "o2.h5ad").exists()
    # As a subprocess: a reference sharing no peaks, one line and exit status 2.
    none = ad.AnnData(np.ones((1, 2), np.float32), var=var_of(["chrZ:1-2", "chrZ:5-9"]))
    none.write_h5ad(tmp_path / "none.h5ad")
    r = subprocess.run([sys.executable, "-m", "sccase_jax.cli", "enhance", str(tmp_path / "in.h5ad"),
                        str(tmp_path / "o3.h5ad"), "--k", "5", "--quiet", "--reference",
                        str(tmp_path / "none.h5ad")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "shares no peaks" in r.stderr
