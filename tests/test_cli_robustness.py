"""Robustness of the command line: no aliasing of the input, no stray files, sane file
modes, numeric options checked at parse time, unlabelled cells, plain-text help.

Most tests replace :func:`sccase_jax.tl.enhance` by a fake (no fit, no compilation), so the
file runs in seconds; one test runs a real (tiny) fit end to end.
"""

import json
import os
import re
import time

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from sccase_jax import cli as cli_mod


def run_cli(capsys, *args):
    """``main`` in process: (exit status, stderr)."""
    try:
        code = cli_mod.main([str(a) for a in args])
    except SystemExit as exc:  # older parsers raise instead of returning the status
        code = exc.code
    return code, capsys.readouterr().err


def one_error_line(err):
    lines = [line for line in err.strip().splitlines() if line.strip()]
    return len(lines) == 1 and lines[0].startswith("sccase-jax: error: ") and "Traceback" not in err


def tiny_adata(n_per=12, peaks=60, seed=0, enhanced=False):
    rng = np.random.default_rng(seed)
    rows = []
    for t in range(3):
        p = np.full(peaks, 0.05)
        p[t * 20 : (t + 1) * 20] = 0.6
        rows.append(rng.random((n_per, peaks)) < p)
    C = np.vstack(rows).astype(np.float32)
    lab = np.repeat(["B", "T", "Mono"], n_per).astype(object)
    n = C.shape[0]
    a = ad.AnnData(sp.csr_matrix(C), obs=pd.DataFrame({"cell_type": lab}, index=[f"c{i}" for i in range(n)]))
    if enhanced:  # an oracle "enhanced" layer: each cell averaged with its own type
        a.layers["sccase"] = (np.vstack([C[lab == x].mean(0) for x in lab])
                              + 0.01 * rng.random(C.shape)).astype(np.float32)
    return a


@pytest.fixture
def infile(tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    p = d / "victim.h5ad"
    tiny_adata().write_h5ad(p)
    return p


@pytest.fixture
def fake_enhance(monkeypatch):
    """Replace the fit by a fake that records its keyword arguments (and writes out_file)."""
    import sccase_jax.tl

    calls = []

    def enhance(adata, **kw):
        calls.append(kw)
        out = ad.AnnData(adata.X.copy(), obs=adata.obs.copy(), var=adata.var.copy())
        out.uns["sccase"] = {"n_iter": 1, "status": "max_iter"}
        if kw.get("out_file"):
            out.write_h5ad(kw["out_file"])
        if getattr(enhance, "fail", None) is not None:
            raise enhance.fail
        out.layers["sccase"] = np.asarray(adata.X.todense())
        return out

    enhance.fail = None
    monkeypatch.setattr(sccase_jax.tl, "enhance", enhance)
    enhance.calls = calls
    return enhance


def parts(*dirs):
    return [p for d in dirs for p in os.listdir(d) if p.endswith(".part")]


# 1. aliasing of the input and symlinked outputs ------------------------------------------

def test_output_through_symlinked_directory_is_refused(infile, tmp_path, capsys, fake_enhance):
    link = tmp_path / "linkdir"
    link.symlink_to(infile.parent, target_is_directory=True)
    before = infile.read_bytes()
    code, err = run_cli(capsys, "enhance", infile, link / "victim.h5ad", "--k", 2, "--quiet")
    assert code == 2 and "never overwritten" in err and one_error_line(err)
    assert infile.read_bytes() == before and not fake_enhance.calls


def test_other_aliases_of_the_input_are_refused(infile, tmp_path, capsys, fake_enhance):
    before = infile.read_bytes()
    alias = infile.parent / "alias.h5ad"
    alias.symlink_to(infile.name)  # the input given as a symlink to the output path
    hard = tmp_path / "hard.h5ad"
    os.link(infile, hard)
    dotted = str(infile.parent / ".." / infile.parent.name / "." / infile.name)
    for inp, out in [(alias, infile), (infile, alias), (infile, dotted), (infile, hard)]:
        code, err = run_cli(capsys, "enhance", inp, out, "--k", 2, "--quiet")
        assert code == 2 and "never overwritten" in err and one_error_line(err), (inp, out, err)
    assert infile.read_bytes() == before and not fake_enhance.calls


def test_output_equal_to_reference_is_refused(infile, tmp_path, capsys, fake_enhance):
    ref = tmp_path / "ref.h5ad"
    tiny_adata(n_per=1).write_h5ad(ref)
    before = ref.read_bytes()
    code, err = run_cli(capsys, "enhance", infile, ref, "--k", 2, "--reference", ref, "--quiet")
    assert code == 2 and "reference file" in err and one_error_line(err)
    assert ref.read_bytes() == before


def test_output_symlink_is_written_through(infile, tmp_path, capsys, fake_enhance):
    target_dir = tmp_path / "elsewhere"
    target_dir.mkdir()
    target = target_dir / "target.h5ad"
    link = tmp_path / "out.h5ad"
    link.symlink_to(target)  # dangling until written
    code, err = run_cli(capsys, "enhance", infile, link, "--k", 2, "--quiet")
    assert code == 0, err
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert ad.read_h5ad(target).n_obs == 36
    assert not parts(tmp_path, target_dir)


# 2. --out-of-core leaves no temporary file ------------------------------------------------

@pytest.mark.parametrize("extra", [["--k", "0"], ["--reference", "nope.h5ad"], ["--k-ref", "2"]])
def test_out_of_core_usage_errors_leave_no_part_file(infile, tmp_path, capsys, fake_enhance, extra):
    out = tmp_path / "out.h5ad"
    code, err = run_cli(capsys, "enhance", infile, out, "--out-of-core", "--quiet", *extra)
    assert code == 2 and one_error_line(err), err
    assert not out.exists() and not parts(tmp_path, infile.parent)


@pytest.mark.parametrize("exc", [cli_mod.CLIError("boom"), RuntimeError("boom"), KeyboardInterrupt()])
def test_out_of_core_failure_in_the_fit_leaves_no_part_file(infile, tmp_path, capsys, fake_enhance, exc):
    fake_enhance.fail = exc
    out = tmp_path / "out.h5ad"
    if isinstance(exc, RuntimeError):
        with pytest.raises(RuntimeError):
            cli_mod.main(["enhance", str(infile), str(out), "--k", "2", "--out-of-core", "--quiet"])
    else:
        code, _ = run_cli(capsys, "enhance", infile, out, "--k", 2, "--out-of-core", "--quiet")
        assert code in (2, 130)
    assert fake_enhance.calls and fake_enhance.calls[0]["out_file"]  # it did start
    assert not out.exists() and not parts(tmp_path)


def test_out_of_core_api_error_leaves_no_part_file(infile, tmp_path, capsys):
    out = tmp_path / "out.h5ad"  # the real enhance: k above min(cells, peaks), refused
    code, err = run_cli(capsys, "enhance", infile, out, "--k", 1000, "--out-of-core", "--quiet")
    assert code == 2 and "exceeds" in err and one_error_line(err)
    assert not out.exists() and not parts(tmp_path)


# 3. file permissions follow the umask ------------------------------------------------------

@pytest.fixture
def umask():
    old = os.umask(0o022)
    os.umask(old)

    def set_(mask):
        os.umask(mask)

    yield set_
    os.umask(old)


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077])
@pytest.mark.parametrize("ooc", [False, True])
def test_output_mode_follows_umask(infile, tmp_path, capsys, fake_enhance, umask, mask, ooc):
    umask(mask)
    out = tmp_path / "out.h5ad"
    code, err = run_cli(capsys, "enhance", infile, out, "--k", 2, "--quiet",
                        *(["--out-of-core"] if ooc else []))
    assert code == 0, err
    assert os.stat(out).st_mode & 0o777 == 0o666 & ~mask


def test_write_h5ad_atomic_mode(tmp_path, umask):
    umask(0o022)
    out = tmp_path / "o.h5ad"
    cli_mod.write_h5ad_atomic(tiny_adata(n_per=2), str(out))
    assert os.stat(out).st_mode & 0o777 == 0o644 and not parts(tmp_path)


# 4. numeric options are checked when parsed ------------------------------------------------

@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (["--n-pcs", "0"], "n_pcs must be"),
        (["--n-pcs", "x"], "n_pcs must be an integer"),
        (["--seeds", "0", "-1"], "seed must be"),
        (["--seed", "-3"], "seed must be"),
    ],
)
def test_evaluate_bad_numbers_one_line_no_directory(tmp_path, capsys, extra, match):
    inp = tmp_path / "in.h5ad"
    tiny_adata(enhanced=True).write_h5ad(inp)
    out = tmp_path / "ev"
    code, err = run_cli(capsys, "evaluate", inp, "--labels", "cell_type", "--out", out, *extra)
    assert code == 2 and match in err and one_error_line(err), err
    assert not out.exists()


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (["--k", "0"], "n_components must be >= 1"),
        (["--k", "-2"], "n_components must be >= 1"),
        (["--max-iter", "1.5"], "max_iter must be an integer"),
        (["--max-iter", "-1"], "max_iter must be"),
        (["--tol", "-1"], "tol must be"),
        (["--tol", "nan"], "tol must be"),
        (["--lam", "-1"], "lam must be"),
        (["--lam", "inf"], "lam must be"),
        (["--gamma1", "-0.5"], "gamma1 must be"),
        (["--gamma2", "nan"], "gamma2 must be"),
        (["--keep-prob", "0"], "keep_prob must be in (0, 1]"),
        (["--keep-prob", "1.5"], "keep_prob must be in (0, 1]"),
        (["--seed", "-1"], "seed must be"),
        (["--seed", "1.5"], "seed must be an integer"),
        (["--min-cells-frac", "2"], "min_cells_frac must be in [0, 1]"),
        (["--blend", "-0.1"], "blend must be in [0, 1]"),
        (["--neighbors", "0"], "neighbors must be a positive integer"),
        (["--neighbors", "most"], "neighbors must be a positive integer, 'auto' or 'all'"),
        (["--k-ref", "0"], "k_ref must be >= 1"),
        (["--alpha", "-1"], "alpha must be"),
        (["--min-peak-match", "1.5"], "min_peak_match must be in [0, 1]"),
    ],
)
def test_enhance_bad_numbers_before_reading(tmp_path, capsys, extra, match):
    # The input does not exist: the option must be refused before it is looked at.
    code, err = run_cli(capsys, "enhance", tmp_path / "missing.h5ad", tmp_path / "o.h5ad", *extra)
    assert code == 2 and match in err and one_error_line(err), err
    assert "not found" not in err and not list(tmp_path.iterdir())


def test_demo_bad_seed(capsys):
    code = cli_mod.main(["demo", "--seed", "-1"])
    out, err = capsys.readouterr()
    assert code == 2 and one_error_line(err)
    assert out == ""  # refused before the data are loaded


def test_usage_errors_are_one_line(capsys, tmp_path):
    for args in (["enhance"], ["nope"], ["enhance", "a.h5ad", "b.h5ad", "--bogus"]):
        code, err = run_cli(capsys, *args)
        assert code == 2 and one_error_line(err), err


def test_evaluate_failure_leaves_no_empty_directory(tmp_path, capsys, monkeypatch):
    import sccase_jax.evaluation.clustering

    def boom(*a, **k):
        raise sccase_jax.cli.CLIError("clustering failed")

    monkeypatch.setattr(sccase_jax.evaluation.clustering, "evaluate_clustering", boom)
    inp = tmp_path / "in.h5ad"
    tiny_adata(enhanced=True).write_h5ad(inp)
    code, err = run_cli(capsys, "evaluate", inp, "--labels", "cell_type", "--out", tmp_path / "ev", "--quiet")
    assert code == 2 and "clustering failed" in err
    assert not (tmp_path / "ev").exists()


# 5. unlabelled cells ------------------------------------------------------------------------

def test_evaluate_leaves_out_unlabelled_cells(tmp_path, capsys):
    a = tiny_adata(n_per=20, enhanced=True)
    lab = a.obs["cell_type"].to_numpy().copy()
    lab[[0, 13, 30]] = None
    lab[5] = np.nan
    a.obs["cell_type"] = pd.Categorical(lab)
    inp = tmp_path / "in.h5ad"
    a.write_h5ad(inp)
    out = tmp_path / "ev"
    code, err = run_cli(capsys, "evaluate", inp, "--labels", "cell_type", "--out", out, "--graph", "knn",
                        "--no-umap", "--n-pcs", 5, "--seeds", 0, "--quiet")
    assert code == 0, err
    assert "4 of 60 cells have no label" in err
    rep = json.loads((out / "metrics.json").read_text())
    assert rep["n_types"] == 3 and rep["cells"] == 56 and rep["unlabelled_cells_left_out"] == 4
    assert rep["results"]["enhanced (sccase)"]["ari"] == pytest.approx(1.0)


def test_evaluate_refuses_fewer_than_two_labelled_types(tmp_path, capsys):
    a = tiny_adata(enhanced=True)
    a.obs["one"] = np.where(np.arange(a.n_obs) < 12, "B", None).astype(object)
    inp = tmp_path / "in.h5ad"
    a.write_h5ad(inp)
    code, err = run_cli(capsys, "evaluate", inp, "--labels", "one", "--out", tmp_path / "ev", "--quiet")
    assert code == 2 and "fewer than two classes" in err and one_error_line(err)
    assert not (tmp_path / "ev").exists()


@pytest.mark.parametrize("missing", [None, np.nan])
def test_pseudobulk_reference_skips_unlabelled(missing):
    from sccase_jax.reference import pseudobulk_reference
    from sccase_jax.validate import InputError

    C = np.eye(5)
    labels = pd.Categorical(["a", missing, "b", missing, "a"])
    with pytest.warns(UserWarning, match="2 of 5 cells have no label"):
        ref = pseudobulk_reference(C, labels, list("vwxyz"))
    assert list(ref.obs_names) == ["pb_a", "pb_b"]
    assert ref.obs["n_cells"].tolist() == [2, 1]
    np.testing.assert_array_equal(np.asarray(ref.X), [[1, 0, 0, 0, 1], [0, 0, 1, 0, 0]])
    with pytest.raises(InputError, match="no cell has a label"):
        pseudobulk_reference(C, [missing] * 5, list("vwxyz"))


# 6. evaluate_clustering checks its arguments first -----------------------------------------

def test_evaluate_clustering_validates_before_the_pca():
    from sccase_jax.evaluation.clustering import evaluate_clustering, pca_embedding
    from sccase_jax.evaluation.metrics import clustering_scores, label_silhouette

    X = np.random.default_rng(0).random((30, 20))
    lab = np.repeat(["a", "b", "c"], 10)
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match="labels must have one entry per cell"):
        evaluate_clustering(X, lab[:10])
    with pytest.raises(ValueError, match="n_pcs must be a positive integer"):
        evaluate_clustering(X, lab, n_pcs=0)
    with pytest.raises(ValueError, match="n_pcs must be a positive integer"):
        pca_embedding(X, 0)
    with pytest.raises(ValueError, match="graph must be"):
        evaluate_clustering(X, lab, graph="nope")
    with pytest.raises(ValueError, match="seeds"):
        evaluate_clustering(X, lab, seeds=())
    assert time.perf_counter() - t0 < 2.0  # no PCA, no graph
    with pytest.raises(ValueError, match="labels_true and labels_pred"):
        clustering_scores(lab, lab[:5])
    with pytest.raises(ValueError, match="labels must have one entry per row of X"):
        label_silhouette(X, lab[:3])


# 7. a missing reference is named as such ---------------------------------------------------

def test_missing_reference_is_named(infile, tmp_path, capsys, fake_enhance):
    code, err = run_cli(capsys, "enhance", infile, tmp_path / "o.h5ad", "--k", 2, "--reference",
                        tmp_path / "nope.h5ad", "--quiet")
    assert code == 2 and one_error_line(err)
    assert "reference file not found" in err and "nope.h5ad" in err and "input" not in err
    code, err = run_cli(capsys, "enhance", tmp_path / "gone.h5ad", tmp_path / "o.h5ad", "--quiet")
    assert code == 2 and "input file not found" in err


# 8. plain-text help --------------------------------------------------------------------------

def test_top_level_help_is_plain_text(capsys):
    try:
        code = cli_mod.main(["--help"])
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr().out
    assert code == 0 and "sccase-jax" in out and "enhance" in out
    assert "``" not in out and ":func:" not in out


# 9. --max-iter / --tol: passed on only when given -----------------------------------------

def test_max_iter_and_tol_passed_only_when_given(infile, tmp_path, capsys, fake_enhance):
    code, err = run_cli(capsys, "enhance", infile, tmp_path / "a.h5ad", "--k", 2, "--preset", "release",
                        "--quiet")
    assert code == 0, err
    kw = fake_enhance.calls[-1]
    assert "max_iter" not in kw and "tol" not in kw and kw["preset"] == "release"
    code, err = run_cli(capsys, "enhance", infile, tmp_path / "b.h5ad", "--k", 2, "--preset", "release",
                        "--max-iter", 30, "--tol", "1e-6", "--quiet")
    assert code == 0, err
    kw = fake_enhance.calls[-1]
    assert kw["max_iter"] == 30 and kw["tol"] == 1e-6


def test_neighbors_passed_as_given(infile, tmp_path, capsys, fake_enhance):
    cases = [((), "auto"), (("--neighbors", "all"), "all"), (("--neighbors", "40"), 40)]
    for i, (extra, want) in enumerate(cases):
        code, err = run_cli(capsys, "enhance", infile, tmp_path / f"n{i}.h5ad", "--k", 2, *extra,
                            "--quiet")
        assert code == 0, err
        assert fake_enhance.calls[-1]["neighbors"] == want


def test_help_states_effective_iteration_defaults():
    parser = cli_mod.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    text = re.sub(r"\s+", " ", sub.choices["enhance"].format_help())
    assert re.search(r"--max-iter MAX_ITER maximum iterations \(default 30; 3 with --preset release\)", text)
    assert re.search(r"--tol TOL relative change of F to stop at \(default 1e-0?6;", text)


# End to end: a real (tiny) fit, out of core, through a symlinked output, under a umask ------

def test_real_fit_out_of_core_through_symlink(infile, tmp_path, capsys, umask):
    umask(0o027)
    target = tmp_path / "real.h5ad"
    link = tmp_path / "link.h5ad"
    link.symlink_to(target)
    code, err = run_cli(capsys, "enhance", infile, link, "--k", 2, "--max-iter", 2, "--out-of-core",
                        "--quiet")
    assert code == 0, err
    assert link.is_symlink() and os.stat(target).st_mode & 0o777 == 0o640
    res = ad.read_h5ad(target)
    assert res.layers["sccase"].shape == (36, res.n_vars) and res.uns["sccase"]["n_iter"] == 2
    assert not parts(tmp_path, infile.parent)


def test_evaluate_missing_explicit_layer_is_an_error(tmp_path, capsys, monkeypatch):
    # A --layer given and missing (a typo) must not silently enhance the input instead.
    import sccase_jax.tl as tl

    monkeypatch.setattr(tl, "enhance", lambda *a, **k: pytest.fail("enhance must not run"))
    inp = tmp_path / "in.h5ad"
    tiny_adata(enhanced=True).write_h5ad(inp)
    code, err = run_cli(capsys, "evaluate", inp, "--labels", "cell_type", "--out",
                        tmp_path / "ev", "--layer", "sccasee")
    assert code == 2 and one_error_line(err) and "'sccasee' not in layers" in err, err
    assert "'sccase'" in err and not (tmp_path / "ev").exists()
