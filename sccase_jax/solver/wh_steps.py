"""The W and H moves of the alternating solver, and their registered step rules.

W: gradient from ``E = X S H^T`` (m x k); an exact step for the reference block (if any),
then for the free block, each projected and guarded (``w_step``: ``"exact"`` includes the
ridge ``gamma1`` in the step, ``"printed"`` is the paper's Eq. 8 without it).  H: gradient
from ``B S``; a projected line search whose start and shrinking the ``h_step`` rule says
(``"backtrack"``: the paper's from 0.2; ``"exact"``: the quartic's minimiser), each trial
costing k x n^2 (none when a bound rejects it, :func:`_h_trial_bound`).
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from sccase_jax.objectives.sccase import grad_h_gram, grad_w_gram
from sccase_jax.ops import gap, x_matmul
from sccase_jax.solver.linesearch import (
    exact_h_step,
    exact_w_step,
    line_search,
    quartic_h_coefficients,
)
from sccase_jax.solver.rules import get_rule, step_rule

__all__ = ["H_BOUND_MARGIN", "h_move", "h_step_backtrack", "h_step_exact", "w_move",
           "w_step_exact", "w_step_printed"]


def _sq(A):
    return jnp.vdot(A, A)


def w_move(W, H, S, data, hp, config, F_cur):
    """The W move: the reference block (W1) first, then the free block (W2), each an exact
    quadratic step along its block of the gradient (length from the ``w_step`` rule),
    projected and guarded; returns ``(W, F_cur + change)``."""
    E, P, M = x_matmul(data.X, S @ H.T), data.P, data.M
    step_length = get_rule("w_step", config.w_step)
    HHt = H @ H.T
    Mr = M[None, :]
    zero = jnp.zeros((), F_cur.dtype)

    def change_from(W0):
        def change(Wc, _d):
            # F(Wc) - F(W0) from differences (see the Z step), dW = Wc - W0.
            dW = Wc - W0
            dF = -2.0 * jnp.vdot(dW, E) + jnp.vdot(dW.T @ Wc + W0.T @ dW, HHt)
            dF = dF + hp.gamma1 * jnp.vdot(dW, Wc + W0)
            return dF - hp.alpha * jnp.vdot(dW * Mr, 2.0 * P - (Wc + W0) * Mr), None

        return change

    for mask, extra in ((Mr, hp.alpha), (1.0 - Mr, None)):
        D = grad_w_gram(W, E, HHt, P, M, hp.gamma1, hp.alpha) * mask
        d = step_length(D, HHt, hp, extra)
        W, dF, _ = line_search(
            W, D, d, 0.5, config.max_trials, change_from(W), zero, None,
            accept_any=not config.guard,
        )
        F_cur = F_cur + dF
    return W, F_cur


# A backtracking trial of the H step whose change of F is certainly positive is rejected
# without its one pass over Q (a k x n x n product): the Cauchy-Schwarz bound
# |<Q, E>| <= ||Q|| ||E|| gives a lower bound of the change that needs only k x k Grams.
# From the paper's first trial (0.2) the step is usually shrunk 8-9 times, and each of
# those trials is rejected by the bound alone.  The bound must clear this fraction of the
# change's largest term, so that rounding cannot make the exact change of a bound-rejected
# trial come out non-positive.
H_BOUND_MARGIN = 1e-4


def _h_trial_bound(dF_rest, e_e, qq, lam):
    """Lower bound of an H trial's change ``dF_rest + lam (||E||^2 - 2 <Q, E>)`` from
    ``e_e = ||E||^2`` and ``qq = ||Q||^2``, and the scale its margin is measured against."""
    q_bound = jnp.sqrt(qq * e_e)
    return dF_rest + lam * (e_e - 2.0 * q_bound), jnp.abs(dF_rest) + lam * (e_e + 2.0 * q_bound)


def h_move(W, H, Z, S, B, hp, config, F_cur):
    """The H move: a projected line search along the gradient, started and shrunk as the
    ``h_step`` rule says; returns ``(H, F_cur + change, ||Z - H^T H||^2 at the new H)``."""
    BS = B @ S
    WtW = W.T @ W

    # Q is formed from a Z tied to B S (0 x an entry of it, zero unless B S is not finite,
    # when F is not finite either), so that XLA cannot form it during the W step, while S
    # is still alive: 0.7 n x n arrays less in the plan of the default fit at 1,000-4,000
    # cells (with the orderings in _z_step and _z_step_free).
    Q = gap(Z + 0.0 * BS[0, 0], H)  # not Z - H.T @ H: see ops.gap
    qq = _sq(Q)
    HQ = H @ Q
    zero = jnp.zeros((), F_cur.dtype)

    def change(Hc, _d):
        # F(Hc) - F(H) from differences, as in the Z step, and without any n x n array:
        # with dH = Hc - H, E = Hc^T Hc - H^T H = U^T V (U = [dH; H], V = [Hc; dH]) and
        #   ||Z - Hc^T Hc||^2 - ||Q||^2 = ||E||^2 - 2 <Q, E>,
        #   ||E||^2 = <U U^T, V V^T>,  <Q, E> = <dH, Hc Q^T> + <dH, H Q>,
        # so a trial costs one k x n x n product (Hc Q^T) and k x k Grams, and none when
        # the bound |<Q, E>| <= ||Q|| ||E|| already makes the change positive.  The aux is
        # the change of ||Z - H^T H||^2, for F at the new point.
        dH = Hc - H
        U = jnp.concatenate([dH, H])
        V = jnp.concatenate([Hc, dH])
        e_e = jnp.vdot(U @ U.T, V @ V.T)
        dF = -2.0 * jnp.vdot(BS, dH) + jnp.vdot(WtW, dH @ Hc.T + H @ dH.T)
        dF = dF + hp.gamma2 * jnp.vdot(dH, Hc + H)
        low, scale = _h_trial_bound(dF, e_e, qq, hp.lam)

        def exact():
            HcQt = lax.dot_general(Hc, Q, (((1,), (1,)), ((), ())))  # Hc Q^T, k x n
            q_e = jnp.vdot(dH, HcQt) + jnp.vdot(dH, HQ)
            sim = e_e - 2.0 * q_e
            return dF + hp.lam * sim, sim

        return lax.cond(low > H_BOUND_MARGIN * scale, lambda: (low, zero), exact)

    D = grad_h_gram(BS, WtW, H, Q, hp.lam, hp.gamma2, HQ=HQ)
    d0, shrink, trials = get_rule("h_step", config.h_step)(H, D, Q, HQ, BS, WtW, hp, config)
    H, dF, dsim = line_search(H, D, d0, shrink, trials, change, zero, zero)
    return H, F_cur + dF, qq + dsim


# -- the registered rules -----------------------------------------------------------------

@step_rule("w_step", "exact")
def w_step_exact(D, HHt, hp, extra):
    """The exact line minimiser of F along D, the ridge ``gamma1`` (plus ``alpha`` on the
    reference block) included."""
    return exact_w_step(D, HHt, hp.gamma1 if extra is None else hp.gamma1 + extra)


@step_rule("w_step", "printed")
def w_step_printed(D, HHt, hp, extra):
    """The paper's printed Eq. 8 (and the released code): the minimiser without ``gamma1``."""
    g1 = jnp.zeros_like(hp.gamma1)
    return exact_w_step(D, HHt, g1 if extra is None else g1 + extra)


@step_rule("h_step", "backtrack")
def h_step_backtrack(H, D, Q, HQ, BS, WtW, hp, config):
    """The paper's: try ``h_step_init`` and shrink by ``h_step_shrink``, at most
    ``h_max_trials`` trials."""
    return config.h_step_init, config.h_step_shrink, config.h_max_trials


@step_rule("h_step", "exact")
def h_step_exact(H, D, Q, HQ, BS, WtW, hp, config):
    """The minimiser of the quartic ``F(H - d D)``, guarded by halving (``max_trials``)."""
    # Solve along the unit direction: the raw quartic coefficients overflow float32.
    norm = jnp.sqrt(_sq(D))
    U = D / jnp.where(norm > 0, norm, 1)
    t = exact_h_step(quartic_h_coefficients(H, U, Q, HQ, BS, WtW, hp.lam, hp.gamma2))
    return t / jnp.where(norm > 0, norm, 1), 0.5, config.max_trials
