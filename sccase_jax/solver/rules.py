"""The registries of step rules: one function and one entry per rule.

A :class:`~sccase_jax.params.SolverConfig` names its rules (``z_step``, ``w_step``,
``h_step``); the alternating solver looks each name up here.  A new rule is one function
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
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["H_STEPS", "RULES", "W_STEPS", "Z_STEPS", "get_rule", "step_rule"]

Z_STEPS: dict[str, Callable] = {}
W_STEPS: dict[str, Callable] = {}
H_STEPS: dict[str, Callable] = {}
RULES = {"z_step": Z_STEPS, "w_step": W_STEPS, "h_step": H_STEPS}


def step_rule(kind: str, name: str):
    """Decorator: register a step rule of ``kind`` (``"z_step"``, ``"w_step"``, ``"h_step"``)
    under ``name``; a name already taken is refused."""
    table = RULES[kind]

    def deco(fn):
        if name in table:
            raise ValueError(f"a {kind} rule named {name!r} is registered already")
        table[name] = fn
        return fn

    return deco


def get_rule(kind: str, name: str) -> Callable:
    """The registered rule, or a ValueError listing the registered names."""
    table = RULES[kind]
    try:
        return table[name]
    except (KeyError, TypeError):
        raise ValueError(f"{kind} must be one of {sorted(table)}, got {name!r}") from None
