"""Gram products: dense G and sparse X^T (X A) agree; the automatic choice; fit parity."""

import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse as sp
from helpers import tiny_problem
from jax.experimental import sparse as jsparse

import sccase_jax
from sccase_jax import ops, problem
from sccase_jax.params import Data, Factors, SolverConfig
from sccase_jax.solver import run
from sccase_jax.validate import InputError


def _sparse(m, n, density=0.2, seed=0):
    rng = np.random.default_rng(seed)
    return sp.random(m, n, density=density, random_state=rng, format="csr") * 3.0


@pytest.mark.parametrize(("m", "n", "p"), [(8, 12, 5), (60, 10, 10), (45, 7, 3), (400, 10, 7)])
def test_sparse_path_equals_dense_g(m, n, p):
    X = _sparse(m, n)
    A = jnp.asarray(np.random.default_rng(1).random((n, p)))
    Xd = jnp.asarray(X.toarray())
    dense = Data(X=Xd, G=Xd.T @ Xd, R=None, P=None, M=None)
    bcoo = Data(X=jsparse.BCOO.from_scipy_sparse(X.tocoo()), G=None, R=None, P=None, M=None)
    ref = X.toarray().T @ (X.toarray() @ np.asarray(A))
    np.testing.assert_allclose(ops.gram_matmul(dense, A), ref, rtol=1e-10)
    np.testing.assert_allclose(ops.gram_matmul(bcoo, A), ref, rtol=1e-10)
    # The thin products through the BCOO X's stored indices (ops.x_matmul, xt_matmul, wt_x).
    B = jnp.asarray(np.random.default_rng(2).random((m, p)))
    np.testing.assert_allclose(ops.x_matmul(bcoo.X, A), X.toarray() @ np.asarray(A), rtol=1e-10)
    np.testing.assert_allclose(ops.xt_matmul(bcoo.X, B), X.toarray().T @ np.asarray(B), rtol=1e-10)
    np.testing.assert_allclose(ops.wt_x(bcoo.X, B), np.asarray(B).T @ X.toarray(), rtol=1e-10)


@pytest.mark.parametrize(("cols", "step"), [(4, 7), (3, 64), (10, 5), (4, None)])
def test_sparse_blocks_and_steps_give_the_same_bits(monkeypatch, cols, step):
    # G A through sparse X in column blocks (full blocks plus a remainder block) and in
    # steps over the stored entries (the last one shifted back, its repeated entries
    # dropped): the same values, to the bit, as one block and one step, since each entry of
    # the result is accumulated in the order of X's entries either way.  Also in place:
    # the result takes A's buffer inside jit, and A passed from outside stays intact.
    import jax

    X = _sparse(60, 10, density=0.3, seed=5)
    A = jnp.asarray(np.random.default_rng(6).random((10, 10)), jnp.float32)
    data = Data(X=jsparse.BCOO.from_scipy_sparse(X.tocoo().astype(np.float32)), G=None,
                R=None, P=None, M=None)
    monkeypatch.setattr(ops, "SPARSE_BLOCK_BUDGET", 1e9)  # the width is set by cols alone
    # A fresh function for each trace: jax.jit(ops.gram_matmul) twice would reuse the first
    # trace and ignore the patched block and step sizes.
    traced = lambda: jax.jit(lambda d, a: ops.gram_matmul(d, a))  # noqa: E731
    backend = jax.default_backend()  # the steps' table is per backend: test this one
    monkeypatch.setattr(ops, "SPARSE_STEP", {backend: 10**9})
    whole = np.asarray(traced()(data, A))  # one block, one step
    assert "while" not in traced().lower(data, A).as_text()
    monkeypatch.setattr(ops, "SPARSE_BLOCK_COLS", cols)
    if step is None:  # a backend without steps: blocks of SPARSE_GATHER_BUDGET n^2 / nnz
        monkeypatch.setattr(ops, "SPARSE_STEP", {})
        monkeypatch.setattr(ops, "SPARSE_GATHER_BUDGET", (cols + 0.5) * data.X.nse / 100)
    else:
        monkeypatch.setattr(ops, "SPARSE_STEP", {backend: step * cols})
        assert ops._step_entries(cols, 100) == step
    assert ops._block_cols(60, 10, data.X.nse) == cols
    A0 = np.asarray(A).copy()
    f = traced()
    assert "while" in f.lower(data, A).as_text()  # blocks (and steps) really loop
    np.testing.assert_array_equal(np.asarray(f(data, A)), whole)
    np.testing.assert_array_equal(np.asarray(A), A0)
    np.testing.assert_allclose(whole, X.toarray().T @ (X.toarray() @ A0), rtol=1e-5)
    B = jnp.asarray(np.random.default_rng(7).random((60, 3)), jnp.float32)
    np.testing.assert_allclose(ops.xt_matmul(data.X, B), X.toarray().T @ np.asarray(B), rtol=1e-5)


def test_block_width_bounds_the_intermediate(monkeypatch):
    import jax

    # The CPU's steps, on whichever backend runs the tests.
    monkeypatch.setattr(ops, "SPARSE_STEP", {jax.default_backend(): 2**17})
    cols, budget = ops.SPARSE_BLOCK_COLS, ops.SPARSE_BLOCK_BUDGET
    assert ops._block_cols(m=10, n=1000) == cols
    # X A_b is m x b: at most budget n^2 floats.
    assert ops._block_cols(m=400, n=100) == int(budget * 100 * 100) // 400
    assert ops._block_cols(m=10**6, n=10) == 1
    assert ops._step_entries(cols, 10**6) * cols == 2**17
    # A backend without steps: one step over all entries, the nnz x b gather bounds b.
    monkeypatch.setattr(ops, "SPARSE_STEP", {})
    gather = ops.SPARSE_GATHER_BUDGET
    assert ops._step_entries(cols, 4000) == 4000
    assert ops._block_cols(m=400, n=100, nnz=4000) == 100 * 100 * gather // 4000
    assert ops._block_cols(m=400, n=100, nnz=100 * 100 * gather) == 1
    assert ops._block_cols(m=10, n=100) == 100


def test_sparse_path_fit_plan_stays_within_a_few_n2():
    # XLA's buffer plan of a whole fit through sparse X.  With the blocks unrolled (and
    # their width blind to nnz) it held ~ nnz x n floats: ~400 n^2 here.
    from sccase_jax.params import SolverConfig
    from sccase_jax.solver import run_donated

    n = 120
    X = _sparse(10 * n, n, density=0.2, seed=4)
    prob = problem.prepare(X, 3, gram="sparse", dtype=jnp.float32, nmf_iter=2)
    ma = run_donated.lower(prob.data, prob.factors, prob.hp, config=SolverConfig()).compile()
    temps = ma.memory_analysis().temp_size_in_bytes / (4.0 * n * n)
    assert temps < 40.0, temps  # 274 with the unrolled blocks; 20 now (O(m k) terms at this small n)


def test_gap_and_select_sum_equal_their_plain_forms():
    # The memory-motivated forms of the solver compute the same values as the plain ones.
    rng = np.random.default_rng(2)
    Z, H = jnp.asarray(rng.random((7, 7))), jnp.asarray(rng.random((3, 7)))
    np.testing.assert_allclose(ops.gap(Z, H), Z - H.T @ H, rtol=1e-12)
    R = jnp.asarray(rng.random((7, 7)) < 0.6)
    A, B = jnp.asarray(rng.random((7, 7))), jnp.asarray(rng.random((7, 7)))
    ref = float(np.sum(np.where(np.asarray(R), np.asarray(A), np.asarray(B))))
    assert float(ops.select_sum(R, A, B)) == pytest.approx(ref, rel=1e-12)


@pytest.mark.parametrize("unroll", [64, 2])
def test_minus_outer_equals_product_form(monkeypatch, unroll):
    # Unrolled rank-one terms (k <= OUTER_UNROLL) and the broadcast-and-sum fallback.
    monkeypatch.setattr(ops, "OUTER_UNROLL", unroll)
    rng = np.random.default_rng(3)
    C = jnp.asarray(rng.random((9, 9)))
    A, B = jnp.asarray(rng.random((4, 9))), jnp.asarray(rng.random((4, 9)))
    np.testing.assert_allclose(ops.minus_outer(C, A, B), C - A.T @ B, rtol=1e-12)
    np.testing.assert_allclose(ops.minus_outer(C, A[:1], B[:1]), C - A[:1].T @ B[:1], rtol=1e-12)


def test_choose_gram_follows_flop_estimate():
    very_sparse = _sparse(20, 4000, density=0.001)
    dense_ish = _sparse(2000, 50, density=0.5)
    assert ops.choose_gram(very_sparse, "auto", backend="cpu") == "sparse"
    assert ops.choose_gram(dense_ish, "auto", backend="cpu") == "dense"
    assert ops.choose_gram(dense_ish, "sparse") == "sparse"
    with pytest.raises(ValueError, match="gram must be"):
        ops.choose_gram(dense_ish, "fast")


def test_solver_without_g_matches_solver_with_g():
    data, f0, hp = tiny_problem(seed=2, m=20, n=9, k=3)
    cfg = SolverConfig(max_iter=4, tol=0.0)
    a = run(data, f0, hp, cfg)
    b = run(data._replace(G=None), f0, hp, cfg)  # X^T (X A) through the dense X
    np.testing.assert_allclose(a.loss, b.loss, rtol=1e-10)
    np.testing.assert_allclose(a.factors.Z, b.factors.Z, rtol=1e-8, atol=1e-13)


@pytest.mark.parametrize("z_step", ["free", "gradient", "auto"])
@pytest.mark.parametrize("guard", [True, False])
def test_solver_through_bcoo_x_matches_solver_with_g(z_step, guard):
    # The sparse path as a fit runs it: X as BCOO, G never formed, the Z gradient formed
    # afresh at each use (solver._Direction), every Z step and the unguarded one.
    data, f0, hp = tiny_problem(seed=4, m=30, n=12, k=3)
    cfg = SolverConfig(max_iter=5, tol=0.0, z_step=z_step, guard=guard)
    a = run(data, f0, hp, cfg)
    sparse = data._replace(G=None, X=jsparse.BCOO.fromdense(data.X))
    b = run(sparse, f0, hp, cfg)
    np.testing.assert_allclose(a.loss, b.loss, rtol=1e-9)
    np.testing.assert_allclose(a.factors.Z, b.factors.Z, rtol=1e-7, atol=1e-12)
    np.testing.assert_allclose(a.factors.W, b.factors.W, rtol=1e-7, atol=1e-12)


def test_prepare_sparse_gram_keeps_g_unformed():
    X = _sparse(40, 20, density=0.3, seed=3)
    init = Factors(np.ones((40, 2)), np.ones((2, 20)), np.eye(20))  # skips the NMF compile
    assert problem.prepare(X, 2, gram="sparse", init=init).data.G is None
    assert problem.prepare(X, 2, gram="dense", init=init).data.G.shape == (20, 20)


def test_bad_gram_mode_is_input_error():
    with pytest.raises(InputError, match="gram must be"):
        sccase_jax.fit(_sparse(30, 20, density=0.3), 2, max_iter=1, gram="fast")


@pytest.mark.parametrize("fmt", ["csr", "csc", "coo", "dense"])
def test_device_matrix_sparse_stores_entries_row_major(fmt):
    # The sparse products step through X's entries in stored order and are much faster
    # with row-major order; a CSC input (a transposed AnnData X) must not keep its
    # column-major order.  Values are kept exactly.
    X = _sparse(30, 20, density=0.3, seed=3)
    Xin = X.toarray() if fmt == "dense" else X.asformat(fmt)
    B = problem.device_matrix(Xin, jnp.float64, "sparse")
    idx = np.asarray(B.indices)
    order = idx[:, 0] * X.shape[1] + idx[:, 1]
    assert np.all(np.diff(order) > 0)
    np.testing.assert_array_equal(np.asarray(B.todense()), X.toarray())
