"""A registered term selected by ``terms=`` (fit, enhance) and ``--term`` (the command line),
on the dense and the knn layout: fitted with the built-in terms by the solver over the terms
(sccase_jax.solver.over_terms), float64; the records and the refusals."""

import anndata as ad
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse as sp

import sccase_jax
from sccase_jax.cli import main as cli_main
from sccase_jax.params import SolverConfig
from sccase_jax.terms import TERMS, Term, register_term

N, M, K = 30, 60, 3
NAME = "test_selectable_l1_z"  # unique in the global registry; removed after the module


@pytest.fixture(scope="module", autouse=True)
def l1_z():
    @register_term(NAME, replace=True)
    class L1Z(Term):
        """``weight sum(Z)``: the L1 norm of Z >= 0 (jax.grad gives its gradient)."""

        weight: float = 0.1

        def value(self, factors, data, layout):
            return self.weight * jnp.sum(factors.Z)

    yield L1Z
    TERMS.pop(NAME, None)


def counts(n=N, m=M, seed=0):
    rng = np.random.default_rng(seed)
    types = rng.integers(0, 3, n)
    prob = rng.random((3, m)) * 0.4
    return sp.csr_matrix((rng.random((n, m)) < prob[types]).astype(np.float64))


@pytest.fixture(scope="module")
def X():
    return sccase_jax.preprocess(counts().T.tocsr())[0]


# One Z rule for both solvers (each has every rule; "gradient" keeps the comparison to the
# paper's step).  x_tol = tol = 0: every
# fit runs all iterations, so the histories are compared entry by entry.
COMMON = dict(dtype="float64", lam=50.0, tol=0.0, x_tol=0.0, max_iter=4, seed=3,
              config=SolverConfig(z_step="gradient"))
LAYOUTS = {"dense": dict(z_support="dense"), "knn": dict(z_support="knn", n_neighbors=8)}


def _z_sum(Z):
    return float(Z.sum()) if sp.issparse(Z) else float(np.sum(Z))


# The products through the sparse X (gram="sparse"): the dense layout forms G for the terms.
CASES = dict(LAYOUTS, dense_sparse_gram=dict(z_support="dense", gram="sparse"))


@pytest.mark.parametrize("layout", sorted(CASES))
def test_a_term_of_weight_zero_is_the_plain_fit(X, layout):
    # Same start (NMF, Jaccard Z0, mask R from the seed) and, with weight 0, the same
    # objective: the fits differ only in how F and its steps are summed (dense: the Gram-form
    # solver's closed forms against the terms' gradients and jax.jvp; knn: both over the
    # terms, the extra term's zero contributions added), rounding of order 1e-16 relative
    # per operation, carried through 4 iterations of exact line searches.
    # tests/test_over_terms.py compares the solvers at the same tolerances (1e-9 on F, 1e-7
    # on the factors).
    plain = sccase_jax.fit(X, K, **COMMON, **CASES[layout])
    res = sccase_jax.fit(X, K, terms={NAME: 0.0}, **COMMON, **CASES[layout])
    assert res.params["gram"] == plain.params["gram"]
    assert res.n_iter == plain.n_iter == 4
    assert type(res.Z) is type(plain.Z) and res.Z.shape == plain.Z.shape == (N, N)
    assert res.params["terms"] == {NAME: 0.0} and "terms" not in plain.params
    # With gram="sparse" the plain fit multiplies through X (X^T (X S), column blocks)
    # where the layout uses G = X^T X formed on the host: another summation order in every
    # product, and line searches that amplify it: 100x looser.
    loose = 100.0 if CASES[layout].get("gram") == "sparse" else 1.0
    np.testing.assert_allclose(res.loss, plain.loss, rtol=1e-9 * loose)
    np.testing.assert_allclose(res.initial_loss, plain.initial_loss, rtol=1e-12 * loose)
    Zr, Zp = (sp.csc_matrix(z).toarray() if sp.issparse(z) else z for z in (res.Z, plain.Z))
    for a, b in ((res.W, plain.W), (res.H, plain.H), (Zr, Zp)):
        np.testing.assert_allclose(a, b, rtol=1e-7 * loose, atol=1e-10 * loose)


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_an_l1_term_makes_z_smaller_and_f_decreases(X, layout):
    plain = sccase_jax.fit(X, K, terms={NAME: 0.0}, **COMMON, **LAYOUTS[layout])
    res = sccase_jax.fit(X, K, terms=[f"{NAME}:2.0"], **COMMON, **LAYOUTS[layout])
    assert res.params["terms"] == {NAME: 2.0}
    assert _z_sum(res.Z) < 0.8 * _z_sum(plain.Z)
    hist = np.concatenate([[res.initial_loss], res.loss])
    assert np.all(np.diff(hist) <= 1e-12 * np.abs(hist[:-1])) and hist[-1] < hist[0]
    # the history is F with the term: larger than the plain one at the same start
    assert res.initial_loss > plain.initial_loss


def _adata():
    a = ad.AnnData(counts(seed=1).astype(np.float32))
    a.var_names = [f"chr1:{100 * i}-{100 * i + 50}" for i in range(a.n_vars)]
    return a


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_enhance_fits_and_records_the_terms(layout):
    a = _adata()
    opts = dict(max_iter=2, **LAYOUTS[layout])
    out = sccase_jax.enhance(a, K, terms={NAME: 0.5}, **opts)
    info = out.uns["sccase"]
    assert dict(info["params"]["terms"]) == {NAME: 0.5}
    assert info["params"]["gram"] == ("support" if layout == "knn" else "dense")
    assert np.all(np.isfinite(out.layers["sccase"]))
    assert out.obsp["sccase_Z"].shape == (N, N)


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_command_line_term(tmp_path, layout):
    src, dst = tmp_path / "in.h5ad", tmp_path / "out.h5ad"
    _adata().write_h5ad(src)
    flags = ["--z-support", layout] + (["--n-neighbors", "8"] if layout == "knn" else [])
    rc = cli_main(["enhance", str(src), str(dst), "--k", str(K), "--max-iter", "2", "--quiet",
                   "--term", f"{NAME}:0.25", *flags])
    assert rc == 0
    params = ad.read_h5ad(dst).uns["sccase"]["params"]
    assert dict(params["terms"]) == {NAME: 0.25}
    assert params["gram"] == ("support" if layout == "knn" else "dense")


def test_command_line_term_module(tmp_path, monkeypatch, capsys):
    # A term registered by a module the command line imports (--term-module).
    (tmp_path / "my_terms_for_cli.py").write_text(
        "import jax.numpy as jnp\n"
        "from sccase_jax.terms import Term, register_term\n\n\n"
        "@register_term('test_cli_module_term', replace=True)\n"
        "class Sum(Term):\n"
        "    weight: float = 0.1\n\n"
        "    def value(self, factors, data, layout):\n"
        "        return self.weight * jnp.sum(factors.Z)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    src, dst = tmp_path / "in.h5ad", tmp_path / "out.h5ad"
    _adata().write_h5ad(src)
    args = ["enhance", str(src), str(dst), "--k", str(K), "--max-iter", "1", "--quiet",
            "--z-support", "knn", "--n-neighbors", "8", "--term", "test_cli_module_term:1"]
    try:
        assert cli_main(args) == 2  # not registered without the module
        assert "unknown term 'test_cli_module_term'" in capsys.readouterr().err
        assert cli_main([*args, "--term-module", "my_terms_for_cli"]) == 0
        assert dict(ad.read_h5ad(dst).uns["sccase"]["params"]["terms"]) == {"test_cli_module_term": 1.0}
        assert cli_main([*args, "--term-module", "no_such_module_here"]) == 2
        assert "--term-module no_such_module_here" in capsys.readouterr().err
    finally:
        TERMS.pop("test_cli_module_term", None)


@pytest.mark.parametrize(("terms", "match"), [
    ({"no_such_term": 1.0}, rf"unknown term 'no_such_term'; registered .*{NAME}"),
    ({"similarity": 1.0}, r"'similarity' is a built-in term, set by its own option \(lam\)"),
    ({"ridge_w": 1.0}, r"built-in term.*gamma1"),
    ({NAME: -1.0}, r"weight of term .* must be a finite number >= 0, got -1.0"),
    ({NAME: float("nan")}, r"weight of term .* must be a finite number >= 0"),
    ({NAME: float("inf")}, r"weight of term .* must be a finite number >= 0"),
    ({NAME: "a lot"}, r"weight of term .* must be a finite number >= 0"),
    ([f"{NAME}:1", f"{NAME}:2"], "given twice"),
    ([NAME], r"a term is NAME:WEIGHT"),
    (3, r"a mapping \{name: weight\}"),
])
def test_bad_terms_are_refused_before_any_work(terms, match):
    with pytest.raises(sccase_jax.InputError, match=match):
        sccase_jax.fit(np.ones((3, 2)), 1, terms=terms)  # refused before X is looked at
    with pytest.raises(sccase_jax.InputError, match=match):
        sccase_jax.enhance(_adata(), K, terms=terms)


def test_terms_with_the_release_preset(X):
    # The release's printed W step, unguarded Z and W moves and rescaled H over the terms:
    # with weight 0 the plain release fit of the Gram-form solver.
    kw = dict(dtype="float64", preset="release", seed=3)
    plain = sccase_jax.fit(X, K, **kw)
    res = sccase_jax.fit(X, K, terms={NAME: 0.0}, **kw)
    assert res.params["config"]["w_step"] == "printed" and res.n_iter == plain.n_iter == 3
    np.testing.assert_allclose(res.loss, plain.loss, rtol=1e-9)
    for a, b in ((res.W, plain.W), (res.H, plain.H), (res.Z, plain.Z)):
        np.testing.assert_allclose(a, b, rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_sweep_with_a_term_equals_separate_fits(X, layout):
    kw = {k: v for k, v in COMMON.items() if k != "lam"}
    lams, ks = [10.0, 50.0, 200.0], [2, 3]
    res = sccase_jax.sweep(X, lams=lams, ks=ks, batch_size=2, terms={NAME: 0.5}, **kw,
                           **LAYOUTS[layout])
    for i, lam in enumerate(lams):
        for j, k in enumerate(ks):
            one = sccase_jax.fit(X, k, lam=lam, terms={NAME: 0.5}, **kw, **LAYOUTS[layout])
            mem = res.member(i, j)
            assert mem.n_iter == one.n_iter
            np.testing.assert_allclose(mem.loss, one.loss, rtol=1e-8)
            np.testing.assert_allclose(mem.H, one.H, rtol=1e-7, atol=1e-12)
            Zm, Zo = (z.toarray() if sp.issparse(z) else z for z in (mem.Z, one.Z))
            np.testing.assert_allclose(Zm, Zo, rtol=1e-7, atol=1e-12)


def test_terms_refused_where_not_fitted(X):
    with pytest.raises(sccase_jax.InputError, match="fit_variant"):
        sccase_jax.fit_variant(X, K, terms={NAME: 1.0})


def test_command_line_bad_term_is_one_line(tmp_path, capsys):
    src = tmp_path / "in.h5ad"
    _adata().write_h5ad(src)
    for bad, match in ((f"{NAME}:-2", "must be a finite number >= 0"),
                       ("l1z", "a term is NAME:WEIGHT"), ("similarity:3", "built-in term")):
        rc = cli_main(["enhance", str(src), str(tmp_path / "o.h5ad"), "--quiet", "--term", bad])
        err = capsys.readouterr().err
        assert rc == 2 and match in err and err.count("\n") == 1, err
