"""The loop every solver shares: history, stopping rule, iteration cap, non-finite guard.

Any solver whose state is a NamedTuple carrying the fields that :func:`tracked_fields`
makes (plus its own iterate, caches or optimiser state: :func:`solver_state` makes such a
class) runs in :func:`drive`, a
:func:`jax.lax.while_loop`, with each step returning its next state through
:func:`advance`: the same preallocated history of F, the stopping rules (``|dF| / |F| <
tol``, and with ``config.x_tol > 0`` the relative change of H and Z below ``x_tol``),
the ``max_iter`` cap and the guard that keeps the last finite iterate when F stops being
finite.  :func:`to_result` turns a final state into a
:class:`~sccase_jax.result.FitResult` of device arrays.  The alternating solver
(:mod:`~sccase_jax.solver.alternating`), the projected optax solver
(:mod:`~sccase_jax.solver.projected`) and the masked sweep members share it.
"""

from __future__ import annotations

import collections
import contextlib

import jax
import jax.numpy as jnp
from jax import lax

from sccase_jax import progress
from sccase_jax.params import SolverConfig
from sccase_jax.result import CONVERGED, MAX_ITER, NONFINITE, RUNNING, FitResult

__all__ = ["ITERATE", "advance", "drive", "matmul_precision", "relative_step", "report_each",
           "solver_state", "steps_until", "to_result", "tracked_fields"]

_TRACKED = ("initial_loss", "rel_change", "x_change", "iteration", "loss_history", "status")
# The fields of a state whose relative change the x_tol rule measures (those it has): what
# the enhanced layer and the embedding are built from.  W is left out: it keeps converging
# geometrically (by about a third an iteration) long after H and Z have settled, and no
# output but the peak loadings depends on it (docs/model.md, "Stopping").
ITERATE = ("H", "Z")


def solver_state(name: str, own: str, module: str, doc: str):
    """A solver's state class: a NamedTuple of its ``own`` fields (space-separated), then
    ``loss`` and the bookkeeping fields that :func:`tracked_fields` fills."""
    cls = collections.namedtuple(name, (*own.split(), "loss", *_TRACKED), module=module)
    cls.__doc__ = doc
    return cls


def tracked_fields(F0, dtype, config: SolverConfig) -> dict:
    """The bookkeeping fields of a fresh state with loss ``F0`` (``NONFINITE`` if not finite)."""
    F0 = jnp.asarray(F0, dtype)
    return dict(
        loss=F0,
        initial_loss=F0,
        rel_change=jnp.asarray(jnp.inf, dtype),
        x_change=jnp.asarray(jnp.inf, dtype),
        iteration=jnp.asarray(0, jnp.int32),
        loss_history=jnp.full((config.max_iter,), jnp.nan, dtype),
        # With max_iter = 0 the fit is the starting point: the loop never runs.
        status=jnp.where(
            jnp.isfinite(F0), RUNNING if config.max_iter > 0 else MAX_ITER, NONFINITE
        ).astype(jnp.int32),
    )


def relative_step(state, carry: dict):
    """``max(||new - old|| / ||new||)`` over the fields of :data:`ITERATE` that ``carry``
    sets: how far the last iteration moved the iterate, relative to its size (0 for a
    field that stays 0)."""
    rel = []
    for f in ITERATE:
        if f in carry:
            new, old = carry[f], getattr(state, f)
            d = new - old
            dd, nn = jnp.vdot(d, d), jnp.vdot(new, new)
            rel.append(jnp.where(dd > 0, jnp.sqrt(dd / jnp.maximum(nn, jnp.finfo(nn.dtype).tiny)), 0.0))
    return jnp.max(jnp.stack(rel))


def advance(
    state, carry: dict, F_new, config: SolverConfig, F_prev=None, change=None, caches=()
):
    """Next state from the solver-specific ``carry`` and the new objective value ``F_new``.

    Records ``F_new`` in the history, computes the relative change ``|change| / |F_prev|``
    (``F_prev`` defaults to ``state.loss``, ``change`` to ``F_new - F_prev``; a solver that
    knows its change of F more accurately passes it), with ``config.x_tol > 0`` the
    relative change of the iterate (:func:`relative_step`; otherwise it is not computed
    and stays ``inf``), and the status: converged when either falls below its tolerance.
    On a non-finite ``F_new`` every field that is not bookkeeping (the iterate, optimiser
    state and ``loss``) keeps its previous value, so the last finite iterate is what comes
    back.  The fields named in ``caches``
    are exempt: a non-finite F ends the fit, whose result never reads a cache, and
    restoring one would keep the previous value alive beside the new one to the end of the
    iteration (for ``G S`` one more n x n array at the solver's peak).
    """
    F_prev = state.loss if F_prev is None else F_prev
    finite = jnp.isfinite(F_new)
    change = F_new - F_prev if change is None else change
    rel = jnp.abs(change) / jnp.maximum(jnp.abs(F_prev), jnp.finfo(F_new.dtype).tiny)
    rel = jnp.where(jnp.isfinite(rel), rel, jnp.inf)
    it = state.iteration + 1
    settled = rel < config.tol
    x_change = state.x_change
    if config.x_tol > 0:
        x_change = relative_step(state, carry).astype(x_change.dtype)
        settled = settled | (x_change < config.x_tol)
    status = jnp.where(
        ~finite,
        NONFINITE,
        jnp.where(settled, CONVERGED, jnp.where(it >= config.max_iter, MAX_ITER, RUNNING)),
    ).astype(jnp.int32)
    new = state._replace(
        **carry,
        loss=F_new,
        rel_change=rel,
        x_change=x_change,
        iteration=it,
        loss_history=(
            state.loss_history.at[state.iteration].set(F_new)
            if state.loss_history.shape[0]  # an empty history (max_iter = 0) is never written
            else state.loss_history
        ),
        status=status,
    )
    keep = lambda a, b: jnp.where(finite, a, b)  # noqa: E731
    new = new._replace(
        **{
            f: jax.tree.map(keep, getattr(new, f), getattr(state, f))
            for f in new._fields
            if f not in _TRACKED and f not in caches
        }
    )
    if config.progress:
        jax.debug.callback(progress.report, it, F_new, rel, status, ordered=False)
    return new


def drive(state, step, config: SolverConfig):
    """Run ``state = step(state)`` in a :func:`jax.lax.while_loop` while the status is running.

    ``step`` must return the state through :func:`advance`.  Returns the final state with a
    run that ended on the cap marked ``MAX_ITER`` (also when ``max_iter == 0``).
    """
    state = lax.while_loop(lambda s: s.status == RUNNING, step, state)
    status = jnp.where(
        (state.status == RUNNING) & (state.iteration >= config.max_iter), MAX_ITER, state.status
    )
    return state._replace(status=status.astype(jnp.int32))


def steps_until(state, step, until):
    """``state = step(state)`` while the status is running and ``iteration < until``."""
    keep_going = lambda s: (s.status == RUNNING) & (s.iteration < until)  # noqa: E731
    return lax.while_loop(keep_going, step, state)


def report_each(start, advance_to, report, config: SolverConfig) -> FitResult:
    """A fit reported on the host: ``state = start()``, then ``state = advance_to(state,
    iteration + 1)`` (one jitted call an iteration) and ``report(state)`` until it stops.

    No host callback inside the compiled fit, so it goes into JAX's persistent compilation
    cache (:mod:`sccase_jax.jaxconfig`); ``config.progress`` must be off (the report
    replaces it)."""
    if config.progress:
        raise ValueError("run_reporting reports on the host: pass a config with progress=False")
    state = start()
    while int(state.status) == RUNNING:
        state = advance_to(state, state.iteration + 1)
        report(state)
    return to_result(state)


def to_result(state) -> FitResult:
    """The :class:`~sccase_jax.result.FitResult` (device arrays) of a final state: any state
    with ``W``, ``H``, ``Z`` and the tracked fields.  ``loss`` is the whole history."""
    return FitResult(
        W=state.W,
        H=state.H,
        Z=state.Z,
        loss=state.loss_history,
        initial_loss=state.initial_loss,
        n_iter=state.iteration,
        converged=(state.status == CONVERGED) & jnp.isfinite(state.loss),
        status=state.status,
        rel_change=state.rel_change,
        x_change=state.x_change,
    )


def matmul_precision(config: SolverConfig):
    """Context that sets the precision of the products traced inside it (``config.precision``)."""
    if config.precision is None:
        return contextlib.nullcontext()
    return jax.default_matmul_precision(config.precision)


