r"""One alternating Z, W, H step over (layout, terms), on the shared driver.

The first piece of folding the support-restricted solver (:mod:`sccase_jax.support.solver`)
and the dense one onto the loss terms (:mod:`sccase_jax.terms`) and Z's layout
(:mod:`sccase_jax.layout`): nothing here knows which terms it fits or how Z is stored.

1. Z: the exact step along the gradient, ``t* = <g, g> / <g, Hess g>`` with the curvature from
   :func:`jax.jvp` of the gradient (:meth:`~sccase_jax.terms.Objective.exact_step`; for the
   built-in terms it equals the paper's Eq. 9-11 step, ``tests/test_terms.py``), projected
   onto ``Z >= 0`` and guarded (:func:`~sccase_jax.solver.linesearch.line_search`).
2. W: the same per block, the reference columns (``data.M``) first, then the others, as
   the dense solver's ``w_step="exact"``.
3. H: ``h_step="backtrack"`` (the paper's 0.2, shrunk), or ``"exact"``: the best positive
   minimiser of the quartic ``F(H - t U) - F(H)`` (``U`` the unit gradient) whose
   coefficients are its Taylor coefficients at 0, four nested :func:`jax.jvp` (exact for
   every term at most quartic in H along a line, as all built-ins are).

Each move is accepted on its exact change of F: for terms marked ``polynomial`` (every
built-in) the sum of F's Taylor coefficients along the move (nested :func:`jax.jvp`, to
degree 2 in Z and W and 4 in H), which is of the order of the change itself, as the
hand-written solvers' differences of the iterates are; for other terms ``F(new) - F(old)``.  Not yet here: the
"free" and "auto" Z rules (every ``z_step`` runs the gradient step, as in the support
solver), the printed W step, and the Gram cache ``G S`` that makes the dense Z step two
products.  ``fit`` and ``enhance`` run it for the support-restricted fit with scCASER's
reference, the batch term or the depth term (:func:`sccase_jax.support.fit.fit_support_terms`),
and on either layout for a fit with extra registered terms (``terms=``).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from sccase_jax.params import Factors, SolverConfig
from sccase_jax.solver.driver import advance, drive, matmul_precision, to_result, tracked_fields
from sccase_jax.solver.linesearch import exact_h_step, line_search, safe_div

__all__ = ["DEGREE", "TermsState", "init_state", "polynomial", "quartic_coefficients",
           "run", "taylor_coefficients", "update"]


class TermsState(NamedTuple):
    """Loop carry; ``Z`` is stored as the layout stores it (n x n, or n x d on a support)."""

    W: Any
    H: Any
    Z: Any
    loss: Any
    initial_loss: Any
    rel_change: Any
    x_change: Any
    iteration: Any
    loss_history: Any
    status: Any


def init_state(objective, data, layout, factors: Factors, config: SolverConfig) -> TermsState:
    F = objective.value(factors, data, layout)
    return TermsState(*factors, **tracked_fields(F, factors.W.dtype, config))


# The degree of F along a line in each block, for terms marked ``polynomial``: every
# built-in term is at most quadratic in Z and in W and at most quartic in H.
DEGREE = {"Z": 2, "W": 2, "H": 4}


def taylor_coefficients(objective, factors, data, layout, block: str, delta, order: int):
    """``(c1, ..., c_order)``, ``c_i = phi^(i)(0) / i!`` of ``phi(s) = F(x + s delta)`` in
    ``block``: nested :func:`jax.jvp`, no difference of two values of F."""
    x = getattr(factors, block)

    def phi(t):
        return objective.value(factors._replace(**{block: x + t * delta}), data, layout)

    def deriv(f):
        return lambda t: jax.jvp(f, (t,), (jnp.ones_like(t),))[1]

    t0 = jnp.zeros((), x.dtype)
    out, f, fact = [], phi, 1.0
    for i in range(1, order + 1):
        f, fact = deriv(f), fact * i
        out.append(f(t0) / fact)
    return tuple(out)


def quartic_coefficients(objective, factors, data, layout, block: str, U):
    """``(c1, c2, c3, c4)``: the Taylor coefficients at 0 of ``F(x - t U)`` in ``block``."""
    return taylor_coefficients(objective, factors, data, layout, block, -U, 4)


def polynomial(objective) -> bool:
    """Whether every term is marked polynomial (of the degrees of :data:`DEGREE`)."""
    return all(getattr(t, "polynomial", False) for t in objective.terms)


def _move(objective, f: Factors, data, layout, block: str, D, d0, shrink, trials, config, F_here):
    """Projected, guarded line search ``max(x - d D, 0)`` in ``block``; ``(x_new, dF)``.

    A trial's change of F is the sum of F's Taylor coefficients along the move when every
    term is polynomial (exact, and of the order of the change itself: no cancellation of
    two large values of F, as in the hand-written solvers), else ``F(new) - F(old)``.
    """
    zero = jnp.zeros((), F_here.dtype)
    x = getattr(f, block)
    exact = polynomial(objective)

    def change(xc, _d):
        if exact:
            return sum(taylor_coefficients(objective, f, data, layout, block, xc - x,
                                           DEGREE[block])), None
        return objective.value(f._replace(**{block: xc}), data, layout) - F_here, None

    x_new, dF, _ = line_search(getattr(f, block), D, d0, shrink, trials, change, zero, None,
                               accept_any=not config.guard)
    return x_new, dF


def update(state: TermsState, objective, data, layout, config: SolverConfig) -> TermsState:
    """One Z, W, H sweep of the terms' objective on the layout."""
    F_prev = state.loss
    f = Factors(state.W, state.H, state.Z)
    F_cur = F_prev
    if config.rescale_h:
        s = jnp.sum(f.H, axis=1, keepdims=True)
        f = f._replace(H=f.H / jnp.where(s > 0, s, 1))
        F_cur = objective.value(f, data, layout)
    change = F_cur - F_prev

    D = objective.grad(f, data, layout).Z
    d = objective.exact_step(f, data, layout, "Z", -D)
    Z, dF = _move(objective, f, data, layout, "Z", D, d, 0.5, config.max_trials, config, F_cur)
    f, F_cur, change = f._replace(Z=Z), F_cur + dF, change + dF

    M = getattr(data, "M", None)
    blocks = (None,) if M is None else (M[None, :], 1.0 - M[None, :])
    for mask in blocks:
        D = objective.grad(f, data, layout).W
        D = D if mask is None else D * mask
        d = objective.exact_step(f, data, layout, "W", -D)
        W, dF = _move(objective, f, data, layout, "W", D, d, 0.5, config.max_trials, config, F_cur)
        f, F_cur, change = f._replace(W=W), F_cur + dF, change + dF

    D = objective.grad(f, data, layout).H
    if config.h_step == "exact":
        norm = jnp.sqrt(jnp.vdot(D, D))
        U = D / jnp.where(norm > 0, norm, 1)
        t = exact_h_step(quartic_coefficients(objective, f, data, layout, "H", U))
        d0, shrink, trials = safe_div(t, norm), 0.5, config.max_trials
    elif config.h_step == "backtrack":
        d0, shrink, trials = config.h_step_init, config.h_step_shrink, config.h_max_trials
    else:
        raise ValueError(f"h_step {config.h_step!r} has no form over terms yet")
    H, dF = _move(objective, f, data, layout, "H", D, d0, shrink, trials, config, F_cur)
    f, change = f._replace(H=H), change + dF

    F_new = objective.value(f, data, layout)
    return advance(state, dict(W=f.W, H=f.H, Z=f.Z), F_new, config, F_prev, change)


def _run(objective, data, layout, factors0: Factors, config: SolverConfig = SolverConfig()):
    if config.w_step != "exact":
        raise ValueError(f"w_step {config.w_step!r} has no form over terms yet (only 'exact')")
    with matmul_precision(config):
        state = init_state(objective, data, layout, factors0, config)
        return to_result(drive(state, lambda s: update(s, objective, data, layout, config), config))


run = jax.jit(_run, static_argnames=("config",))
run.__doc__ = """The whole fit of ``objective`` (a :class:`~sccase_jax.terms.Objective`) on
``layout``, jitted: ``run(objective, data, layout, factors0, config)``; returns a
:class:`~sccase_jax.result.FitResult` whose ``Z`` is stored as the layout stores it."""
