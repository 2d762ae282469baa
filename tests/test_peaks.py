"""Cell-type-specific peaks: sccase_jax.tl.specific_peaks, BED export, ``sccase-jax peaks``."""

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from sccase_jax.cli import main
from sccase_jax.cli import peaks as cli_peaks
from sccase_jax.tl import peaks as tl_peaks
from sccase_jax.tl import specific_peaks, write_bed
from sccase_jax.validate import InputError

GROUPS = ["B", "Mono", "T"]
BLOCK = 20  # peaks 20 g .. 20 g + 19 belong to group g (factor 2 - g: not the identity)


def _enhanced(seed=0, n_per=30, m=90):
    """A stand-in enhance output: factor 2 - g is high in group g, its loadings on block g;
    a last factor loads on every peak (shared)."""
    rng = np.random.default_rng(seed)
    n = n_per * len(GROUPS)
    lab = np.repeat(GROUPS, n_per)
    k = len(GROUPS) + 1
    H = 0.1 * rng.random((k, n))
    W = 0.05 * rng.random((m, k))
    W[:, -1] += 1.0  # the shared factor: large loadings everywhere
    H[-1] += 1.0
    for g in range(len(GROUPS)):
        f = 2 - g
        H[f, lab == GROUPS[g]] += 1.0
        W[g * BLOCK:(g + 1) * BLOCK, f] += 0.5 + rng.random(BLOCK)
    C = (rng.random((n, m)) < 0.1).astype(np.float32)
    for g in range(len(GROUPS)):
        C[np.ix_(lab == GROUPS[g], np.arange(g * BLOCK, (g + 1) * BLOCK))] = rng.random((n_per, BLOCK)) < 0.7
    names = [f"chr1:{1000 * i}-{1000 * i + 500}" for i in range(m)]
    a = ad.AnnData(sp.csr_matrix(C), obs=pd.DataFrame({"cell_type": lab}, index=[f"c{i}" for i in range(n)]),
                   var=pd.DataFrame(index=names))
    a.obsm["X_sccase"] = H.T
    a.varm["sccase_W"] = W
    a.layers["sccase"] = C + 0.01 * rng.random((n, m)).astype(np.float32)
    return a


def test_factor_method_finds_each_groups_factor_and_block():
    a = _enhanced()
    t = specific_peaks(a, "cell_type", n_top=BLOCK)
    assert list(t.columns[:6]) == ["group", "rank", "peak", "score", "p", "p_adj"]
    assert a.uns["sccase_specific_peaks"] is t
    for g, name in enumerate(GROUPS):
        sub = t[t.group == name]
        assert len(sub) == BLOCK and list(sub["rank"]) == list(range(1, BLOCK + 1))
        assert set(sub.factor) == {2 - g}
        idx = a.var_names.get_indexer(sub.peak)
        assert np.all((idx >= g * BLOCK) & (idx < (g + 1) * BLOCK))
        assert sub.p_adj.max() < 1e-6 and np.all(np.diff(sub.score) <= 0)


def test_loading_rank_follows_w():
    a = _enhanced()
    t = specific_peaks(a, "cell_type", n_top=5, rank_by="loading", inplace=False)
    assert "sccase_specific_peaks" not in a.uns
    W = a.varm["sccase_W"]
    for g, name in enumerate(GROUPS):
        sub = t[t.group == name]
        f = 2 - g
        expect = a.var_names[np.argsort(-W[:, f])[:5]]
        assert list(sub.peak) == list(expect)
        assert sub.score.iloc[0] == pytest.approx(1.0)


def test_random_embedding_is_not_specific():
    """The test can fail: with H unrelated to the groups no factor is significant."""
    a = _enhanced()
    rng = np.random.default_rng(1)
    a.obsm["X_sccase"] = rng.random(a.obsm["X_sccase"].shape)
    groups, auc, p, p_adj = tl_peaks.factor_tests(a.obsm["X_sccase"].T, a.obs.cell_type.to_numpy())
    assert p_adj.min() > 0.01 and np.all(np.abs(auc - 0.5) < 0.25)


def test_bh_matches_statsmodels():
    multitest = pytest.importorskip("statsmodels.stats.multitest")
    p = np.random.default_rng(0).random(50) ** 3
    np.testing.assert_allclose(tl_peaks._bh(p), multitest.multipletests(p, method="fdr_bh")[1])


@pytest.mark.parametrize("method", ["wilcoxon", "t-test"])
def test_differential_methods_find_the_blocks(method):
    pytest.importorskip("scanpy")
    a = _enhanced()
    for layer in (None, "X"):
        t = specific_peaks(a, "cell_type", n_top=10, method=method, layer=layer, inplace=False)
        for g, name in enumerate(GROUPS):
            idx = a.var_names.get_indexer(t[t.group == name].peak)
            assert np.mean((idx >= g * BLOCK) & (idx < (g + 1) * BLOCK)) >= 0.9
            assert t[t.group == name].p_adj.max() < 1e-3


def test_bed_files(tmp_path):
    a = _enhanced()
    t = specific_peaks(a, "cell_type", n_top=3, inplace=False)
    paths = write_bed(a, t, tmp_path / "bed")
    assert sorted(p.split("/")[-1] for p in paths) == ["B.bed", "Mono.bed", "T.bed"]
    rows = (tmp_path / "bed" / "B.bed").read_text().splitlines()
    first = rows[0].split("\t")
    assert len(rows) == 3 and f"{first[0]}:{first[1]}-{first[2]}" == first[3] and first[4] == "1"


@pytest.mark.parametrize("obs, msg", [
    ({"cell_type": ["A"] * 90}, "only one group"),
    ({"cell_type": ["A", None] * 45}, "missing labels"),
    ({"other": ["A", "B"] * 45}, "not a column"),
])
def test_bad_groups(obs, msg):
    a = _enhanced()
    a.obs = pd.DataFrame(obs, index=a.obs_names)
    with pytest.raises(InputError, match=msg):
        specific_peaks(a, "cell_type")


def test_bad_arguments():
    a = _enhanced()
    with pytest.raises(InputError, match="n_top"):
        specific_peaks(a, n_top=0)
    with pytest.raises(InputError, match="method"):
        specific_peaks(a, method="magic")
    b = a.copy()
    del b.varm["sccase_W"]
    with pytest.raises(InputError, match="output of sccase_jax.enhance"):
        specific_peaks(b)
    with pytest.raises(InputError, match="layer 'nope'"):
        specific_peaks(a, method="wilcoxon", layer="nope")
    c = a.copy()
    c.var_names = [f"peak{i}" for i in range(a.n_vars)]
    with pytest.raises(InputError, match="genomic coordinates"):
        tl_peaks.peak_coordinates(c, c.var_names[:2])


def test_cli_constants_match():
    assert cli_peaks.METHODS == tl_peaks.METHODS and cli_peaks.RANK_BY == tl_peaks.RANK_BY


def test_cli_peaks_writes_tables_bed_and_heatmap(tmp_path):
    a = _enhanced()
    path = tmp_path / "in.h5ad"
    a.write_h5ad(path)
    out = tmp_path / "report"
    assert main(["peaks", str(path), "--groupby", "cell_type", "--out", str(out), "--n-top", "5", "--quiet"]) == 0
    t = pd.read_csv(out / "specific_peaks.tsv", sep="\t")
    assert len(t) == 15 and set(t.group) == set(GROUPS)
    assert sorted(p.name for p in (out / "bed").iterdir()) == ["B.bed", "Mono.bed", "T.bed"]
    assert (out / "heatmap.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("change, msg", [
    (lambda a: a.obs.__setitem__("cell_type", "A"), "only one group"),
    (lambda a: a.obs.__setitem__("cell_type", pd.Series(["A", np.nan] * 45, index=a.obs_names)), "missing labels"),
])
def test_cli_bad_input_writes_nothing(tmp_path, capsys, change, msg):
    a = _enhanced()
    change(a)
    path = tmp_path / "in.h5ad"
    a.write_h5ad(path)
    out = tmp_path / "report"
    assert main(["peaks", str(path), "--groupby", "cell_type", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and msg in err[0] and not out.exists()
    assert main(["peaks", str(path), "--groupby", "nope", "--out", str(out)]) == 2
    assert not out.exists()


def test_group_means():
    M = np.arange(12.0).reshape(4, 3)
    np.testing.assert_allclose(cli_peaks.group_means(M, np.array(["a", "b", "a", "b"]), ["a", "b"]),
                               [[3, 4, 5], [6, 7, 8]])


def test_uns_table_survives_h5ad(tmp_path):
    a = _enhanced()
    t = specific_peaks(a, "cell_type", n_top=4)
    a.write_h5ad(tmp_path / "a.h5ad")
    back = ad.read_h5ad(tmp_path / "a.h5ad").uns["sccase_specific_peaks"]
    pd.testing.assert_frame_equal(back.reset_index(drop=True), t.reset_index(drop=True), check_dtype=False)
