"""enhance() and fit(): bad arguments are one clear error, raised before any work.

Tiny synthetic data (30 cells x 60 peaks, k = 2, one iteration); the fit is compiled once
for the module (``baseline``), and checks that need no fit stub it out.
"""

import dataclasses

import anndata as ad
import jax
import numpy as np
import pytest
import scipy.sparse as sp

import sccase_jax
from sccase_jax import io, output, validate
from sccase_jax.estimate import estimate_n_components, n_distinct_rows
from sccase_jax.implicit import EnhancedMatrix
from sccase_jax.output import enhanced_matrix
from sccase_jax.params import SolverConfig, release_config
from sccase_jax.preprocessing import check_preprocessed
from sccase_jax.tl import frontend, get_counts
from sccase_jax.validate import InputError

FAST = dict(max_iter=1, nmf_iter=5)


def _counts(cells=30, peaks=60, seed=0):
    rng = np.random.default_rng(seed)
    C = (rng.random((cells, peaks)) < 0.25) * rng.integers(1, 3, (cells, peaks))
    C[:, 0] = 0
    C[np.arange(cells), np.arange(cells) % (peaks - 1) + 1] += 1  # no empty cell
    return C.astype(np.float32)


@pytest.fixture(scope="module")
def adata():
    return ad.AnnData(X=sp.csr_matrix(_counts()))


@pytest.fixture(scope="module")
def baseline(adata):
    return sccase_jax.enhance(adata, 2, **FAST)


@pytest.fixture
def no_work(monkeypatch):
    """Fail if enhance gets as far as preprocessing (bad arguments must be caught before)."""

    def boom(*args, **kwargs):
        raise AssertionError("enhance reached preprocessing with a bad argument")

    monkeypatch.setattr(frontend, "preprocess", boom)


class _Stop(Exception):
    pass


@pytest.fixture
def fit_calls(monkeypatch):
    """Record the arguments enhance passes to fit, then stop (no compilation)."""
    calls = []

    def record(X, n_components, opts, **kwargs):
        fields = {f.name: getattr(opts, f.name) for f in dataclasses.fields(opts)}
        calls.append(dict(fields, **kwargs, X=X, n_components=n_components))
        raise _Stop

    monkeypatch.setattr(frontend, "fit_with", record)
    return calls


def _small_X():
    rng = np.random.default_rng(1)
    return sp.csc_matrix(rng.random((20, 10)) * (rng.random((20, 10)) < 0.6))


# 1. block, and no valid-looking file left by a failed write ------------------------------

@pytest.mark.parametrize("block", [0, -1, 2.0, 1.5, "8", None, True])
def test_bad_block_refused_before_the_fit_and_no_file(adata, tmp_path, no_work, block):
    path = tmp_path / "b.h5ad"
    with pytest.raises(InputError, match="block must be"):
        sccase_jax.enhance(adata, 2, out_file=str(path), block=block, **FAST)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("block", [0, -1])
def test_block_functions_refuse_non_positive_blocks(tmp_path, block):
    X = sp.random(6, 4, density=0.5, random_state=0, format="csr")
    Z = np.eye(4)
    with pytest.raises(InputError, match="block"):
        enhanced_matrix(X, Z, block=block)  # -1 used to return uninitialised memory
    with pytest.raises(InputError, match="block"):
        list(output.enhanced_blocks(X, Z, block=block))
    with pytest.raises(InputError, match="block"):
        io.write_enhanced_h5ad(ad.AnnData(X=sp.csr_matrix(X.T)), str(tmp_path / "w.h5ad"), X, Z,
                               block=block)
    assert list(tmp_path.iterdir()) == []


def test_failed_write_leaves_no_file_and_keeps_an_old_one(adata, baseline, tmp_path, monkeypatch):
    def broken(self, block, *args, **kwargs):
        yield 0, np.zeros((min(block, self.shape[0]), self.shape[1]), np.float32)
        raise RuntimeError("disk full")

    monkeypatch.setattr(EnhancedMatrix, "blocks", broken)
    path = tmp_path / "out.h5ad"
    with pytest.raises(RuntimeError, match="disk full"):
        sccase_jax.enhance(adata, 2, out_file=str(path), block=4, **FAST)
    assert list(tmp_path.iterdir()) == []
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="disk full"):
        sccase_jax.enhance(adata, 2, out_file=str(path), block=4, overwrite=True, **FAST)
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.h5ad"]


def test_out_file_written_in_blocks_equals_in_memory(adata, baseline, tmp_path):
    path = tmp_path / "ok.h5ad"  # a pathlib.Path is accepted
    lean = sccase_jax.enhance(adata, 2, out_file=path, block=7, **FAST)
    assert "sccase" not in lean.layers
    back = ad.read_h5ad(path)
    np.testing.assert_allclose(back.layers["sccase"], baseline.layers["sccase"], rtol=1e-5, atol=1e-7)
    assert [p.name for p in tmp_path.iterdir()] == ["ok.h5ad"]


# 2. out_file checked before the fit -------------------------------------------------------

def test_bad_out_file_refused_before_the_fit(adata, tmp_path, no_work):
    (tmp_path / "afile").write_text("x")
    (tmp_path / "dir.h5ad").mkdir()
    cases = [
        ("/missing/dir/x.h5ad", "does not exist"),
        (str(tmp_path / "afile" / "x.h5ad"), "not a directory"),
        (str(tmp_path / "x.csv"), r"\.h5ad"),
        (str(tmp_path / "dir.h5ad"), "is a directory"),
        (3, "must be a path"),
    ]
    for out_file, match in cases:
        with pytest.raises(InputError, match=match):
            sccase_jax.enhance(adata, 2, out_file=out_file, **FAST)


def test_check_out_file_accepts_h5ad_and_part_names(tmp_path):
    for name in ("a.h5ad", "a.h5ad.part"):
        assert io.check_out_file(tmp_path / name) == str(tmp_path / name)


# 3. numbers: max_iter, tol, lam, gamma1, gamma2, keep_prob, alpha ---------------------------

@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_iter": -1}, "max_iter must be >= 0"),
        ({"max_iter": 1.5}, "max_iter must be an integer"),
        ({"max_iter": True}, "max_iter must be an integer"),
        ({"max_iter": "3"}, "max_iter must be an integer"),
        ({"tol": "a"}, "tol must be a finite number"),
        ({"tol": float("nan")}, "tol must be a finite number"),
        ({"tol": -1e-3}, "tol must be a finite number >= 0"),
        ({"lam": "1e6"}, "lam must be a finite number"),
        ({"gamma1": None}, "gamma1 must be a finite number"),
        ({"gamma2": "1"}, "gamma2 must be a finite number"),
        ({"keep_prob": None}, "keep_prob must be in"),
        ({"keep_prob": "0.9"}, "keep_prob must be in"),
        ({"min_cells_frac": "0.1"}, "min_cells_frac must be"),
        ({"n_components": 2.0}, "n_components must be an integer"),
        ({"n_components": 0}, "n_components must be >= 1"),
    ],
)
def test_enhance_bad_numbers_refused_before_any_work(adata, no_work, kwargs, match):
    with pytest.raises(InputError, match=match):
        sccase_jax.enhance(adata, **{"n_components": 2, "nmf_iter": 5, **kwargs})


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_iter": None}, "max_iter must be an integer"),
        ({"max_iter": 2.5}, "max_iter must be an integer"),
        ({"max_iter": False}, "max_iter must be an integer"),
        ({"tol": None}, "tol must be a finite number"),
        ({"tol": "1e-6"}, "tol must be a finite number"),
        ({"lam": None}, "lam must be a finite number"),
        ({"gamma1": "1"}, "gamma1 must be a finite number"),
        ({"gamma2": float("inf")}, "gamma2 must be a finite number"),
        ({"alpha": None}, "alpha must be a finite number"),
        ({"keep_prob": None}, "keep_prob must be in"),
        ({"nmf_iter": None}, "nmf_iter must be an integer"),
        ({"k_ref": 0.5}, "k_ref must be an integer"),
    ],
)
def test_fit_bad_numbers_are_input_errors(kwargs, match):
    with pytest.raises(InputError, match=match):
        sccase_jax.fit(_small_X(), 2, **kwargs)


def test_integral_float_max_iter_is_accepted(adata, baseline):
    out = sccase_jax.enhance(adata, 2, max_iter=1.0, nmf_iter=5)
    assert out.uns["sccase"]["n_iter"] == 1
    assert isinstance(out.uns["sccase"]["params"]["max_iter"], int)


def test_max_iter_zero_returns_the_start(adata):
    out = sccase_jax.enhance(adata, 2, max_iter=0, nmf_iter=5)
    info = out.uns["sccase"]
    assert info["n_iter"] == 0 and len(info["loss"]) == 0
    assert np.all(np.isfinite(out.layers["sccase"]))


# 4. estimating k on small or degenerate data -------------------------------------------------

def test_estimate_refuses_too_few_cells_or_peaks_or_no_variation():
    rng = np.random.default_rng(0)
    with pytest.raises(InputError, match=r"too few cells \(2.*pass n_components"):
        estimate_n_components(sp.csr_matrix(rng.random((50, 2))))
    with pytest.raises(InputError, match=r"too few peaks \(1.*pass n_components"):
        estimate_n_components(sp.csr_matrix(rng.random((1, 30))))
    same = np.tile(rng.random((50, 1)), (1, 30))
    for X in (same, sp.csr_matrix(same), np.zeros((50, 30)), sp.csr_matrix((50, 30))):
        with pytest.raises(InputError, match="no variation.*pass n_components"):
            estimate_n_components(X)


def test_estimate_clips_the_range_on_small_data():
    rng = np.random.default_rng(0)
    a, b = rng.random(40), rng.random(40)
    X = np.column_stack([a] * 10 + [b] * 10)  # 20 cells, two distinct profiles
    est = estimate_n_components(sp.csr_matrix(X), details=True)
    assert est.k == 2 and list(est.ks) == [2]
    for n in (3, 4, 6):
        k = estimate_n_components(sp.csr_matrix(rng.random((40, n))))
        assert 2 <= k <= n - 1
    with pytest.raises(InputError, match="k_max"):
        estimate_n_components(sp.csr_matrix(rng.random((40, 10))), k_max=1)


def test_n_distinct_rows():
    M = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    assert n_distinct_rows(M) == 2
    S = sp.csr_matrix(M)
    S.data[0] = 0.0  # an explicit zero: same row as an empty one
    assert n_distinct_rows(sp.vstack([S, sp.csr_matrix((1, 2))]).tocsr()) == 3


def test_enhance_estimating_k_on_two_cells_is_one_clear_error(adata):
    with pytest.raises(InputError, match="pass n_components"):
        sccase_jax.enhance(adata[:2].copy(), **FAST)


# 5. all-zero TF-IDF -------------------------------------------------------------------------

def test_all_zero_tfidf_is_refused():
    one = ad.AnnData(X=sp.csr_matrix(_counts()[:1]))
    with pytest.raises(InputError, match="all zero"):
        sccase_jax.enhance(one, 1, **FAST)
    same = ad.AnnData(X=sp.csr_matrix(np.tile(_counts()[:1], (30, 1))))
    with pytest.raises(InputError, match="all zero"):
        sccase_jax.enhance(same, **FAST)
    with pytest.raises(InputError, match="all zero"):
        check_preprocessed(sp.csr_matrix((5, 3)))


def test_cells_with_all_zero_tfidf_warn(fit_calls):
    C = _counts()
    C[:, 0] = 1  # peak 0 open in every cell: idf 0
    C[:2] = 0
    C[:2, 0] = 1  # cells 0 and 1 open only peak 0
    a = ad.AnnData(X=sp.csr_matrix(C))
    with pytest.warns(UserWarning, match="2 of 30 cells have an all-zero TF-IDF profile"):
        with pytest.raises(_Stop):
            sccase_jax.enhance(a, 2, **FAST)
    assert check_preprocessed(fit_calls[0]["X"]) == 2


# 6. seeds -----------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", [1.5, 1.0, None, "1", True, np.float64(2.0)])
def test_non_integer_seeds_refused(adata, no_work, seed):
    with pytest.raises(InputError, match="seed must be an integer"):
        sccase_jax.enhance(adata, 2, seed=seed, **FAST)
    with pytest.raises(InputError, match="seed must be an integer"):
        sccase_jax.fit(_small_X(), 2, seed=seed)


def test_integer_seeds_accepted(adata, fit_calls):
    for seed in (3, np.int64(3), np.int32(3), np.uint8(3)):
        with pytest.raises(_Stop):
            sccase_jax.enhance(adata, 2, seed=seed, **FAST)
    assert [c["seed"] for c in fit_calls] == [3] * 4
    assert all(type(c["seed"]) is int for c in fit_calls)
    with pytest.raises(InputError, match="seed must be an integer in"):
        sccase_jax.enhance(adata, 2, seed=-1, **FAST)  # numpy and scikit-learn need >= 0


# 7. dtype -----------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float16, np.int32, "int8", "nope", np.complex64])
def test_bad_dtype_refused(adata, no_work, dtype):
    with pytest.raises(InputError, match="dtype must be float32 or float64"):
        sccase_jax.enhance(adata, 2, dtype=dtype, **FAST)
    with pytest.raises(InputError, match="dtype must be float32 or float64"):
        sccase_jax.fit(_small_X(), 2, dtype=dtype)


def test_float64_without_x64_warns_and_uses_float32(adata, fit_calls):
    assert validate.check_dtype("dtype", "float32") is jax.numpy.float32
    assert validate.check_dtype("dtype", np.float64) is jax.numpy.float64  # x64 is on in the tests
    with jax.enable_x64(False):
        with pytest.warns(UserWarning, match="jax_enable_x64"):
            assert validate.check_dtype("dtype", np.float64) is jax.numpy.float32
        with pytest.warns(UserWarning, match="jax_enable_x64"):
            with pytest.raises(_Stop):
                sccase_jax.enhance(adata, 2, dtype=np.float64, **FAST)
    assert fit_calls[0]["dtype"] is jax.numpy.float32


# 8. config ----------------------------------------------------------------------------------

def test_config_must_be_a_solver_config(adata, no_work):
    for config in ({"max_iter": 3}, {}, "release", [3]):
        with pytest.raises(InputError, match="config must be a SolverConfig"):
            sccase_jax.enhance(adata, 2, config=config, **FAST)
        with pytest.raises(InputError, match="config must be a SolverConfig"):
            sccase_jax.fit(_small_X(), 2, config=config)
        with pytest.raises(InputError, match="config must be a SolverConfig"):
            sccase_jax.enhance(adata, 2, config=config, preset="release")


# 9. keyword typos ---------------------------------------------------------------------------

def test_unknown_keyword_is_a_type_error_before_any_work(adata, no_work):
    with pytest.raises(TypeError, match=r"enhance\(\).*'n_component'.*did you mean 'n_components'"):
        sccase_jax.enhance(adata, n_component=5)
    with pytest.raises(TypeError, match=r"enhance\(\).*'x_fromat'.*did you mean 'x_format'"):
        sccase_jax.enhance(adata, 2, x_fromat="dense")
    with pytest.raises(TypeError, match=r"enhance\(\).*'zzzz'$"):
        sccase_jax.enhance(adata, 2, zzzz=1)
    with pytest.raises(TypeError, match=r"enhance\(\).*'X'"):
        sccase_jax.enhance(adata, 2, X=np.ones((3, 3)))


def test_fit_options_still_pass(adata, fit_calls):
    with pytest.raises(_Stop):
        sccase_jax.enhance(adata, 2, max_iter=1, nmf_iter=5, x_format="dense", gram="dense",
                           jaccard_normalize="row")
    c = fit_calls[0]
    assert (c["nmf_iter"], c["x_format"], c["gram"], c["jaccard_normalize"]) == (5, "dense", "dense", "row")


# 10. preset vs explicit max_iter / tol --------------------------------------------------------

def test_explicit_max_iter_and_tol_win_over_the_preset(adata, fit_calls):
    cases = [
        (dict(preset="release"), (3, 0.0)),
        (dict(preset="release", max_iter=30), (30, 0.0)),
        (dict(preset="release", tol=1e-6), (3, 1e-6)),
        (dict(preset="release", max_iter=30, tol=1e-6), (30, 1e-6)),
        (dict(preset="release", config=release_config(max_iter=5)), (5, 0.0)),
        (dict(), (30, 1e-6)),
        (dict(max_iter=7, tol=0.5), (7, 0.5)),
        (dict(config=SolverConfig(max_iter=4, tol=1e-3)), (4, 1e-3)),
        (dict(config=SolverConfig(max_iter=4, tol=1e-3), max_iter=30), (30, 1e-3)),
    ]
    for kwargs, want in cases:
        with pytest.raises(_Stop):
            sccase_jax.enhance(adata, 2, **kwargs)
        got = fit_calls[-1]
        assert (got["max_iter"], got["tol"]) == want, kwargs


# 11. backed AnnData ---------------------------------------------------------------------------

def test_backed_anndata_is_read_into_memory(adata, baseline, tmp_path):
    path = tmp_path / "in.h5ad"
    adata.write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    try:
        out = sccase_jax.enhance(backed, 2, **FAST)
        assert backed.isbacked and "sccase" not in backed.layers
        np.testing.assert_allclose(out.layers["sccase"], baseline.layers["sccase"], rtol=1e-6)
    finally:
        backed.file.close()


@pytest.mark.parametrize("sparse", [True, False])
def test_get_counts_reads_backed_x(tmp_path, sparse):
    C = _counts()
    path = tmp_path / "in.h5ad"
    ad.AnnData(X=sp.csr_matrix(C) if sparse else C).write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    try:
        np.testing.assert_array_equal(get_counts(backed).toarray(), C.T)
    finally:
        backed.file.close()


# 12. key_added --------------------------------------------------------------------------------

@pytest.mark.parametrize("key", [None, "", 3])
def test_key_added_must_be_a_non_empty_string(adata, no_work, key):
    with pytest.raises(InputError, match="key_added must be a non-empty string"):
        sccase_jax.enhance(adata, 2, key_added=key, **FAST)


# 13. scale_output, min_peak_match, jaccard_normalize -------------------------------------------

@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"scale_output": "no"}, "scale_output must be True, False or None"),
        ({"scale_output": 1}, "scale_output must be True, False or None"),
        ({"min_peak_match": 5}, "min_peak_match must be"),
        ({"warn_peak_match": -0.1}, "warn_peak_match must be"),
        ({"jaccard_normalize": "cols"}, "jaccard_normalize must be"),
        ({"k_ref": "2"}, "k_ref must be an integer"),
    ],
)
def test_minor_arguments_checked(adata, no_work, kwargs, match):
    with pytest.raises(InputError, match=match):
        sccase_jax.enhance(adata, 2, **FAST, **kwargs)


def test_fit_jaccard_normalize_is_an_input_error():
    with pytest.raises(InputError, match="jaccard_normalize must be"):
        sccase_jax.fit(_small_X(), 2, jaccard_normalize="cols")


def test_scale_output_numpy_bool_accepted(adata, fit_calls):
    with pytest.raises(_Stop):
        sccase_jax.enhance(adata, 2, scale_output=np.bool_(True), **FAST)
    assert fit_calls[0]["n_components"] == 2
