"""How many cells the blended output averages ("auto"), the similarity of an embedding, and
the neighbour-support diagnostic the output records (sccase_jax.diagnostics)."""

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
from helpers import typed_counts
from hypothesis import example, given
from hypothesis import strategies as st

import sccase_jax
from sccase_jax import diagnostics, output
from sccase_jax.preprocessing import preprocess


def test_auto_neighbors_grow_with_the_cells_up_to_the_cap():
    assert output.resolve_neighbors("auto", "blend") == output.DEFAULT_NEIGHBORS == 300
    # no entries given: 300 or a tenth of the cells, within 30 % of the cells and 1,000
    assert output.resolve_neighbors("auto", "blend", 2000) == 300
    assert output.resolve_neighbors("auto", "blend", 5001) == 501
    assert output.resolve_neighbors("auto", "blend", 10_335) == 1000
    assert output.resolve_neighbors("auto", "blend", 10**6) == output.NEIGHBORS_MAX
    assert output.resolve_neighbors("auto", "blend", 500) == 150
    assert output.resolve_neighbors("auto", "xz", 10**6) is None
    assert output.resolve_neighbors(40, "blend", 10**6) == 40


@pytest.mark.parametrize(("n", "entries", "expected"), [
    (2000, 150, 200),     # pools 30,000 entries: 200 cells of 150
    (2000, 75, 400),      # sparser cells: twice as many
    (1300, 94, 320),
    (20_000, 150, 1000),  # a tenth of the cells (2,000), capped
    (5000, 150, 500),     # a tenth of the cells is more than the pool needs
    (500, 150, 150),      # the pool would be 200: at most 30 % of the cells
    (600, 64, 180),
    (108, 55, 50),        # at least 50 cells
    (50, 1900, 50),       # all of the 50 cells
    (400, 10**6, 50),     # very deep cells: still 50
])
def test_auto_neighbors_pool_the_entries_within_the_share(n, entries, expected):
    assert output.resolve_neighbors("auto", "blend", n, entries) == expected


def test_cell_entries_is_the_median_of_stored_entries_per_cell():
    X = np.zeros((6, 4))
    X[:1, 0] = 1
    X[:2, 1] = 1
    X[:3, 2] = 2
    X[:5, 3] = 3
    assert output.cell_entries(X) == 2.5
    assert output.cell_entries(sp.csr_matrix(X)) == 2.5


def test_enhance_uses_the_entries_of_its_cells():
    # ~310 open peaks a cell: the pool needs ~97 cells, fewer than 30 % of the 402 cells
    # (121, what the rule gives without the entries)
    counts, _ = typed_counts(n_per=134, peaks=1500, block=400, p_on=0.7, seed=3)
    a = ad.AnnData(sp.csr_matrix(counts.astype(np.float32)))
    out = sccase_jax.enhance(a, n_components=3, max_iter=1, seed=0)
    X, _, _ = preprocess(sp.csr_matrix(counts.T.astype(np.float64)))
    expected = output.resolve_neighbors("auto", "blend", X.shape[1], output.cell_entries(X))
    assert expected < output.resolve_neighbors("auto", "blend", X.shape[1]) == 121
    assert out.uns["sccase"]["params"]["neighbors"] == expected


@pytest.mark.parametrize("N", [1, 4, 9])
def test_embedding_similarity_is_the_largest_entries_of_the_clipped_gram(N):
    rng = np.random.default_rng(N)
    E = rng.normal(size=(9, 3))
    full = np.maximum(E @ E.T, 0)
    Zs = output.embedding_similarity(E, N, block=4)
    assert sp.issparse(Zs) and Zs.shape == (9, 9)
    # every kept entry is the clipped Gram matrix's, and none larger was left out
    D = Zs.toarray()
    kept = D > 0
    np.testing.assert_allclose(D[kept], full[kept], rtol=1e-6)  # float32 products
    for j in range(9):
        assert kept[:, j].sum() <= N
        if kept[:, j].any():
            assert full[~kept[:, j], j].max(initial=0) <= D[kept[:, j], j].min() + 1e-6
    np.testing.assert_allclose(output.embedding_similarity(E, None), full, rtol=1e-6)


def _typed_X(seed=0):
    C, lab = typed_counts(n_per=30, k=3, peaks=150, block=40, seed=seed)
    X, _, _ = preprocess(sp.csr_matrix(C, dtype=np.float64).T)
    return X, lab


def test_support_is_high_for_the_data_s_own_neighbours_and_low_for_random_cells():
    X, lab = _typed_X()
    n = X.shape[1]
    G = (X.T @ X).toarray()
    np.fill_diagonal(G, -np.inf)
    M = 20
    own = np.zeros((n, n))
    for j in range(n):
        own[np.argsort(-G[:, j])[:M], j] = 1.0
    top = diagnostics.neighbour_support(X, sp.csc_matrix(own))
    assert top["support"] == pytest.approx(1.0) and top["supported"]
    rng = np.random.default_rng(0)
    rand = np.zeros((n, n))
    for j in range(n):
        rand[rng.choice(np.delete(np.arange(n), j), M, replace=False), j] = 1.0
    low = diagnostics.neighbour_support(X, sp.csc_matrix(rand))
    assert abs(low["support"]) < 0.2 and not low["supported"]
    assert "not better supported" in low["message"]
    # same-type cells (what enhancement should average) are well supported
    same = (lab[:, None] == lab[None, :]).astype(float)
    np.fill_diagonal(same, 0)
    assert diagnostics.neighbour_support(X, sp.csc_matrix(same))["support"] > 0.5
    # a sample of the cells gives nearly the same figure
    part = diagnostics.neighbour_support(X, sp.csc_matrix(same), sample=40, seed=1)
    assert part["cells"] == 40
    # The fit's G (float32, on the device) in place of X^T X formed again: the same figures.
    import jax.numpy as jnp

    G32 = jnp.asarray((X.T @ X).toarray(), jnp.float32)
    for B, kw in ((own, {}), (rand, {}), (same, dict(sample=40, seed=1))):
        ref = diagnostics.neighbour_support(X, sp.csc_matrix(B), **kw)
        via = diagnostics.neighbour_support(X, sp.csc_matrix(B), gram=G32, **kw)
        assert via["support"] == pytest.approx(ref["support"], rel=1e-5, abs=1e-6)
        assert via["neighbours"] == ref["neighbours"] and via["cells"] == ref["cells"]


def test_enhance_records_the_support_and_warns_when_unsupported(monkeypatch):
    C, lab = typed_counts(n_per=30, k=3, peaks=150, block=40, seed=2)
    a = ad.AnnData(sp.csr_matrix(C.astype(np.float32)))
    out = sccase_jax.enhance(a, 3, max_iter=2, seed=0)
    sup = out.uns["sccase"]["support"]
    assert sup["supported"] and sup["support"] > diagnostics.MIN_SUPPORT
    assert "support" not in sccase_jax.enhance(a, 3, max_iter=2, output="xz").uns["sccase"]
    monkeypatch.setattr(diagnostics, "MIN_SUPPORT", 2.0)
    with pytest.warns(UserWarning, match="not better supported"):
        low = sccase_jax.enhance(a, 3, max_iter=2, seed=0)
    assert not low.uns["sccase"]["support"]["supported"]


@given(seed=st.integers(0, 2**31 - 1), n=st.sampled_from([40, 40, 7]),
       density=st.sampled_from([0.3, 1.0]), neighbors=st.sampled_from([3, 12, 45]),
       blend=st.sampled_from([0.8, 0.5, 1.0, 0.0]), out=st.sampled_from(["blend", "blend", "xz"]),
       dtype=st.sampled_from([np.float32, np.float64]))
# float32 column sums in another order (float64, then rounded) differ from the dense ones
# in most columns of this example: the test sees the order.
@example(seed=0, n=40, density=1.0, neighbors=45, blend=0.8, out="blend", dtype=np.float32)
def test_sparse_z_weights_equal_the_dense_ones_bit_for_bit(seed, n, density, neighbors, blend,
                                                          out, dtype):
    # keep_largest_sparse + weights_sparse (a stored sparse Z, never n x n) against
    # keep_largest + weights of the same Z made dense: the same numbers to the bit, empty
    # columns included.
    rng = np.random.default_rng(seed)
    Zd = (rng.random((n, n)) * (rng.random((n, n)) < density)).astype(dtype)
    Zd[:, rng.integers(0, n)] = 0  # an empty column
    Z = sp.csr_matrix(Zd)
    got = output.weights_sparse(output.keep_largest_sparse(Z, neighbors), out, blend)
    want = output.weights(output.keep_largest(Zd, neighbors), out, blend, inplace=True)
    assert sp.issparse(got) and got.dtype == want.dtype
    np.testing.assert_array_equal(got.toarray(), want)
    assert np.all(np.diff(output.keep_largest_sparse(Z, neighbors).indptr) <= neighbors)
