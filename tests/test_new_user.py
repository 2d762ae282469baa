"""What a new user hit (issue 23): each item has its test here.

1. the API never replaces its input file; 2. outputs of a sensible size (sparse Z, float16
or no layer, recomputable); 3. label columns that are not cell types; 4. Ctrl-C; 5. an
unwritable output found before any work; 6. the end-of-fit message; 7. the loss figure
and the raw baselines' names; 8. preprocess/fit/sweep defaults and warnings, objectives.
"""

import json
import os
import signal
import subprocess
import sys
import time
import warnings

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
from helpers import dense

import sccase_jax
from sccase_jax import cli, io, output, tl
from sccase_jax.datasets import granja_bm600
from sccase_jax.preprocessing import preprocess
from sccase_jax.result import status_message
from sccase_jax.tl import frontend
from sccase_jax.validate import InputError

FAST = dict(max_iter=2, nmf_iter=5)


@pytest.fixture(scope="module")
def small():
    """60 cells of the bundled Granja data (10 of each type), raw counts."""
    a = granja_bm600()
    idx = np.concatenate([np.flatnonzero(a.obs["cell_type"] == t)[:10]
                          for t in a.obs["cell_type"].cat.categories])
    return a[idx].copy()


@pytest.fixture(scope="module")
def small_file(small, tmp_path_factory):
    p = tmp_path_factory.mktemp("in") / "same.h5ad"
    small.write_h5ad(p)
    return p


@pytest.fixture
def no_fit(monkeypatch):
    """Fail if enhance gets as far as preprocessing (a bad output must be found first)."""

    def boom(*args, **kwargs):
        raise AssertionError("enhance started the work with an output it cannot write")

    monkeypatch.setattr(frontend, "preprocess", boom)


# 1. the input file is never replaced ---------------------------------------------------

def test_api_refuses_to_replace_the_file_it_read(small_file, no_fit):
    before = small_file.read_bytes()
    with pytest.raises(InputError, match="exists; pass overwrite=True"):
        sccase_jax.enhance(ad.read_h5ad(small_file), 3, out_file=small_file, **FAST)
    assert small_file.read_bytes() == before


def test_api_refuses_every_alias_of_a_backed_input(small_file, tmp_path, no_fit):
    before = small_file.read_bytes()
    backed = ad.read_h5ad(small_file, backed="r")
    link = tmp_path / "link.h5ad"
    link.symlink_to(small_file)
    hard = tmp_path / "hard.h5ad"
    os.link(small_file, hard)
    dotted = small_file.parent / ".." / small_file.parent.name / "." / small_file.name
    try:
        for alias in (small_file, link, hard, dotted):
            # overwrite=True does not make the input fair game
            with pytest.raises(InputError, match="is the input file .* never overwritten"):
                sccase_jax.enhance(backed, 3, out_file=alias, overwrite=True, **FAST)
    finally:
        backed.file.close()
    assert small_file.read_bytes() == before


def test_api_refuses_the_backed_reference(small, small_file, tmp_path, no_fit):
    ref = sccase_jax.reference.pseudobulk_reference(small.X, small.obs["cell_type"], var=small.var)
    ref_path = tmp_path / "ref.h5ad"
    ref.write_h5ad(ref_path)
    backed_ref = ad.read_h5ad(ref_path, backed="r")
    try:
        with pytest.raises(InputError, match="reference file"):
            sccase_jax.enhance(small, 7, reference=backed_ref, out_file=ref_path, overwrite=True,
                               **FAST)
    finally:
        backed_ref.file.close()


def test_api_overwrite_replaces_another_file(small, tmp_path):
    out = tmp_path / "out.h5ad"
    out.write_bytes(b"old")
    with pytest.raises(InputError, match="exists"):
        sccase_jax.enhance(small, 3, out_file=out, **FAST)
    assert out.read_bytes() == b"old"
    sccase_jax.enhance(small, 3, out_file=out, overwrite=True, **FAST)
    assert ad.read_h5ad(out).n_obs == small.n_obs
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.h5ad"]


# 2. output size ----------------------------------------------------------------------------

def test_z_is_stored_sparse_with_the_outputs_neighbours(small):
    out = sccase_jax.enhance(small, 3, neighbors=5, **FAST)
    Z = out.obsp["sccase_Z"]
    assert sp.issparse(Z) and np.all(np.diff(Z.tocsc().indptr) == 5)
    assert out.uns["sccase"]["params"]["store_z"] == 5
    full = sccase_jax.enhance(small, 3, neighbors=5, store_z="full", **FAST)
    Zf = full.obsp["sccase_Z"]
    assert not sp.issparse(Zf) and Zf.shape == (60, 60)
    np.testing.assert_array_equal(dense(Z), output.keep_largest(Zf, 5))  # the same fit
    np.testing.assert_array_equal(out.layers["sccase"], full.layers["sccase"])
    assert "sccase_Z" not in sccase_jax.enhance(small, 3, store_z="none", **FAST).obsp
    assert sp.issparse(sccase_jax.enhance(small, 3, store_z=8, **FAST).obsp["sccase_Z"])
    # the paper's X Z uses every cell: auto keeps all of Z
    assert not sp.issparse(sccase_jax.enhance(small, 3, output="xz", **FAST).obsp["sccase_Z"])
    for bad in (0, "some", 2.5, True):
        with pytest.raises(InputError, match="store_z"):
            sccase_jax.enhance(small, 3, store_z=bad, **FAST)


@pytest.mark.parametrize("kw", [dict(neighbors=5), dict(output="xz"), dict(neighbors="all"),
                                dict(neighbors=5, tfidf="paper", binarize=True)])
def test_layer_left_out_is_recomputed_exactly(small, kw):
    full = sccase_jax.enhance(small, 3, **kw, **FAST)
    lean = sccase_jax.enhance(small, 3, store_layer=False, **kw, **FAST)
    assert "sccase" not in lean.layers
    np.testing.assert_array_equal(tl.enhanced_layer(lean), full.layers["sccase"])


def test_recompute_refuses_a_z_that_does_not_cover_the_output(small):
    # The stored weights reproduce the layer whatever store_z keeps ...
    out = sccase_jax.enhance(small, 3, neighbors=8, store_z=4, store_layer=False, **FAST)
    full = sccase_jax.enhance(small, 3, neighbors=8, **FAST)
    np.testing.assert_array_equal(tl.enhanced_layer(out), full.layers["sccase"])
    # ... a file without them (written before they were stored) needs a Z that covers the output
    del out.obsp["sccase_weights"]
    with pytest.raises(InputError, match="keeps 4 neighbours per cell but the output used 8"):
        tl.enhanced_layer(out)
    out = sccase_jax.enhance(small, 3, store_z="none", store_layer=False, **FAST)
    np.testing.assert_array_equal(tl.enhanced_layer(out), sccase_jax.enhance(small, 3, **FAST).layers["sccase"])
    del out.obsp["sccase_weights"]
    with pytest.raises(InputError, match="store_z='none'"):
        tl.enhanced_layer(out)


def test_float16_layer_and_file_sizes(small, tmp_path):
    f32 = sccase_jax.enhance(small, 3, **FAST)
    f16 = sccase_jax.enhance(small, 3, layer_dtype="float16", **FAST)
    assert f16.layers["sccase"].dtype == np.float16
    np.testing.assert_allclose(f16.layers["sccase"], f32.layers["sccase"], rtol=1e-3, atol=1e-6)
    sizes = {}
    for name, a in (("f32", f32), ("f16", f16),
                    ("none", sccase_jax.enhance(small, 3, store_layer=False, **FAST))):
        p = tmp_path / f"{name}.h5ad"
        a.write_h5ad(p)
        sizes[name] = p.stat().st_size
        assert io.h5ad_bytes(a) == pytest.approx(sizes[name], rel=0.3)  # the announced size
    assert sizes["none"] < sizes["f16"] < sizes["f32"]
    with pytest.raises(InputError, match="layer_dtype"):
        sccase_jax.enhance(small, 3, layer_dtype="int8", **FAST)


def test_cli_announces_the_size_and_writes_lean_files(small_file, tmp_path, capsys):
    out = tmp_path / "lean.h5ad"
    code = cli.main(["enhance", str(small_file), str(out), "--k", "3", "--max-iter", "2",
                     "--no-layer", "--neighbors", "5"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert f"writing {out}: about " in err and "obsp sccase_Z" in err and "sparse" in err
    back = ad.read_h5ad(out)
    assert "sccase" not in back.layers and sp.issparse(back.obsp["sccase_Z"])
    report = tmp_path / "rep"
    code = cli.main(["evaluate", str(out), "--labels", "cell_type", "--out", str(report),
                     "--graph", "knn", "--no-umap", "--seeds", "0", "--n-pcs", "10"])
    err = capsys.readouterr().err
    assert code == 0 and "working from the stored counts and weights" in err
    assert "enhanced (sccase)" in json.loads((report / "metrics.json").read_text())["results"]
    code = cli.main(["enhance", str(small_file), str(tmp_path / "h.h5ad"), "--k", "3",
                     "--max-iter", "2", "--layer-dtype", "float16", "--quiet"])
    assert code == 0 and ad.read_h5ad(tmp_path / "h.h5ad").layers["sccase"].dtype == np.float16


# 3. label columns that are not cell types ---------------------------------------------------

@pytest.fixture(scope="module")
def labelled_file(small, tmp_path_factory):
    a = small.copy()
    a.layers["sccase"] = a.X.toarray()
    rng = np.random.default_rng(0)
    a.obs["FRIP"] = rng.random(a.n_obs)                        # continuous
    a.obs["TotalReads"] = rng.permutation(a.n_obs) * 7 + 100   # one integer per cell
    a.obs["donor"] = np.repeat(["d1", "d2"], a.n_obs // 2)
    a.obs["many"] = [f"c{i % 40}" for i in range(a.n_obs)]
    p = tmp_path_factory.mktemp("lab") / "lab.h5ad"
    a.write_h5ad(p)
    return p


@pytest.mark.parametrize("column,match", [
    ("FRIP", "continuous values"),
    ("TotalReads", "60 distinct values over 60 labelled cells: not cell types"),
    ("many", "40 distinct values"),
])
def test_evaluate_refuses_columns_that_are_not_cell_types(labelled_file, tmp_path, capsys,
                                                          column, match):
    out = tmp_path / "rep"
    t0 = time.perf_counter()
    code = cli.main(["evaluate", str(labelled_file), "--labels", column, "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and match in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and time.perf_counter() - t0 < 5
    assert not out.exists()


def test_evaluate_max_classes(labelled_file, tmp_path, capsys):
    code = cli.main(["evaluate", str(labelled_file), "--labels", "donor", "--out",
                     str(tmp_path / "r"), "--max-classes", "1", "--quiet"])
    assert code == 2 and "max_classes must be >= 2" in capsys.readouterr().err
    code = cli.main(["evaluate", str(labelled_file), "--labels", "many", "--out",
                     str(tmp_path / "r"), "--max-classes", "30", "--quiet"])
    assert code == 2 and "40 distinct values" in capsys.readouterr().err


# 4. Ctrl-C -----------------------------------------------------------------------------------

def _run_and_interrupt(args, tmp_path, wait_for=None, delay=0.0):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("XLA_FLAGS", None)
    p = subprocess.Popen([sys.executable, "-m", "sccase_jax", *map(str, args)],
                         stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env,
                         cwd=tmp_path)
    seen = []
    if wait_for is not None:
        for line in p.stderr:
            seen.append(line)
            if wait_for in line:
                break
    time.sleep(delay)
    p.send_signal(signal.SIGINT)
    _, rest = p.communicate(timeout=60)
    return p.returncode, "".join(seen) + rest


@pytest.mark.parametrize("stage", ["start-up", "compilation", "iterations"])
def test_ctrl_c_exits_with_130_and_leaves_nothing(small_file, tmp_path, stage):
    out = tmp_path / "o.h5ad"
    args = ["enhance", small_file, out, "--k", "3", "--max-iter", "100000", "--tol", "0"]
    wait = {"start-up": (None, 0.3), "compilation": ("compiling and running", 0.0),
            "iterations": ("iter    2", 0.0)}[stage]
    code, err = _run_and_interrupt(args, tmp_path, *wait)
    assert code == 130, err[-2000:]
    assert "sccase-jax: interrupted" in err and "Traceback" not in err
    assert not out.exists() and not [p for p in os.listdir(tmp_path) if p.endswith(".part")]


def test_ctrl_c_while_io_is_being_imported_still_exits(tmp_path):
    # Ctrl-C while sccase_jax.io is in sys.modules but not yet initialised (its anndata
    # import takes a while): the handler found no discard_temporaries, raised, and, holding
    # its lock, never exited; the run went on.  Seen in CI as a hung start-up interrupt.
    code = ("import os, signal, sys, time, types\n"
            "from sccase_jax.__main__ import exit_on_signal\n"
            "exit_on_signal()\n"
            "sys.modules['sccase_jax.io'] = types.ModuleType('sccase_jax.io')  # half imported\n"
            "os.kill(os.getpid(), signal.SIGINT)\n"
            "time.sleep(30)\n"
            "print('not interrupted')\n")
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       cwd=tmp_path)
    assert r.returncode == 130 and "sccase-jax: interrupted" in r.stderr, (r.returncode, r.stderr)
    assert "not interrupted" not in r.stdout and time.perf_counter() - t0 < 20


# 5. an unwritable output is found before any work --------------------------------------------

@pytest.mark.parametrize("where", ["/proc/sccase_test.h5ad", "/sys/sccase_test.h5ad", "file"])
def test_unwritable_output_refused_before_any_work(small, small_file, tmp_path, capsys, no_fit,
                                                   where):
    if where == "file":
        (tmp_path / "afile").write_text("x")
        where = str(tmp_path / "afile" / "o.h5ad")
    if not os.path.exists(os.path.dirname(where)):
        pytest.skip(f"{os.path.dirname(where)} does not exist on this system")
    with pytest.raises(InputError, match="out_file") as exc:
        sccase_jax.enhance(small, 3, out_file=where, **FAST)
    assert where in str(exc.value) or os.path.dirname(where) in str(exc.value)
    assert ".part" not in str(exc.value)
    t0 = time.perf_counter()
    code = cli.main(["enhance", str(small_file), where, "--k", "3", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and ".part" not in err
    assert os.path.dirname(where) in err and time.perf_counter() - t0 < 5  # no fit


def test_probe_leaves_nothing(tmp_path):
    io.check_out_file(tmp_path / "x.h5ad")
    assert list(tmp_path.iterdir()) == []


# 6. how a fit ended, in words --------------------------------------------------------------

def test_status_messages():
    usable = status_message("max_iter", 30, 4.8e-6, 1e-6, 30)
    assert "iteration budget" in usable and "usable" in usable and "4.8e-06" in usable
    moving = status_message("max_iter", 3, 2e-2, 0.0, 3)
    assert "iteration budget" in moving and "raise max_iter" in moving and "usable" not in moving
    assert "converged after 7" in status_message("converged", 7, 5e-7, 1e-6, 30)
    assert "starting point" in status_message("max_iter", 0, float("inf"), 1e-6, 0)
    assert "non-finite" in status_message("nonfinite", 4, float("nan"), 1e-6, 30)


def test_enhance_records_and_prints_the_message(small, capsys):
    out = sccase_jax.enhance(small, 3, max_iter=3, tol=0.0, progress=True)
    info = out.uns["sccase"]
    assert info["status"] == "max_iter" and "iteration budget (3 iterations" in info["message"]
    assert info["rel_change"] >= 0
    err = capsys.readouterr().err
    assert "iteration budget reached" in err and " max_iter\n" not in err
    res = sccase_jax.fit(preprocess(small.X.T)[0], 3, max_iter=2, tol=0.0, nmf_iter=5)
    assert res.rel_change >= 0 and "iteration budget" in res.message


# 7. the loss figure and the raw baselines' names ----------------------------------------------

def test_loss_figure_has_a_panel_without_the_start(tmp_path):
    from matplotlib import image

    from sccase_jax.evaluation.plotting import plot_loss

    one = image.imread(plot_loss([600.0, 590.0, 589.0], str(tmp_path / "a.png")))
    two = image.imread(plot_loss([600.0, 590.0, 589.0], str(tmp_path / "b.png"),
                                 initial_loss=8e7))
    assert two.shape[1] >= 1.9 * one.shape[1]  # two panels side by side


def test_metrics_name_each_tfidf(labelled_file, tmp_path):
    out = tmp_path / "rep"
    code = cli.main(["evaluate", str(labelled_file), "--labels", "cell_type", "--out", str(out),
                     "--graph", "knn", "--no-umap", "--seeds", "0", "--n-pcs", "10", "--quiet"])
    assert code == 0
    md = (out / "metrics.md").read_text()
    assert "| raw (TF-IDF, Eq. 1) |" in md and "| raw (L2 TF-IDF) |" in md
    code = cli.main(["evaluate", str(labelled_file), "--labels", "cell_type", "--out",
                     str(tmp_path / "l2"), "--tfidf", "l2", "--graph", "knn", "--no-umap",
                     "--seeds", "0", "--n-pcs", "10", "--quiet"])
    res = json.loads((tmp_path / "l2" / "metrics.json").read_text())["results"]
    assert code == 0 and sorted(res) == ["enhanced (sccase)", "raw (L2 TF-IDF)"]


# 8. defaults and warnings for method developers ----------------------------------------------

def test_preprocess_defaults_are_enhances(small, monkeypatch):
    seen = {}
    real_fit = frontend.fit_with

    def record(X, *args, **kwargs):
        seen["X"] = X
        return real_fit(X, *args, **kwargs)

    monkeypatch.setattr(frontend, "fit_with", record)
    sccase_jax.enhance(small, 3, **FAST)
    X, peaks, cells = sccase_jax.preprocess(small.X.T)
    assert (seen["X"] != X).nnz == 0 and seen["X"].shape == X.shape


def test_fit_warns_on_raw_counts_and_on_a_transposed_matrix(small):
    with pytest.warns(UserWarning, match="looks like raw"):
        sccase_jax.fit(small.X.T.tocsr().astype(np.float64), 3, max_iter=1, nmf_iter=5)
    X = preprocess(small.X.T)[0]
    with pytest.warns(UserWarning, match="looks transposed"):
        sccase_jax.fit(X.T.tocsr(), 3, max_iter=1, nmf_iter=5)
    with pytest.warns(UserWarning, match="looks like raw"):
        sccase_jax.sweep(small.X.T.tocsr().astype(np.float64), lams=[1e6], ks=[2], max_iter=1,
                         nmf_iter=5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sccase_jax.fit(X, 3, max_iter=1, nmf_iter=5)  # preprocessed: no warning


def test_register_objective_never_replaces_silently():
    from sccase_jax.objectives import BUILTIN, OBJECTIVES, register_objective

    builtin = OBJECTIVES["sccase"]
    for name in BUILTIN:
        with pytest.raises(ValueError, match="built-in"):
            register_objective(name, lam=1.0)(lambda *a: 0.0)
        with pytest.raises(ValueError, match="built-in"):
            register_objective(name, replace=True, lam=1.0)(lambda *a: 0.0)
    assert OBJECTIVES["sccase"] is builtin
    register_objective("_mine", lam=1.0)(lambda *a: 0.0)
    try:
        with pytest.raises(ValueError, match="already registered"):
            register_objective("_mine", lam=2.0)(lambda *a: 1.0)
        assert dict(OBJECTIVES["_mine"].defaults)["lam"] == 1.0
        register_objective("_mine", replace=True, lam=2.0)(lambda *a: 1.0)
        assert dict(OBJECTIVES["_mine"].defaults)["lam"] == 2.0
    finally:
        del OBJECTIVES["_mine"]
