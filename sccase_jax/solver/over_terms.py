r"""The alternating Z, W, H solver over (layout, terms), on the shared driver.

Nothing here knows which terms it fits (:mod:`sccase_jax.terms`) or how Z is stored
(:mod:`sccase_jax.layout`): every fit with Z on a support, and every fit with extra
registered terms, runs this one loop.  Each move is a projected, guarded line search along
a direction that a registered step rule (:mod:`~sccase_jax.solver.rules`, ``over_terms``)
chooses from the objective alone:

1. Z (``z_step``): ``"gradient"``, the exact step along the gradient ``g``, ``t* = <g, g> /
   <g, Hess g>`` with the curvature from :func:`jax.jvp` of the gradient (for the built-in
   terms the paper's Eq. 9-11 step, ``tests/test_terms.py``); ``"free"``, the exact step
   along ``g`` without the entries held at the bound (``Z = 0``, ``g > 0``), which the
   projection would leave in place; ``"auto"``, the gradient step while the last move was
   rough (from the start, and after a move of more than ``Z_REFRESH`` of ``||Z||``), else
   the free one (as the Gram-form solver).
2. W (``w_step``): per block, the reference columns (``data.M``) first, then the others:
   ``"exact"``, the minimiser along the block's gradient; ``"printed"``, the paper's printed
   Eq. 8 (the curvature without the ``ridge_w`` term).
3. H (``h_step``): ``"backtrack"`` (the paper's 0.2, shrunk), or ``"exact"``: the best
   positive minimiser of the quartic ``F(H - t U) - F(H)`` (``U`` the unit gradient), its
   first coefficient ``-|g|`` and the others F's Taylor coefficients, nested :func:`jax.jvp`
   (exact for every term at most quartic in H along a line, as all built-ins are).

Each move is accepted on its exact change of F: for terms marked ``polynomial`` (every
built-in) ``<g, delta>`` plus the higher Taylor coefficients along the move
(:meth:`~sccase_jax.terms.Term.higher`: half the curvature in Z and W, nested
:func:`jax.jvp` to degree 4 in H unless a term writes them in closed form), which are of
the order of the change itself: no difference of two large values of F; for other terms
``F(new) - F(old)``.  None of these needs the gradient's value again, so a step costs the
gradients and the curvature products, not more products with X.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from sccase_jax.params import Factors, SolverConfig
from sccase_jax.solver.driver import (
    advance,
    drive,
    matmul_precision,
    report_each,
    solver_state,
    steps_until,
    to_result,
    tracked_fields,
)
from sccase_jax.solver.linesearch import exact_h_step, line_search, safe_div
from sccase_jax.solver.rules import get_rule, step_rule
from sccase_jax.solver.z_step import Z_REFRESH
from sccase_jax.terms.base import DEGREE, taylor_coefficients

__all__ = ["DEGREE", "Move", "TermsState", "init_state", "polynomial", "quartic_coefficients",
           "run", "run_reporting", "taylor_coefficients", "update"]


TermsState = solver_state("TermsState", "W H Z gZ rough", __name__, """Loop carry.

``Z`` is stored as the layout stores it (n x n, or n x d on a support); ``gZ``: F's
gradient in Z at the iterate, formed with F at the end of the previous iteration (on a
dense layout the two share the one n x n x n product ``G S``); ``rough``: the last Z move
was large (the ``"auto"`` Z rule then takes the gradient step); then the driver's
bookkeeping (:func:`~sccase_jax.solver.driver.tracked_fields`).""")


class Move(NamedTuple):
    """What a step rule over terms reads: the objective at ``factors`` on ``layout``."""

    objective: Any
    factors: Factors
    data: Any
    layout: Any
    config: SolverConfig

    def curvature(self, block: str, D, objective=None):
        """``<D, Hess D>`` in ``block`` (of ``objective``, default this move's)."""
        obj = self.objective if objective is None else objective
        return obj.curvature(self.factors, self.data, self.layout, block, D)


def _value_grad_z(objective, factors, data, layout):
    """F and its gradient in Z at ``factors`` (:meth:`~sccase_jax.terms.Objective.value_and_grad`:
    the data term forms ``G S`` once for both on a dense layout)."""
    F, g = objective.value_and_grad(factors, data, layout)
    return F, g.Z


def init_state(objective, data, layout, factors: Factors, config: SolverConfig) -> TermsState:
    F, gZ = _value_grad_z(objective, factors, data, layout)
    return TermsState(*factors, gZ=gZ, rough=jnp.asarray(True),
                      **tracked_fields(F, factors.W.dtype, config))


def quartic_coefficients(objective, factors, data, layout, block: str, U, g=None):
    """``(c1, c2, c3, c4)``: the Taylor coefficients at 0 of ``F(x - t U)`` in ``block``
    (``c1 = -<g, U>`` from the gradient ``g`` when given)."""
    if g is None:
        return taylor_coefficients(objective, factors, data, layout, block, -U, 4)
    return (-jnp.vdot(g, U), *taylor_coefficients(objective, factors, data, layout, block, -U, 4,
                                                   first=2))


def polynomial(objective) -> bool:
    """Whether every term is marked polynomial (of the degrees of :data:`DEGREE`)."""
    return all(getattr(t, "polynomial", False) for t in objective.terms)


def _move(mv: Move, block: str, g, P, d0, shrink, trials, F_here, accept_any):
    """Projected, guarded line search ``max(x - d P, 0)`` in ``block``; ``(x_new, dF)``.

    ``g``: the block's gradient at ``x``.  A trial's change of F is ``<g, delta>`` plus the
    higher Taylor coefficients along the move when every term is polynomial (exact, and of
    the order of the change itself), else ``F(new) - F(old)``.
    """
    objective, f, data, layout = mv.objective, mv.factors, mv.data, mv.layout
    x = getattr(f, block)
    exact = polynomial(objective)

    def change(xc, _d):
        if not exact:
            return objective.value(f._replace(**{block: xc}), data, layout) - F_here, None
        delta = xc - x
        return jnp.vdot(g, delta) + objective.higher(f, data, layout, block, delta), None

    x_new, dF, _ = line_search(x, P, d0, shrink, trials, change, jnp.zeros((), F_here.dtype),
                               None, accept_any=accept_any)
    return x_new, dF


def update(state: TermsState, objective, data, layout, config: SolverConfig,
           components=None) -> TermsState:
    """One Z, W, H sweep of the terms' objective on the layout; ``components`` (k, 0/1):
    the columns of W and rows of H that move (the others stay as they are: a sweep's
    members padded to its largest k)."""
    F_prev = state.loss
    f = Factors(state.W, state.H, state.Z)
    F_cur, g = F_prev, state.gZ
    if config.rescale_h:
        s = jnp.sum(f.H, axis=1, keepdims=True)
        f = f._replace(H=f.H / jnp.where(s > 0, s, 1))
        F_cur, g = _value_grad_z(objective, f, data, layout)
    change = F_cur - F_prev

    def mv():
        return Move(objective, f, data, layout, config)

    P, d = get_rule("z_step", config.z_step, over_terms=True)(mv(), g, state.rough)
    Z, dF = _move(mv(), "Z", g, P, d, 0.5, config.max_trials, F_cur, not config.guard)
    dZ = Z - f.Z
    rough = jnp.vdot(dZ, dZ) > Z_REFRESH**2 * jnp.vdot(f.Z, f.Z)
    f, F_cur, change = f._replace(Z=Z), F_cur + dF, change + dF

    M = getattr(data, "M", None)
    blocks = (None,) if M is None else (M[None, :], 1.0 - M[None, :])
    w_rule = get_rule("w_step", config.w_step, over_terms=True)
    for mask in blocks:
        g = objective.grad(f, data, layout).W
        D = g if mask is None else g * mask
        D = D if components is None else D * components[None, :]
        W, dF = _move(mv(), "W", g, D, w_rule(mv(), D), 0.5, config.max_trials, F_cur,
                      not config.guard)
        f, F_cur, change = f._replace(W=W), F_cur + dF, change + dF

    g = objective.grad(f, data, layout).H
    D = g if components is None else g * components[:, None]
    d0, shrink, trials = get_rule("h_step", config.h_step, over_terms=True)(mv(), D)
    H, dF = _move(mv(), "H", g, D, d0, shrink, trials, F_cur, False)
    f, change = f._replace(H=H), change + dF

    F_new, gZ = _value_grad_z(objective, f, data, layout)
    return advance(state, dict(W=f.W, H=f.H, Z=f.Z, gZ=gZ, rough=rough), F_new, config, F_prev,
                   change, caches=("gZ",))


# -- the step rules over terms ---------------------------------------------------------------

def _exact_along(mv: Move, g, P):
    """``(P, <g, P> / <P, Hess P>)``: the exact step of ``Z - t P``."""
    return P, safe_div(jnp.vdot(g, P), mv.curvature("Z", P))


@step_rule("z_step", "gradient", over_terms=True)
def z_gradient(mv: Move, g, rough):
    """The paper's step: exact along the full gradient (Eq. 9-11 for the built-in terms)."""
    return _exact_along(mv, g, g)


def _free_direction(Z, g, rough=False):
    """The gradient without the entries held at the bound (``Z = 0``, ``g > 0``); the whole
    gradient where ``rough``."""
    held = (Z <= 0) & (g > 0) & jnp.logical_not(rough)
    return jnp.where(held, jnp.zeros((), g.dtype), g)


@step_rule("z_step", "free", over_terms=True)
def z_free(mv: Move, g, rough):
    """Exact along the gradient without the entries held at the bound (``Z = 0``, ``g > 0``)."""
    return _exact_along(mv, g, _free_direction(mv.factors.Z, g))


@step_rule("z_step", "auto", over_terms=True)
def z_auto(mv: Move, g, rough):
    """The gradient step while the last move was rough (from the start), else the free one.

    The direction is chosen before its one curvature product (a select, not a ``cond``): a
    vmapped fit, whose members are rough or not each, would otherwise run both branches and
    pay the curvature twice."""
    return _exact_along(mv, g, _free_direction(mv.factors.Z, g, rough))


@step_rule("w_step", "exact", over_terms=True)
def w_exact(mv: Move, D):
    """The minimiser of F along the block's gradient D."""
    return safe_div(jnp.vdot(D, D), mv.curvature("W", D))


@step_rule("w_step", "printed", over_terms=True)
def w_printed(mv: Move, D):
    """The paper's printed Eq. 8 (and the released code): the minimiser without the W ridge."""
    rest = type(mv.objective)(tuple(t for t in mv.objective.terms if getattr(t, "name", "") != "ridge_w"))
    return safe_div(jnp.vdot(D, D), mv.curvature("W", D, rest))


@step_rule("h_step", "backtrack", over_terms=True)
def h_backtrack(mv: Move, D):
    """The paper's: try ``h_step_init`` and shrink by ``h_step_shrink``."""
    c = mv.config
    return c.h_step_init, c.h_step_shrink, c.h_max_trials


@step_rule("h_step", "exact", over_terms=True)
def h_exact(mv: Move, D):
    """The best positive minimiser of the quartic along the unit gradient, then halved."""
    norm = jnp.sqrt(jnp.vdot(D, D))
    U = D / jnp.where(norm > 0, norm, 1)
    t = exact_h_step(quartic_coefficients(mv.objective, mv.factors, mv.data, mv.layout, "H", U, g=D))
    return safe_div(t, norm), 0.5, mv.config.max_trials


def _check_rules(config: SolverConfig) -> None:
    """Every rule the config names has a form over terms (a ValueError naming it if not)."""
    for kind in ("z_step", "w_step", "h_step"):
        get_rule(kind, getattr(config, kind), over_terms=True)


def _run(objective, data, layout, factors0: Factors, config: SolverConfig = SolverConfig(),
         components=None):
    _check_rules(config)
    with matmul_precision(config):
        state = init_state(objective, data, layout, factors0, config)
        step = lambda s: update(s, objective, data, layout, config, components)  # noqa: E731
        return to_result(drive(state, step, config))


run = jax.jit(_run, static_argnames=("config",))
run.__doc__ = """The whole fit of ``objective`` (a :class:`~sccase_jax.terms.Objective`) on
``layout``, jitted: ``run(objective, data, layout, factors0, config, components=None)``
(``components``: see :func:`update`); returns a :class:`~sccase_jax.result.FitResult`
whose ``Z`` is stored as the layout stores it."""


def _steps(state, objective, data, layout, config: SolverConfig, until):
    with matmul_precision(config):
        return steps_until(state, lambda s: update(s, objective, data, layout, config), until)


def _start(objective, data, layout, factors0, config: SolverConfig):
    with matmul_precision(config):
        return init_state(objective, data, layout, factors0, config)


_start_jit = jax.jit(_start, static_argnames=("config",))
_steps_jit = jax.jit(_steps, static_argnames=("config",), donate_argnames=("state",))


def run_reporting(objective, data, layout, factors0: Factors, config: SolverConfig, report):
    """:data:`run` with ``report(state)`` called on the host after every iteration
    (:func:`~sccase_jax.solver.driver.report_each`)."""
    _check_rules(config)
    return report_each(lambda: _start_jit(objective, data, layout, factors0, config),
                       lambda s, until: _steps_jit(s, objective, data, layout, config, until),
                       report, config)
