"""The solvers, each one jitted :func:`jax.lax.while_loop` over pure steps.

- :mod:`~sccase_jax.solver.driver`: the loop every solver shares (history, stopping rule,
  iteration cap, non-finite guard) and :func:`to_result`;
- :mod:`~sccase_jax.solver.over_terms`: the alternating Z, W, H solver over (layout, terms),
  the solver of every fit with Z on a support (:class:`~sccase_jax.layout.SupportLayout`)
  and of every fit with the batch term, the depth term or extra registered terms, on
  either layout of Z: any sum of loss
  terms (:mod:`sccase_jax.terms`), each move's change of F from the gradient and the
  terms' higher Taylor coefficients;
- :mod:`~sccase_jax.solver.alternating`: the dense fit's fast path, the paper's alternating
  Z, W, H solver in Gram form (:func:`run`; the cache ``G S`` makes the Z step two
  products), for a dense Z and scCASE or scCASER alone; its moves in
  :mod:`~sccase_jax.solver.z_step` and :mod:`~sccase_jax.solver.wh_steps`, their step sizes
  and guarded line search in :mod:`~sccase_jax.solver.linesearch`;
- :mod:`~sccase_jax.solver.rules`: the step rules registered by name (``z_step``,
  ``w_step``, ``h_step``), each with a form for both solvers (``over_terms=True`` for the
  solver over terms);
- :mod:`~sccase_jax.solver.projected`: the projected optax solver for any registered
  objective (:func:`run_variant`).
"""

from sccase_jax.solver.alternating import SolverState, init_state, run, run_donated, update
from sccase_jax.solver.driver import advance, drive, matmul_precision, to_result, tracked_fields
from sccase_jax.solver.projected import member_solver, run_variant
from sccase_jax.solver.rules import H_STEPS, W_STEPS, Z_STEPS, get_rule, step_rule

__all__ = [
    "H_STEPS",
    "W_STEPS",
    "Z_STEPS",
    "SolverState",
    "advance",
    "drive",
    "get_rule",
    "init_state",
    "matmul_precision",
    "member_solver",
    "run",
    "run_donated",
    "run_variant",
    "step_rule",
    "to_result",
    "tracked_fields",
    "update",
]
