"""The jitted while_loop solver: monotone F, stopping rules, jit/eager and vmap agreement."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import tiny_problem

from sccase_jax import ops
from sccase_jax.params import Hyperparams, SolverConfig, release_config
from sccase_jax.result import CONVERGED, MAX_ITER, NONFINITE
from sccase_jax.solver import init_state, run, run_donated, update


@pytest.mark.parametrize("h_step", ["backtrack", "exact"])
@pytest.mark.parametrize("k_ref", [0, 1])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_loss_never_increases(seed, k_ref, h_step):
    data, f0, hp = tiny_problem(seed, k_ref=k_ref, lam=5.0)
    res = run(data, f0, hp, SolverConfig(max_iter=40, tol=0.0, h_step=h_step))
    hist = np.concatenate([[float(res.initial_loss)], np.asarray(res.loss)])
    assert int(res.n_iter) == 40
    assert np.all(np.diff(hist) <= 1e-12 * np.abs(hist[:-1]))
    assert hist[-1] < hist[0]
    for A in res.factors:
        assert float(jnp.min(A)) >= 0


def test_stops_at_max_iter():
    data, f0, hp = tiny_problem(0)
    res = run(data, f0, hp, SolverConfig(max_iter=3, tol=0.0))
    assert int(res.n_iter) == 3
    assert int(res.status) == MAX_ITER
    assert not bool(res.converged)
    assert np.all(np.isfinite(res.loss))


def test_max_iter_zero_returns_the_start():
    data, f0, hp = tiny_problem(0)
    res = run(data, f0, hp, SolverConfig(max_iter=0))
    assert int(res.n_iter) == 0 and int(res.status) == MAX_ITER
    assert res.loss.shape == (0,)
    for a, b in zip(res.factors, f0):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_stops_early_on_easy_problem():
    # With a large lam the moves shrink fast and F settles: the relative rule fires.
    # (With a small lam F keeps shrinking geometrically towards its only stationary
    # point, 0; see docs/model.md.)
    data, f0, hp = tiny_problem(1, lam=1e6)
    res = run(data, f0, hp, SolverConfig(max_iter=500, tol=1e-4))
    n = int(res.n_iter)
    assert 1 <= n < 500
    assert bool(res.converged) and int(res.status) == CONVERGED
    hist = np.asarray(res.loss)
    assert np.all(np.isfinite(hist[:n])) and np.all(np.isnan(hist[n:]))
    rel = abs(hist[n - 1] - hist[n - 2]) / abs(hist[n - 2]) if n > 1 else 0.0
    assert rel < 1e-4


@pytest.mark.parametrize("where", ["X", "Z"])
def test_nonfinite_input_is_reported(where):
    data, f0, hp = tiny_problem(2)
    if where == "X":
        X = data.X.at[0, 0].set(jnp.nan)
        data = data._replace(X=X, G=X.T @ X)
    else:
        f0 = f0._replace(Z=f0.Z.at[1, 1].set(jnp.inf))
    res = run(data, f0, hp, SolverConfig(max_iter=50))
    assert int(res.status) == NONFINITE
    assert int(res.n_iter) == 0
    assert not bool(res.converged)


def test_nonfinite_during_fit_keeps_last_finite_iterate():
    # A step that makes F non-finite (here: lam turned to inf after the start) stops the
    # loop and hands back the last finite iterate, not NaNs.
    data, f0, hp = tiny_problem(0)
    cfg = SolverConfig(max_iter=20)
    s0 = init_state(data, f0, hp, cfg)
    s1 = update(s0, data, hp._replace(lam=jnp.asarray(jnp.inf)), cfg)
    assert int(s1.status) == NONFINITE
    for name in ("W", "H", "Z", "loss"):
        np.testing.assert_array_equal(getattr(s1, name), getattr(s0, name))
    assert int(s1.iteration) == 1


def test_jit_and_eager_agree():
    data, f0, hp = tiny_problem(4)
    cfg = SolverConfig(max_iter=5, tol=0.0)
    jitted = run(data, f0, hp, cfg)
    with jax.disable_jit():
        eager = run(data, f0, hp, cfg)
    for a, b in zip(jax.tree.leaves(jitted), jax.tree.leaves(eager)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-9, atol=1e-12)


def test_vmap_over_lambda_equals_separate_runs():
    data, f0, hp = tiny_problem(5)
    lams = jnp.asarray([0.1, 3.0, 100.0])
    cfg = SolverConfig(max_iter=30, tol=1e-7)
    batched_hp = Hyperparams(lam=lams, gamma1=hp.gamma1, gamma2=hp.gamma2, alpha=hp.alpha)
    vm = jax.vmap(lambda h: run(data, f0, h, cfg), in_axes=(Hyperparams(0, None, None, None),))(batched_hp)
    for i, lam in enumerate(lams):
        one = run(data, f0, hp._replace(lam=lam), cfg)
        assert int(vm.n_iter[i]) == int(one.n_iter)
        for a, b in zip(jax.tree.leaves(vm), jax.tree.leaves(one)):
            np.testing.assert_allclose(np.asarray(a)[i], np.asarray(b), rtol=1e-9, atol=1e-12)


def test_float32_stays_float32():
    data, f0, hp = tiny_problem(6, dtype=jnp.float32)
    res = run(data, f0, hp, SolverConfig(max_iter=4))
    for leaf in jax.tree.leaves(res):
        if jnp.issubdtype(leaf.dtype, jnp.floating):
            assert leaf.dtype == jnp.float32


def test_release_config_runs_three_iterations_and_rescales_h():
    data, f0, hp = tiny_problem(7)
    res = run(data, f0, hp, release_config())
    assert int(res.n_iter) == 3
    # Each iteration starts by rescaling H's rows to sum 1; the H move then changes them,
    # but not by much with the tiny released trial steps.
    assert res.factors.H.shape == f0.H.shape


def test_update_is_a_pure_step():
    data, f0, hp = tiny_problem(8)
    cfg = SolverConfig(max_iter=10)
    s0 = init_state(data, f0, hp, cfg)
    s1 = jax.jit(update, static_argnames="config")(s0, data, hp, config=cfg)
    s1b = jax.jit(update, static_argnames="config")(s0, data, hp, config=cfg)
    assert int(s1.iteration) == 1
    for a, b in zip(jax.tree.leaves(s1), jax.tree.leaves(s1b)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert float(s1.loss) <= float(s0.loss)


def test_donated_run_equals_run_and_consumes_its_factors():
    data, f0, hp = tiny_problem(6)
    cfg = SolverConfig(max_iter=6, tol=0.0)
    ref = run(data, f0, hp, cfg)
    own = jax.tree.map(jnp.copy, f0)
    don = run_donated(data, own, hp, cfg)
    for a, b in zip(jax.tree.leaves(ref), jax.tree.leaves(don)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # The caller's factors of the plain run are untouched; the donated ones are gone.
    assert not f0.Z.is_deleted()
    assert own.Z.is_deleted()


@pytest.mark.parametrize("z_step", ["auto", "free", "gradient"])
@pytest.mark.parametrize("k_ref", [0, 1])
def test_each_step_reports_the_exact_change_of_f(k_ref, z_step):
    # The Z, W and H steps accept on F(new) - F(old) computed from differences (not by
    # comparing two rounded values of F); in float64 that must equal the full objective.
    from sccase_jax import solver as S
    from sccase_jax.objectives.sccase import gram_loss, similarity_term
    from sccase_jax.ops import masked
    from sccase_jax.solver import wh_steps as WH

    data, f0, hp = tiny_problem(3, k_ref=k_ref)
    cfg = SolverConfig(z_step=z_step)
    st = init_state(data, f0, hp, cfg)
    full = lambda Sm, GS, B, W, H, Z: float(gram_loss(Sm, GS, B, W, H, Z, data.P, data.M, hp))  # noqa: E731
    Z, F1, GS, _, _, _ = S.get_rule('z_step', cfg.z_step)(st, data, hp, cfg, st.loss)
    Sm = masked(Z, data.R)
    np.testing.assert_allclose(np.asarray(GS), np.asarray(data.G @ Sm), rtol=1e-12, atol=1e-14)
    assert float(F1) == pytest.approx(full(Sm, GS, st.B, st.W, st.H, Z), rel=1e-12)
    W, F2 = WH.w_move(st.W, st.H, Sm, data, hp, cfg, F1)
    B = ops.wt_x(data.X, W)
    assert float(F2) == pytest.approx(full(Sm, GS, B, W, st.H, Z), rel=1e-12)
    H, F3, sim = WH.h_move(W, st.H, Z, Sm, B, hp, cfg, F2)
    assert float(F3) == pytest.approx(full(Sm, GS, B, W, H, Z), rel=1e-12)
    assert float(sim) == pytest.approx(float(similarity_term(Z, H)), rel=1e-10)
    assert float(F3) <= float(F2) <= float(F1) <= float(st.loss)
    assert float(F3) < float(st.loss)


def test_h_trial_bound_is_a_lower_bound_and_skips_only_rejected_trials(monkeypatch):
    # An H trial whose bound on the change of F is positive skips its pass over Q.  The
    # bound must never exceed the exact change, it must fire for the paper's large first
    # trials, and the H step must come out the same with and without it.
    from sccase_jax.objectives.sccase import grad_h_gram, gram_loss
    from sccase_jax.ops import gap, masked
    from sccase_jax.solver import wh_steps as WH

    data, f0, hp = tiny_problem(4, lam=1e3)
    W, H, _ = f0
    # Z close to H^T H, as in a fit: the paper's first trials overshoot by far.
    Z = H.T @ H * (1.0 + 0.01 * jnp.cos(jnp.arange(H.shape[1] ** 2).reshape(H.shape[1], -1)))
    Sm = masked(Z, data.R)
    GS, B = data.G @ Sm, ops.wt_x(data.X, W)
    F = lambda Hc: gram_loss(Sm, GS, B, W, Hc, Z, data.P, data.M, hp)  # noqa: E731
    Q = gap(Z, H)
    qq = jnp.vdot(Q, Q)
    D = grad_h_gram(B @ Sm, W.T @ W, H, Q, hp.lam, hp.gamma2)
    fired = 0
    for d in [0.2**i for i in range(10)]:
        Hc = jnp.maximum(H - d * D, 0)
        E = Hc.T @ Hc - H.T @ H
        exact = float(F(Hc) - F(H))
        rest = exact - float(hp.lam * (jnp.vdot(E, E) - 2.0 * jnp.vdot(Q, E)))
        low, scale = WH._h_trial_bound(rest, jnp.vdot(E, E), qq, hp.lam)
        assert float(low) <= exact + 1e-9 * float(scale)
        if low > WH.H_BOUND_MARGIN * scale:
            fired += 1
            assert exact > 0
    assert fired >= 3

    cfg = SolverConfig()
    with_bound = WH.h_move(W, H, Z, Sm, B, hp, cfg, jnp.zeros(()))
    monkeypatch.setattr(WH, "H_BOUND_MARGIN", float("inf"))
    without = WH.h_move(W, H, Z, Sm, B, hp, cfg, jnp.zeros(()))
    assert float(without[1]) < 0  # a step was taken, after the bound rejected the first trials
    for a, b in zip(with_bound, without):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_z_step_sees_decreases_below_the_float32_resolution_of_f():
    # A large constant in F (gamma1 ||W||^2, which the Z step does not touch) puts F's
    # float32 spacing far above what one Z step changes; the step must still be taken and
    # its change computed to float32 accuracy of the change itself.
    from sccase_jax import solver as S

    cfg = SolverConfig()
    changes = {}
    for dtype in (jnp.float32, jnp.float64):
        data, f0, hp = tiny_problem(4, dtype=dtype)
        hp = hp._replace(gamma1=jnp.asarray(1e9, dtype))
        st = init_state(data, f0, hp, cfg)
        z_rule = S.get_rule("z_step", cfg.z_step)
        Z, dF, _, _, _, _ = z_rule(st, data, hp, cfg, jnp.zeros((), dtype))  # the change alone
        changes[dtype] = float(dF)
        if dtype == jnp.float32:
            spacing = float(np.spacing(np.float32(st.loss)))
            assert not np.array_equal(np.asarray(Z), np.asarray(st.Z))
    assert changes[jnp.float64] < 0
    assert abs(changes[jnp.float64]) < spacing  # invisible in F itself
    assert changes[jnp.float32] == pytest.approx(changes[jnp.float64], rel=1e-3)


def test_stopping_rule_uses_the_exact_change_of_f():
    # The relative change that decides convergence is the sum of the steps' exact changes,
    # not the difference of two recomputed values of F: in float64 they agree; in float32
    # the recomputed difference carries the Gram form's rounding (here 1e-3 of the change),
    # the exact sum does not.
    from sccase_jax.solver import update

    # The paper's Z step keeps the float32 and float64 fits on the same path for these six
    # iterations (the rule itself does not depend on the Z step); with the free step their
    # iterates part at the 1e-4 level of the change by the sixth.
    cfg = SolverConfig(z_step="gradient")
    rel = {}
    for dtype in (jnp.float32, jnp.float64):
        data, f0, hp = tiny_problem(4, dtype=dtype)
        hp = hp._replace(lam=jnp.asarray(1e6, dtype))
        st = init_state(data, f0, hp, cfg)
        for _ in range(6):
            prev, st = st, update(st, data, hp, cfg)
        rel[dtype] = float(st.rel_change)
        if dtype == jnp.float64:
            assert rel[dtype] == pytest.approx(abs(float(st.loss - prev.loss)) / float(prev.loss), rel=1e-9)
    assert rel[jnp.float32] == pytest.approx(rel[jnp.float64], rel=2e-4)


def crossing_problem(seed=0, n=14, lam=50.0):
    """A start where one Z step cuts positive entries of Z to 0 in every column.

    Each cell loads on one component, so ``H^T H`` is zero between cells of different
    components; Z is ``H^T H`` there plus small positive entries, which the step (about
    ``1 / (2 lam)`` times a gradient of about ``2 lam Z`` there) pushes below zero.
    """
    data, f0, hp = tiny_problem(seed, n=n, lam=lam)
    rng = np.random.default_rng(seed)
    H = np.zeros((3, n))
    H[rng.integers(0, 3, n), np.arange(n)] = rng.random(n) + 0.5
    HtH = H.T @ H
    Z = np.where(HtH > 0, HtH, 1e-3 * rng.random((n, n)))
    return data, f0._replace(H=jnp.asarray(H), Z=jnp.asarray(Z)), hp


@pytest.mark.parametrize("block", [128, 4])
def test_free_z_step_keeps_gs_exact_through_crossings(monkeypatch, block):
    # The "free" Z step multiplies G once (by the direction) and adds the projection's
    # correction on the columns where an entry of Z is cut to 0: in one block when they fit
    # (block 128), else block by block in the line search and G S formed again after the
    # iteration (block 4: 14 columns cross).  Either way the change of F it reports is
    # exact and the state's G S is G (Z o R).
    from sccase_jax import solver as S
    from sccase_jax.objectives.sccase import gram_loss
    from sccase_jax.ops import masked
    from sccase_jax.solver import z_step as ZS

    monkeypatch.setattr(ZS, "Z_CLIP_BLOCK", block)
    data, f0, hp = crossing_problem()
    cfg = SolverConfig(z_step="free")
    st = init_state(data, f0, hp, cfg)
    Z, dF, GS, _, stale, rough = S.get_rule('z_step', cfg.z_step)(st, data, hp, cfg, jnp.zeros(()))
    assert bool(rough) == bool(stale)  # many crossings: "auto" takes the paper's step next
    R = np.asarray(data.R)
    cut = (np.asarray(st.Z) > 0) & (np.asarray(Z) == 0) & R
    assert cut.any(axis=0).sum() == 14 and cut.sum() > 50
    assert bool(stale) == (block < 14)
    Sm = masked(Z, data.R)
    F_new = gram_loss(Sm, data.G @ Sm, st.B, st.W, st.H, Z, data.P, data.M, hp)
    assert float(dF) == pytest.approx(float(F_new - st.loss), rel=1e-10)
    if not stale:
        np.testing.assert_allclose(np.asarray(GS), np.asarray(data.G @ Sm), rtol=1e-12, atol=1e-13)
    new = S.update(st, data, hp, cfg)
    np.testing.assert_allclose(
        np.asarray(new.GS), np.asarray(data.G @ masked(new.Z, data.R)), rtol=1e-12, atol=1e-13
    )
    assert float(new.GS_drift) == 0.0 if stale else float(new.GS_drift) > 0.0


def test_free_z_step_is_exact_along_the_free_direction():
    # Without crossings the free step is the minimiser of F along the gradient with the
    # entries held at the bound removed: F at the new Z is below F at 0.9 and 1.1 times
    # the step, and the move leaves Z = 0 entries with a positive gradient at 0.
    from sccase_jax import solver as S
    from sccase_jax.objectives.sccase import grad_z_gram, gram_loss
    from sccase_jax.ops import masked

    data, f0, hp = crossing_problem(1)
    # Z = H^T H exactly: 0 between cells of different components, where the gradient is
    # the data term alone and positive on some entries, which stay held at 0.
    f0 = f0._replace(Z=f0.H.T @ f0.H)
    cfg = SolverConfig(z_step="free")
    st = init_state(data, f0, hp, cfg)
    D = grad_z_gram(st.GS, st.B, st.H, st.Z - st.H.T @ st.H, data.R, hp.lam)
    held = (st.Z <= 0) & (D > 0)
    assert int(held.sum()) > 0
    P = jnp.where(held, 0.0, D)
    Z, dF, _, _, _, _ = S.get_rule('z_step', cfg.z_step)(st, data, hp, cfg, jnp.zeros(()))
    np.testing.assert_array_equal(np.asarray(Z)[np.asarray(held)], 0.0)
    moved = np.abs(np.asarray(P)) > 1e-8
    d = np.median((np.asarray(st.Z) - np.asarray(Z))[moved] / np.asarray(P)[moved])
    np.testing.assert_allclose(np.asarray(Z), np.asarray(st.Z - d * P), rtol=1e-10, atol=1e-14)

    def F(t):
        Zt = jnp.maximum(st.Z - t * P, 0)
        Sm = masked(Zt, data.R)
        return float(gram_loss(Sm, data.G @ Sm, st.B, st.W, st.H, Zt, data.P, data.M, hp))

    assert F(d) < F(0.9 * d) and F(d) < F(1.1 * d)
    assert float(dF) == pytest.approx(F(d) - F(0.0), rel=1e-10)


def test_auto_z_step_starts_with_the_paper_step_then_goes_free():
    # "auto": the paper's step while the moves are large (from the start), the free step
    # once they are small; the whole fit stays monotone and its G S exact.
    from sccase_jax import solver as S
    from sccase_jax.ops import masked

    data, f0, hp = tiny_problem(2, n=12, lam=1e3)
    auto, paper = SolverConfig(z_step="auto"), SolverConfig(z_step="gradient")
    st = init_state(data, f0, hp, auto)
    assert bool(st.rough)
    first = S.get_rule('z_step', auto.z_step)(st, data, hp, auto, jnp.zeros(()))
    same = S.get_rule('z_step', paper.z_step)(st, data, hp, paper, jnp.zeros(()))
    np.testing.assert_allclose(np.asarray(first[0]), np.asarray(same[0]), rtol=1e-13)
    assert bool(first[5])  # from a random Z the first move is large
    roughs, losses = [], [float(st.loss)]
    for _ in range(8):
        st = S.update(st, data, hp, auto)
        roughs.append(bool(st.rough))
        losses.append(float(st.loss))
        np.testing.assert_allclose(
            np.asarray(st.GS), np.asarray(data.G @ masked(st.Z, data.R)), rtol=1e-11, atol=1e-13
        )
    assert roughs[0] and not roughs[-1]
    assert np.all(np.diff(losses) <= 1e-12 * np.abs(losses[:-1]))


def test_z_step_setting_is_checked_and_release_uses_the_paper_step():
    assert release_config().z_step == "gradient"
    assert SolverConfig().z_step == "auto"
    data, f0, hp = tiny_problem(0)
    with pytest.raises(ValueError, match="z_step"):
        run(data, f0, hp, SolverConfig(z_step="fast"))


@pytest.mark.parametrize(
    ("gram", "z_step", "bound"),
    [("dense", "auto", 5.5), ("dense", "gradient", 5.0), ("sparse", "auto", 5.75),
     ("sparse", "gradient", 5.25)],
)
def test_fit_plan_working_memory(gram, z_step, bound):
    # XLA's buffer plan of the whole fit (float32), in n x n arrays: 5.05 of temporaries
    # here with dense G and the default Z step (6.0 with the H step's Q formed beside S,
    # before session 7's orderings, docs/performance.md), 4.64 with the paper's.  Through
    # sparse X 5.24 and 4.78 (O(m k) and block terms weigh more at this small n): 11.8
    # while every product gathered an nnz x b block at once (4 n^2) and the solver kept
    # the Z step's gradient beside the product (ops.gram_matmul, solver._Direction), 14.3
    # while BCOO's own products and jnp indexing kept one wrapped copy of X's indices per
    # product (ops.x_matmul).
    import scipy.sparse as sp

    from sccase_jax import ops, problem
    from sccase_jax.solver import run_donated

    if gram == "sparse" and not ops._stepped():
        # Backends without the stepped sparse products (GPU, TPU) gather all entries of a
        # block at once: about 8.6 n^2 of temporaries (docs/scaling.md), not guarded here.
        pytest.skip("sparse plan bound is for the stepped products (CPU)")
    n = 500
    rng = np.random.default_rng(0)
    X = sp.random(10 * n, n, density=0.05, random_state=rng, format="csr")
    X.data[:] = 1.0
    prob = problem.prepare(X, 9, gram=gram, dtype=jnp.float32, nmf_iter=2)
    cfg = SolverConfig(z_step=z_step)
    ma = run_donated.lower(prob.data, prob.factors, prob.hp, config=cfg).compile()
    temps = ma.memory_analysis().temp_size_in_bytes / (4.0 * n * n)
    assert temps < bound, temps


def test_sparse_z_step_gradient_formed_at_each_use_has_the_same_bits():
    # Through sparse X the Z step forms its gradient afresh at each use (solver._Direction),
    # each copy tied to a runtime tag by adding -0.0: the same bits as the one stored D of
    # the dense path, also on gathered columns and with a tag that is -0.0, NaN or inf.
    from jax.experimental import sparse as jsparse

    from sccase_jax.solver import z_step as ZS

    data, f0, hp = tiny_problem(3, m=30, n=12, k=3)
    st = init_state(data, f0, hp, SolverConfig())
    sparse = data._replace(X=jsparse.BCOO.fromdense(data.X), G=None)
    idx = jnp.asarray([3, 0, 7, 7], jnp.int32)

    @jax.jit
    def both(st, tags):
        ref = ZS._direction(st, data, hp)
        dirn = ZS._direction(st, sparse, hp)
        return ref.full(), ref.cols(idx), dirn.full(), [dirn.full(t) for t in tags], dirn.cols(idx)

    tags = [jnp.float64(0.25), jnp.float64(-0.0), jnp.float64(jnp.nan), jnp.float64(-jnp.inf)]
    D, Dc, D0, Dt, Dcs = both(st, tags)
    for A in [D0, *Dt]:
        np.testing.assert_array_equal(np.asarray(A), np.asarray(D))
    np.testing.assert_array_equal(np.asarray(Dcs), np.asarray(Dc))
    np.testing.assert_array_equal(np.asarray(ZS._negative_zero(jnp.nan, jnp.float32)).view(np.int32),
                                  np.int32(-(2**31)))


def test_x_tol_stops_once_the_iterate_settles():
    # At lam = 1e6 the first iteration replaces Z by about H^T H and H barely moves; the
    # second moves both by far less than 1e-4 of their size: the rule on the iterate fires
    # while F (whose rule is off here) still changes.
    data, f0, hp = tiny_problem(1, lam=1e6)
    res = run(data, f0, hp, SolverConfig(max_iter=50, tol=0.0, x_tol=1e-4))
    n = int(res.n_iter)
    assert 1 < n < 50 and int(res.status) == CONVERGED and bool(res.converged)
    assert float(res.x_change) < 1e-4
    # x_change is max(||dH|| / ||H||, ||dZ|| / ||Z||) of the last iteration: recompute it
    # from the iterates of n - 1 and n iterations (the same deterministic trajectory).
    prev = run(data, f0, hp, SolverConfig(max_iter=n - 1, tol=0.0))
    want = max(float(jnp.linalg.norm(res.H - prev.H) / jnp.linalg.norm(res.H)),
               float(jnp.linalg.norm(res.Z - prev.Z) / jnp.linalg.norm(res.Z)))
    assert float(res.x_change) == pytest.approx(want, rel=1e-6, abs=1e-12)
    # Off (x_tol = 0) the rule is not in the program: x_change stays inf, all iterations run.
    off = run(data, f0, hp, SolverConfig(max_iter=n + 3, tol=0.0))
    assert int(off.n_iter) == n + 3 and not np.isfinite(float(off.x_change))
    # Same iterates either way: the rule only decides when to stop.
    same = run(data, f0, hp, SolverConfig(max_iter=n, tol=0.0))
    np.testing.assert_array_equal(np.asarray(res.Z), np.asarray(same.Z))


def test_relative_step_is_the_largest_relative_change():
    from sccase_jax.solver.driver import relative_step

    data, f0, hp = tiny_problem(0)
    state = init_state(data, f0, hp, SolverConfig())
    H2, Z2 = f0.H * 1.01, f0.Z + 0.5 * jnp.abs(f0.Z).mean()
    got = float(relative_step(state, dict(H=H2, Z=Z2, W=f0.W * 7.0)))  # W is not measured
    want = max(float(jnp.linalg.norm(H2 - f0.H) / jnp.linalg.norm(H2)),
               float(jnp.linalg.norm(Z2 - f0.Z) / jnp.linalg.norm(Z2)))
    assert got == pytest.approx(want, rel=1e-10)
    assert float(relative_step(state, dict(H=f0.H, Z=f0.Z))) == 0.0
