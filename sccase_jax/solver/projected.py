"""The projected optax solver: any registered objective, its gradient from :func:`jax.grad`.

:func:`run_variant` minimises an objective of :mod:`sccase_jax.objectives.registry` by
projected gradient: the step from an optax optimiser (Adam by default), and after every
step W, H and Z are projected onto ``>= 0``.  It runs in the driver every solver shares
(:func:`sccase_jax.solver.driver.drive`): the same history, ``|dF| / |F| < tol`` stopping
rule, ``max_iter`` cap, non-finite guard and :class:`~sccase_jax.result.FitResult`.  One
iteration is one joint optimiser step on (W, H, Z).  Unlike the alternating solver the
loss is not guaranteed to decrease monotonically (optimiser steps are not line searches),
and the objective uses the direct form, so each gradient costs O(m n^2) (X S is formed)
instead of the Gram form's O(n^3 + nnz(X) k): a research tool for small and medium data.
"""

from __future__ import annotations

from functools import lru_cache, partial

import jax
import optax

from sccase_jax.objectives.registry import get_objective
from sccase_jax.params import Data, Factors, SolverConfig
from sccase_jax.solver.driver import (
    advance,
    drive,
    matmul_precision,
    solver_state,
    to_result,
    tracked_fields,
)
from sccase_jax.solver.linesearch import project

__all__ = [
    "VariantState",
    "default_optimizer",
    "init_variant_state",
    "member_solver",
    "run_variant",
    "variant_update",
]


def default_optimizer(learning_rate: float = 1e-3):
    """Adam: its per-coordinate scaling copes with lam ~ 1e6 next to weights ~ 1."""
    return optax.adam(learning_rate)


VariantState = solver_state("VariantState", "W H Z grads opt_state", __name__, """Loop carry
of the projected-gradient solver: the iterate, the gradient at it (reused by the next
step), the optimiser's state, then the driver's bookkeeping.""")


def _value_and_grad(objective, data, hp):
    def F(f):
        return objective.loss(data.X, f.Z, data.R, f.W, f.H, hp)

    return jax.value_and_grad(F)


def init_variant_state(objective, data: Data, factors: Factors, hp, optimizer, config: SolverConfig):
    """State at ``factors``: F, its gradient and the optimiser's initial state."""
    objective = get_objective(objective)
    F, g = _value_and_grad(objective, data, hp)(factors)
    return VariantState(
        W=factors.W,
        H=factors.H,
        Z=factors.Z,
        grads=g,
        opt_state=optimizer.init(factors),
        **tracked_fields(F, factors.Z.dtype, config),
    )


def variant_update(state: VariantState, objective, data: Data, hp, optimizer, config, mask=None):
    """One optimiser step on (W, H, Z), projected onto ``>= 0`` (and onto the component mask)."""
    objective = get_objective(objective)
    f = Factors(state.W, state.H, state.Z)
    updates, opt_state = optimizer.update(state.grads, state.opt_state, f)
    W, H, Z = jax.tree.map(project, optax.apply_updates(f, updates))
    if mask is not None:
        W, H = W * mask[None, :], H * mask[:, None]
    new = Factors(W, H, Z)
    F, g = _value_and_grad(objective, data, hp)(new)
    return advance(state, dict(W=W, H=H, Z=Z, grads=g, opt_state=opt_state), F, config)


def _run(data, factors0, hp, mask, config, objective, optimizer):
    step = lambda s: variant_update(s, objective, data, hp, optimizer, config, mask)  # noqa: E731
    with matmul_precision(config):
        state = init_variant_state(objective, data, factors0, hp, optimizer, config)
        return to_result(drive(state, step, config))


@partial(jax.jit, static_argnames=("objective", "optimizer", "config"))
def run_variant(data: Data, factors0: Factors, hp: dict, *, objective, optimizer=None,
                config: SolverConfig = SolverConfig()):
    """Minimise ``objective`` from ``factors0`` by projected optax steps; returns a
    :class:`~sccase_jax.result.FitResult` of device arrays.

    ``objective`` is an :class:`Objective` (a registered name works outside ``jit``: use
    :func:`get_objective`), ``hp`` a dict of its weights (:meth:`Objective.hyper`),
    ``optimizer`` an optax ``GradientTransformation`` (default :func:`default_optimizer`).
    ``data.X`` must be dense.
    """
    return _run(data, factors0, hp, None, config, get_objective(objective),
                optimizer or default_optimizer())


@lru_cache(maxsize=64)
def member_solver(objective, optimizer=None):
    """Per-member solver for :func:`sccase_jax.sweep` (``solver=``)."""
    objective = get_objective(objective)
    optimizer = optimizer or default_optimizer()

    def solve(data, factors0, hp, mask, config):
        return _run(data, factors0, hp, mask, config, objective, optimizer)

    solve.objective = objective
    return solve
