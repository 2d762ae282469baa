"""The alternating solver: ``init_state``, ``update`` (one Z, W, H sweep) and ``run``.

One iteration, in Gram form (``G = X^T X`` fixed, nothing m x n is formed):

1. Z: gradient D from the cached ``G S``; exact quadratic step along D without the entries
   held at the bound (one ``G (P o R)`` product); projected, guarded move; the cache is
   updated from that product plus the projection's correction on the few columns where an
   entry is cut to 0 (``z_step="free"``, docs/model.md).  ``z_step="gradient"``: the
   paper's step along D, whose trial forms ``G S`` by a second product; ``"auto"``
   (default): the paper's step while the moves are large (from the start), then free.
2. W: gradient from ``E = X S H^T`` (m x k); exact step for the reference block (if any),
   then for the free block; each projected and guarded.  Then ``B = W^T X`` (k x n).
3. H: gradient from ``B S``; backtracking from ``h_step_init`` (paper) or the exact quartic
   step; trials cost k x n^2 each.

Every guarded move is accepted on ``F(new) - F(old)`` computed from differences of the
iterates (for Z the exact expansion ``<D, dZ> + <dS, G Sc - G S> + lam ||dZ||^2``, and the
like), never by comparing two rounded values of F: near convergence a step changes F far
below its float32 resolution, and comparing rounded values rejected good Z steps (each
rejected trial costs one more n x n x n product: 2.4x slower iterations measured at 4,000
cells) and froze Z.

So an iteration costs one n x n x n product (two with ``z_step="gradient"``, in the rough
first iterations and in those that form ``G S`` afresh) plus O(n^2 k + nnz(X) k).
Memory: besides the data (X, G and the boolean mask R) and the iterate Z (in the buffer of
Z0 with :data:`run_donated`), XLA's buffer plan of the whole fit holds about four and a
half n x n arrays of working memory with the default Z step and four with the paper's
(XLA:CPU, ``python -m experiments.memory_plan``): in the Z step the cache ``G S``, the gradient D,
and a product's operand and result (``P o R`` and ``G (P o R)``, which lives through the
line search); in the W and H steps the new Z (the previous one is kept for the non-finite
guard), its ``G S``, and ``S`` or ``Q = Z - H^T H``.  What keeps it there:
the mask is applied as a select (:func:`~sccase_jax.ops.masked`, no float copy of R); a Z
trial needs neither Q nor its change of S (``z_step._z_step_gradient``); masked reductions are
one elementwise pass into a dead buffer (:func:`~sccase_jax.ops.select_sum`); the H step's Q
does not share ``H^T H`` with the Z step (:func:`~sccase_jax.ops.gap`); the non-finite
guard does not keep the previous ``G S`` (:func:`~sccase_jax.solver.driver.advance`); three orderings that XLA
would otherwise choose differently: the gradient is formed inside each branch of the
``"auto"`` cond (``z_step.z_step_auto``), the free step's two masked reductions run one after
the other (``z_step._z_step_free``), and Q is formed only once S is no longer needed
(``wh_steps.h_move``).  Through sparse X (no G) the plan is about the same (4.1-4.3 n x n
arrays of temporaries at 1,000-2,000 cells): the products write into their operand's
buffer (:func:`~sccase_jax.ops.gram_matmul`) and the Z step forms its gradient afresh at
each use instead of keeping it (:class:`~sccase_jax.solver.z_step._Direction`).  ``run`` executes
the whole fit as one :func:`jax.lax.while_loop`, stopping on ``|dF| / |F| < tol``, at
``max_iter``, or on a non-finite F (the last finite iterate is kept and reported).

The loop itself (history, stopping rule, non-finite guard) is
:mod:`~sccase_jax.solver.driver`, shared with the other solvers; the moves are
:mod:`~sccase_jax.solver.z_step` and :mod:`~sccase_jax.solver.wh_steps`, each step rule
looked up by name in :mod:`~sccase_jax.solver.rules`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from sccase_jax.objectives.sccase import gram_loss
from sccase_jax.ops import gram_matmul, masked, wt_x
from sccase_jax.params import Data, Factors, Hyperparams, SolverConfig
from sccase_jax.solver import z_step  # noqa: F401  (registers the Z step rules)
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
from sccase_jax.solver.rules import get_rule
from sccase_jax.solver.wh_steps import h_move, w_move

__all__ = ["SolverState", "init_state", "run", "run_donated", "run_reporting", "update"]


SolverState = solver_state("SolverState", "W H Z GS B GS_drift rough", __name__, """Loop carry.

``GS = G (Z o R)`` and ``B = W^T X`` are caches of the current point; ``GS_drift`` the sum
of ``|d| ||P||`` of the Z moves since ``G S`` was last formed by a product; ``rough``: the
last Z move was large, the next one takes the paper's step (``z_step="auto"``); then the
driver's bookkeeping (:func:`~sccase_jax.solver.driver.tracked_fields`).""")


def init_state(data: Data, factors: Factors, hp: Hyperparams, config: SolverConfig):
    """State at the starting point; a non-finite F0 marks it ``NONFINITE`` at once.  The
    batch and depth terms are fitted over terms (:mod:`~sccase_jax.solver.over_terms`)."""
    if data.batch is not None or data.depth is not None:
        raise ValueError("the Gram-form solver fits scCASE and scCASER: fit the batch and "
                         "depth terms with solver.over_terms (sccase_jax.fit does)")
    W, H, Z = factors
    dtype = Z.dtype
    S = masked(Z, data.R)
    GS = gram_matmul(data, S)
    B = wt_x(data.X, W)
    F = gram_loss(S, GS, B, W, H, Z, data.P, data.M, hp)
    return SolverState(
        W=W, H=H, Z=Z, GS=GS, B=B, GS_drift=jnp.zeros((), dtype), rough=jnp.asarray(True),
        **tracked_fields(F, dtype, config),
    )


def update(state: SolverState, data: Data, hp: Hyperparams, config: SolverConfig):
    """One Z, W, H sweep; returns the next state (status and history updated)."""
    F_prev = state.loss
    F_cur = F_prev
    if config.rescale_h:
        s = jnp.sum(state.H, axis=1, keepdims=True)
        H = state.H / jnp.where(s > 0, s, 1)
        S0 = masked(state.Z, data.R)
        F_cur = gram_loss(S0, state.GS, state.B, state.W, H, state.Z, data.P, data.M, hp)
        state = state._replace(H=H, loss=F_cur)

    # Each step returns its exact change of F, computed from differences of the iterates
    # (see solver.z_step); their sum is the iteration's change, free of the rounding noise that
    # the difference of two recomputed F values carries in float32.
    zero = jnp.zeros((), F_prev.dtype)
    z_rule = get_rule("z_step", config.z_step)
    Z, dF_z, GS, GS_drift, stale, rough = z_rule(state, data, hp, config, zero)
    S = masked(Z, data.R)
    W, dF_w = w_move(state.W, state.H, S, data, hp, config, zero)
    B = wt_x(data.X, W)
    H, dF_h, sim = h_move(W, state.H, Z, S, B, hp, config, zero)
    # Here, with the Z step's arrays gone, a stale G S costs the fewest n x n arrays to form.
    GS = lax.cond(stale, lambda: gram_matmul(data, masked(Z, data.R)), lambda: GS)
    change = (F_cur - F_prev) + dF_z + dF_w + dF_h
    # The history records F recomputed in full at the new point; its similarity term
    # ||Z - H^T H||^2 from the H step (||Q||^2 at the new Z plus the exact change of the
    # accepted H move) saves a pass and an n x n product.
    F_new = gram_loss(S, GS, B, W, H, Z, data.P, data.M, hp, similarity=sim)
    carry = dict(W=W, H=H, Z=Z, GS=GS, B=B, GS_drift=GS_drift, rough=rough)
    return advance(
        state, carry, F_new, config, F_prev, change, caches=("GS", "B", "GS_drift", "rough")
    )


def _run(data: Data, factors0: Factors, hp: Hyperparams, config: SolverConfig = SolverConfig()):
    with matmul_precision(config):
        state = init_state(data, factors0, hp, config)
        return to_result(drive(state, lambda s: update(s, data, hp, config), config))


run = jax.jit(_run, static_argnames=("config",))
run.__doc__ = """Fit from ``factors0`` to convergence, ``max_iter`` or a non-finite F, on device.

``run(data, factors0, hp, config)``: jitted, ``config`` static.  ``factors0`` is left
intact; :data:`run_donated` is the same fit with ``factors0`` donated.
"""

run_donated = jax.jit(_run, static_argnames=("config",), donate_argnames=("factors0",))
run_donated.__doc__ = """:func:`run` with the buffers of ``factors0`` donated to the fit.

The n x n ``Z0`` buffer is then reused for the iterate instead of staying alive beside it
(one n x n array less at the peak); ``factors0`` must not be used afterwards.
:func:`sccase_jax.fit` uses it for the factors it creates itself.
"""


def _start(data: Data, factors0: Factors, hp: Hyperparams, config: SolverConfig):
    with matmul_precision(config):
        return init_state(data, factors0, hp, config)


def _steps(state: SolverState, data: Data, hp: Hyperparams, config: SolverConfig, until):
    with matmul_precision(config):
        return steps_until(state, lambda s: update(s, data, hp, config), until)


_start_donated = jax.jit(_start, static_argnames=("config",), donate_argnames=("factors0",))
_steps_donated = jax.jit(_steps, static_argnames=("config",), donate_argnames=("state",))


def run_reporting(data: Data, factors0: Factors, hp: Hyperparams, config: SolverConfig, report):
    """:data:`run_donated` with ``report(state)`` called on the host after every iteration:
    the same iterations, one jitted call each (:func:`~sccase_jax.solver.driver.report_each`).
    ``factors0`` is donated."""
    return report_each(lambda: _start_donated(data, factors0, hp, config),
                       lambda s, until: _steps_donated(s, data, hp, config, until), report, config)
