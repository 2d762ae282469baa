"""The registries of step rules: one function and one entry per rule.

A :class:`~sccase_jax.params.SolverConfig` names its rules (``z_step``, ``w_step``,
``h_step``); each solver looks each name up here.  Every name has a form for both solvers:
the Gram-form solver of the dense default fit (:mod:`~sccase_jax.solver.alternating`) and
the solver over loss terms on any layout of Z (:mod:`~sccase_jax.solver.over_terms`,
registered with ``over_terms=True``; its forms are stated against the objective and the
layout, so they hold for every term).  A new rule is one function
registered with :func:`step_rule`; the tests run every registered rule through the same
checks (exact reported change of F, monotone F with the guard, non-negative iterates).

The three kinds and what their functions compute:

``z_step``
    The whole Z move: ``rule(state, data, hp, config, F) -> (Z, F + change, G S, drift,
    stale, rough)`` (:mod:`~sccase_jax.solver.z_step`).
``w_step``
    The step length along one block's gradient D: ``rule(D, HHt, hp, extra) -> d``, with
    ``extra`` the reference block's additional ridge (alpha) or None for the free block
    (:mod:`~sccase_jax.solver.wh_steps`).
``h_step``
    Where the H line search starts and how it shrinks: ``rule(H, D, Q, HQ, BS, WtW, hp,
    config) -> (first step, shrink factor, trials)`` (:mod:`~sccase_jax.solver.wh_steps`).

Over terms the same three kinds take a :class:`~sccase_jax.solver.over_terms.Move` (the
objective, factors, data, layout and config): ``z_step``: ``rule(move, g, rough) ->
(direction, step)``; ``w_step``: ``rule(move, D) -> step``; ``h_step``: ``rule(move, D) ->
(first step, shrink factor, trials)``.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["H_STEPS", "RULES", "TERM_RULES", "W_STEPS", "Z_STEPS", "get_rule", "step_rule"]

Z_STEPS: dict[str, Callable] = {}
W_STEPS: dict[str, Callable] = {}
H_STEPS: dict[str, Callable] = {}
RULES = {"z_step": Z_STEPS, "w_step": W_STEPS, "h_step": H_STEPS}
TERM_RULES: dict[str, dict[str, Callable]] = {"z_step": {}, "w_step": {}, "h_step": {}}


def step_rule(kind: str, name: str, *, over_terms: bool = False):
    """Decorator: register a step rule of ``kind`` (``"z_step"``, ``"w_step"``, ``"h_step"``)
    under ``name``, for the solver over terms with ``over_terms``; a name already taken is
    refused."""
    table = (TERM_RULES if over_terms else RULES)[kind]

    def deco(fn):
        if name in table:
            raise ValueError(f"a {kind} rule named {name!r} is registered already")
        table[name] = fn
        return fn

    return deco


def get_rule(kind: str, name: str, *, over_terms: bool = False) -> Callable:
    """The registered rule, or a ValueError listing the registered names."""
    table = (TERM_RULES if over_terms else RULES)[kind]
    try:
        return table[name]
    except (KeyError, TypeError):
        raise ValueError(f"{kind} must be one of {sorted(table)}, got {name!r}") from None
