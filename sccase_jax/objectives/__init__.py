"""Objectives: scCASE / scCASER in direct and Gram form with their analytic gradients
(:mod:`~sccase_jax.objectives.sccase`), and the registry of objectives that the projected
optax solver fits with :func:`jax.grad` (:mod:`~sccase_jax.objectives.registry`)."""

from sccase_jax.objectives.registry import (
    BUILTIN,
    OBJECTIVES,
    Objective,
    get_objective,
    register_objective,
)

__all__ = ["BUILTIN", "OBJECTIVES", "Objective", "get_objective", "register_objective"]
