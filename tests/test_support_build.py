"""Supports, local Grams, the start and the knn path of fit / enhance (no n x n arrays)."""

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

import sccase_jax
from sccase_jax import start
from sccase_jax.output import sparse_weights
from sccase_jax.start import jaccard_similarity
from sccase_jax.support import build


def counts(n=60, m=80, seed=0):
    rng = np.random.default_rng(seed)
    types = rng.integers(0, 3, n)
    prob = rng.random((3, m)) * 0.4
    return sp.csr_matrix((rng.random((n, m)) < prob[types]).astype(np.float32)), types


def tfidf_x(C):
    X, _, _ = sccase_jax.preprocess(C.T.tocsr())
    return X


def check_support(idx, n, d):
    assert idx.shape == (n, d)
    assert np.all(idx[:, 0] == np.arange(n))
    assert all(len(set(row)) == d for row in idx)


def test_embedding_support_is_the_knn_of_the_embedding():
    rng = np.random.default_rng(1)
    H = rng.random((4, 50))
    for cosine in (False, True):
        idx = build.embedding_support(H, 7, block=16, cosine=cosine)
        check_support(idx, 50, 7)
        Hn = H / np.linalg.norm(H, axis=0) if cosine else H
        C = Hn.T @ Hn
        np.fill_diagonal(C, np.inf)
        for j in range(50):
            np.testing.assert_allclose(np.sort(C[idx[j], j])[::-1], np.sort(C[:, j])[::-1][:7])


@pytest.mark.parametrize("method,common", [("slabs", False), ("cells", False), ("cells", True),
                                           ("gram", False)])
def test_jaccard_support_local_grams_and_start_match_the_dense_ones(method, common, monkeypatch):
    # common: every peak through the dense gathered products; else the split of crossprod
    C, _ = counts()
    X = tfidf_x(C)
    n = X.shape[1]
    idx = build.jaccard_support(X, 9, block=17)
    check_support(idx, n, 9)
    J = jaccard_similarity(X, None)
    Jd = J.copy()
    np.fill_diagonal(Jd, np.inf)
    for j in range(n):
        np.testing.assert_allclose(np.sort(Jd[idx[j], j]), np.sort(Jd[:, j])[-9:])
    if common:
        monkeypatch.setattr(start, "DENSE_SPEEDUP", 1e12)
    if method == "gram":  # the blocks read from X^T X formed once (in 3 slabs)
        monkeypatch.setattr(build, "SLAB_FLOATS", 25 * n)
        L, Js = build.local_grams(X, idx, chunk=13, dtype=np.float64,
                                  gram=build.host_gram(X, np.float64))
    else:
        L, Js = build.local_grams(X, idx, chunk=13, dtype=np.float64, method=method)
    G = (X.T @ X).toarray()
    for j in range(n):
        np.testing.assert_allclose(L[j], G[np.ix_(idx[j], idx[j])], rtol=1e-12, atol=1e-14)
    cols = np.broadcast_to(np.arange(n)[:, None], idx.shape)
    np.testing.assert_allclose(Js, J[idx, cols], rtol=1e-12)
    V = build.normalise_start(Js, idx, "column")
    np.testing.assert_allclose(V.sum(axis=1), 1.0)


def test_host_gram_is_x_transpose_x_and_kept_where_it_fits(monkeypatch):
    C, _ = counts(n=70, m=90, seed=3)
    X = tfidf_x(C)
    monkeypatch.setattr(build, "SLAB_FLOATS", 30 * 70)  # 3 slabs, the last one short
    G = build.host_gram(X, np.float64)
    np.testing.assert_allclose(G, (X.T @ X).toarray(), rtol=1e-12, atol=1e-14)
    assert build.host_gram(X).dtype == np.float32
    # kept up to SLAB_MAX_CELLS cells, and while G takes at most a sixteenth of the RAM
    monkeypatch.setattr(build, "host_memory", lambda: 16 * 4 * 10_000**2)
    assert build.keeps_gram(10_000) and not build.keeps_gram(10_001)
    assert not build.keeps_gram(10_000, np.float64)
    monkeypatch.setattr(build, "host_memory", lambda: 1 << 50)
    assert build.keeps_gram(build.SLAB_MAX_CELLS) and not build.keeps_gram(build.SLAB_MAX_CELLS + 1)


def test_support_enhance_forms_x_transpose_x_once_and_gives_the_same_output(monkeypatch):
    # With G kept, the local Gram blocks and the output's support check read it (the k
    # estimate's PCA too, where G is the cheaper operator); without, each forms its own part.
    from sccase_jax.tl import frontend

    C, _ = counts(n=90, m=150, seed=4)
    a = ad.AnnData(C)
    splits = []
    real = start.crossprod_split
    monkeypatch.setattr(start, "crossprod_split", lambda *args, **kws: splits.append(1) or real(*args, **kws))
    monkeypatch.setattr(frontend.diagnostics, "crossprod_split", start.crossprod_split)
    kw = dict(z_support="knn", n_neighbors=12, max_iter=4, dtype="float64")
    kept = sccase_jax.enhance(a, **kw)
    assert len(splits) == 1  # host_gram's
    monkeypatch.setattr(frontend, "keeps_gram", lambda n, dtype=None: False)
    splits.clear()
    slabs = sccase_jax.enhance(a, **kw)
    assert len(splits) == 2  # the local Gram blocks' slabs and the support check's
    assert kept.uns["sccase"]["params"]["n_components_estimated"]
    np.testing.assert_allclose(kept.layers["sccase"], slabs.layers["sccase"], rtol=1e-9, atol=1e-12)
    # (the support check's own X^T X runs its common peaks in float32 BLAS)
    assert kept.uns["sccase"]["support"]["support"] == pytest.approx(
        slabs.uns["sccase"]["support"]["support"], rel=1e-6)


def test_sparse_weights_match_the_dense_output_weights():
    rng = np.random.default_rng(2)
    Zd = rng.random((30, 30)) * (rng.random((30, 30)) < 0.3)
    Z = sp.csc_matrix(Zd)
    for output, nb in (("blend", 3), ("xz", None), ("blend", None)):
        dense = sccase_jax.output.output_weights(Zd, output, 0.8, "all" if nb is None else nb)
        np.testing.assert_allclose(sparse_weights(Z, output, 0.8, nb).toarray(), dense,
                                   atol=1e-12)


@pytest.mark.parametrize("knn_from", ["embedding", "jaccard"])
def test_enhance_with_a_knn_support(knn_from):
    C, types = counts(n=80, m=120)
    a = ad.AnnData(C)
    out = sccase_jax.enhance(a, 4, z_support="knn", n_neighbors=10, knn_from=knn_from,
                             max_iter=5, dtype="float64")
    E = out.layers["sccase"]
    assert E.shape == (80, out.n_vars) and np.all(np.isfinite(E))
    Z = out.obsp["sccase_Z"]
    assert sp.issparse(Z) and np.all(np.diff(Z.tocsc().indptr) <= 10)
    p = out.uns["sccase"]["params"]
    assert p["z_support"] == "knn" and p["n_neighbors"] == 10
    hist = np.concatenate([[out.uns["sccase"]["initial_loss"]], out.uns["sccase"]["loss"]])
    assert np.all(np.diff(hist) <= 1e-9 * np.abs(hist[:-1]))


def test_knn_auto_threshold_and_refusals():
    from sccase_jax.fitting import _knn
    from sccase_jax.options import KNN_AUTO_CELLS, Options

    assert not _knn(Options(), KNN_AUTO_CELLS)
    assert _knn(Options(), KNN_AUTO_CELLS + 1)
    assert not _knn(Options(z_support="dense"), 10 * KNN_AUTO_CELLS)
    assert _knn(Options(z_support="knn"), 10)
    with pytest.raises(sccase_jax.InputError):
        Options(z_support="sparse")


def test_knn_sweep_equals_separate_knn_fits():
    C, _ = counts(n=40, m=60)
    X = tfidf_x(C)
    opts = dict(z_support="knn", n_neighbors=6, max_iter=4, tol=0.0, seed=1)
    # batch_size 2 over 3 lams: two batches, the last one padded.
    res = sccase_jax.sweep(X, lams=[1e3, 1e5, 1e6], ks=[2, 3], batch_size=2, **opts)
    assert res.Z.shape == (3, 2) and res.W.shape == (3, 2, X.shape[0], 3)
    assert res.params["z_support"] == "knn"
    for i, lam in enumerate([1e3, 1e5, 1e6]):
        for j, k in enumerate([2, 3]):
            one = sccase_jax.fit(X, k, lam=lam, **opts)
            mem = res.member(i, j)
            assert mem.n_iter == one.n_iter and mem.status == one.status
            np.testing.assert_allclose(mem.loss, one.loss, rtol=1e-8)
            np.testing.assert_allclose(mem.W, one.W, rtol=1e-7, atol=1e-12)
            np.testing.assert_allclose(mem.H, one.H, rtol=1e-7, atol=1e-12)
            assert sp.issparse(mem.Z) and mem.Z.shape == (40, 40)
            np.testing.assert_allclose(mem.Z.toarray(), one.Z.toarray(), rtol=1e-7, atol=1e-12)
    assert np.all(res.W[:, 0, :, 2] == 0) and np.all(res.H[:, 0, 2] == 0)


def test_knn_sweep_with_a_reference_equals_separate_fits_and_refuses_variant_solvers():
    from sccase_jax.solver import member_solver

    C, _ = counts(n=30, m=40)
    X = tfidf_x(C)
    P = np.random.default_rng(0).random((40, 1))
    opts = dict(z_support="knn", n_neighbors=6, max_iter=3, tol=0.0, seed=2, P=P)
    res = sccase_jax.sweep(X, lams=[1e3, 1e6], ks=[2, 3], **opts)
    for i, lam in enumerate([1e3, 1e6]):
        for j, k in enumerate([2, 3]):
            one = sccase_jax.fit(X, k, lam=lam, **opts)
            mem = res.member(i, j)
            np.testing.assert_allclose(mem.loss, one.loss, rtol=1e-6)
            np.testing.assert_allclose(mem.W[:, :k], one.W, rtol=1e-5, atol=1e-7)
            np.testing.assert_allclose(mem.Z.toarray(), one.Z.toarray(), rtol=1e-5, atol=1e-7)
    with pytest.raises(sccase_jax.InputError, match="variant solver"):
        sccase_jax.sweep(X, lams=[1e6], ks=[3], z_support="knn", solver=member_solver("sccase"))


def test_knn_with_harmony_batches():
    # The default correction (Harmony on the fit's embedding) needs no term in the fit; the
    # batch term on the support: tests/test_support_terms.py.
    C, _ = counts(n=40, m=60)
    a = ad.AnnData(C)
    a.obs["batch"] = ["x", "y"] * 20
    out = sccase_jax.enhance(a, 3, z_support="knn", batch_key="batch", max_iter=2)
    assert out.uns["sccase"]["params"]["batch_method"] == "harmony"
    assert np.all(np.isfinite(out.layers["sccase"]))
