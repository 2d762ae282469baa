"""The sccase-jax command line, run as a subprocess."""

import os
import subprocess
import sys

import anndata as ad
import numpy as np
import pytest

from sccase_jax.datasets import granja_bm600


def cli(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "sccase_jax.cli", *map(str, args)],
        capture_output=True, text=True, cwd=cwd, timeout=600,
    )


@pytest.fixture(scope="module")
def small_file(tmp_path_factory):
    a = granja_bm600()
    idx = np.concatenate([np.flatnonzero(a.obs["cell_type"] == t)[:15] for t in a.obs["cell_type"].cat.categories])
    p = tmp_path_factory.mktemp("in") / "small.h5ad"
    a[idx].copy().write_h5ad(p)
    return p


def test_enhance_writes_anndata(small_file, tmp_path):
    out = tmp_path / "out.h5ad"
    before = small_file.read_bytes()
    r = cli("enhance", small_file, out, "--k", 3, "--max-iter", 2, "--seed", 3)
    assert r.returncode == 0, r.stderr
    assert "iter" in r.stderr  # progress lines
    assert "output: neighbour support" in r.stderr  # the support check, in words
    res = ad.read_h5ad(out)
    assert "sccase" in res.layers and "X_sccase" in res.obsm and "sccase_Z" in res.obsp
    assert res.uns["sccase"]["params"]["seed"] == 3
    assert small_file.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["out.h5ad"]


def test_quiet_prints_nothing(small_file, tmp_path):
    r = cli("enhance", small_file, tmp_path / "o.h5ad", "--k", 2, "--max-iter", 1, "--quiet")
    assert r.returncode == 0, r.stderr
    assert r.stdout == ""
    # no progress; warnings (here the support check on random counts) still get one line each
    assert all(line.startswith("sccase-jax: warning:") for line in r.stderr.splitlines())


@pytest.mark.parametrize(
    ("make_input", "extra", "match"),
    [
        (lambda d: d / "missing.h5ad", [], "input file not found"),
        (lambda d: (d / "x.txt").write_text("hi") and d / "x.txt", [], "must be an .h5ad"),
        (lambda d: (d / "bad.h5ad").write_text("not hdf5") and d / "bad.h5ad", [], "cannot read"),
        (None, ["--k", "0"], "n_components must be >= 1"),
        (None, ["--k", "1000"], "exceeds"),
        (None, ["--layer", "counts"], "layer 'counts' not found"),
        (None, ["--neighbors", "0"], "neighbors must be a positive integer"),
    ],
)
def test_bad_input_one_line_error(small_file, tmp_path, make_input, extra, match):
    src = make_input(tmp_path) if make_input else small_file
    out = tmp_path / "out.h5ad"
    r = cli("enhance", src, out, "--max-iter", 1, *extra)
    assert r.returncode == 2
    assert match in r.stderr
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert lines[-1].startswith("sccase-jax: error: ")
    assert sum(line.startswith("sccase-jax: error") for line in lines) == 1
    assert not out.exists()


def test_bad_values_in_file(tmp_path):
    a = granja_bm600()[:40].copy()
    a.X.data[0] = -3
    p = tmp_path / "neg.h5ad"
    a.write_h5ad(p)
    r = cli("enhance", p, tmp_path / "o.h5ad", "--k", 2)
    assert r.returncode == 2 and "negative" in r.stderr and "Traceback" not in r.stderr


def test_unwritable_output_leaves_nothing(small_file, tmp_path):
    r = cli("enhance", small_file, tmp_path / "no" / "such" / "dir" / "o.h5ad", "--k", 2)
    assert r.returncode == 2 and "output directory does not exist" in r.stderr
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if os.access(ro, os.W_OK):  # running as root: permissions do not bind
            pytest.skip("cannot make an unwritable directory as this user")
        r = cli("enhance", small_file, ro / "o.h5ad", "--k", 2)
        assert r.returncode == 2 and "not writable" in r.stderr
        assert list(ro.iterdir()) == []
    finally:
        ro.chmod(0o700)


def test_output_equal_to_input_is_refused(small_file):
    r = cli("enhance", small_file, small_file, "--k", 2)
    assert r.returncode == 2 and "never overwritten" in r.stderr


def test_write_failure_leaves_no_partial_file(small_file, tmp_path, monkeypatch):
    from sccase_jax import cli as cli_mod

    class Boom:
        def write_h5ad(self, path):
            with open(path, "wb") as fh:
                fh.write(b"partial")
            raise OSError("disk full")

    with pytest.raises(cli_mod.CLIError, match="disk full"):
        cli_mod.write_h5ad_atomic(Boom(), str(tmp_path / "o.h5ad"))
    assert list(tmp_path.iterdir()) == []


def test_demo_runs_and_enhancement_helps():
    r = cli("demo", "--quiet")
    assert r.returncode == 0, r.stderr
    rows = {line.split()[0]: line.split()[-2:] for line in r.stdout.splitlines()
            if line.strip().startswith(("raw", "enhanced"))}
    raw_ari, raw_ami = map(float, rows["raw"])
    enh_ari, enh_ami = map(float, rows["enhanced"])
    assert enh_ari > raw_ari and enh_ami > raw_ami
