"""Every registered step rule passes the same checks (as every registered objective does).

The parameters come from the registries themselves (``sccase_jax.solver.rules``), so a rule
registered in the package is checked without touching this file: in float64 the move it
makes reports the exact change of F (the full objective recomputed at the new point), F
does not increase under the guard, the iterates stay non-negative, and a whole jitted fit
with the rule runs with a monotone history.
"""

import jax.numpy as jnp
import numpy as np
import pytest
from helpers import tiny_problem

from sccase_jax import ops
from sccase_jax.objectives.sccase import gram_loss, similarity_term
from sccase_jax.ops import masked
from sccase_jax.params import SolverConfig
from sccase_jax.solver import H_STEPS, W_STEPS, Z_STEPS, get_rule, init_state, run
from sccase_jax.solver.wh_steps import h_move, w_move

RULES = [("z_step", n) for n in sorted(Z_STEPS)] + [("w_step", n) for n in sorted(W_STEPS)] + [
    ("h_step", n) for n in sorted(H_STEPS)]


def test_the_documented_rules_are_registered():
    assert {"gradient", "free", "auto"} <= set(Z_STEPS)
    assert {"exact", "printed"} <= set(W_STEPS) and {"backtrack", "exact"} <= set(H_STEPS)
    with pytest.raises(ValueError, match="z_step must be one of"):
        get_rule("z_step", "nope")


@pytest.mark.parametrize("k_ref", [0, 1])
@pytest.mark.parametrize(("kind", "name"), RULES)
def test_rule_reports_the_exact_change_of_f_and_never_raises_it(kind, name, k_ref):
    data, f0, hp = tiny_problem(5, k_ref=k_ref)
    cfg = SolverConfig(**{kind: name})
    st = init_state(data, f0, hp, cfg)

    def full(Sm, GS, B, W, H, Z):
        return float(gram_loss(Sm, GS, B, W, H, Z, data.P, data.M, hp))

    Z, F1, GS, _, stale, _ = get_rule("z_step", cfg.z_step)(st, data, hp, cfg, st.loss)
    Sm = masked(Z, data.R)
    if not bool(stale):
        np.testing.assert_allclose(np.asarray(GS), np.asarray(data.G @ Sm), rtol=1e-12, atol=1e-14)
    GS = data.G @ Sm
    assert float(F1) == pytest.approx(full(Sm, GS, st.B, st.W, st.H, Z), rel=1e-12)
    W, F2 = w_move(st.W, st.H, Sm, data, hp, cfg, F1)
    B = ops.wt_x(data.X, W)
    assert float(F2) == pytest.approx(full(Sm, GS, B, W, st.H, Z), rel=1e-12)
    H, F3, sim = h_move(W, st.H, Z, Sm, B, hp, cfg, F2)
    assert float(F3) == pytest.approx(full(Sm, GS, B, W, H, Z), rel=1e-12)
    assert float(sim) == pytest.approx(float(similarity_term(Z, H)), rel=1e-10)
    assert float(F3) <= float(F2) <= float(F1) <= float(st.loss)
    for A in (Z, W, H):
        assert float(jnp.min(A)) >= 0


@pytest.mark.parametrize(("kind", "name"), RULES)
def test_a_whole_fit_with_the_rule_is_monotone(kind, name):
    data, f0, hp = tiny_problem(6)
    res = run(data, f0, hp, SolverConfig(max_iter=15, tol=0.0, **{kind: name}))
    hist = np.concatenate([[float(res.initial_loss)], np.asarray(res.loss)[: int(res.n_iter)]])
    assert int(res.n_iter) == 15 and np.all(np.isfinite(hist))
    assert np.all(np.diff(hist) <= 1e-12 * np.abs(hist[:-1]))
    assert hist[-1] < hist[0]
