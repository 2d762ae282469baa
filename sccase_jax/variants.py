r"""Loss variants: new objectives fitted by projected gradient without hand-written gradients.

An *objective* is a pure function

.. code-block:: python

    loss(X, Z, R, W, H, hp) -> scalar

of the dense data ``X`` (peaks x cells), the similarity ``Z`` and mask ``R`` (cells x
cells), the factors ``W`` (peaks x k), ``H`` (k x cells) and a dict ``hp`` of scalar
weights (array leaves, so they can be vmapped).  :func:`register_objective` adds one to
:data:`OBJECTIVES` with the default values of its weights; the tests then run the gradient,
jit, vmap and dtype checks on it automatically.

:func:`run_variant` minimises any objective by projected gradient: the gradient comes from
:func:`jax.grad`, the step from an optax optimiser (Adam by default), and after every step
W, H and Z are projected onto ``>= 0``.  It shares the analytic solver's while-loop driver
(:func:`sccase_jax.solver.drive`): the same history, ``|dF| / |F| < tol`` stopping rule,
``max_iter`` cap, non-finite guard and :class:`~sccase_jax.solver.Result`.  One iteration
is one joint optimiser step on (W, H, Z).  Unlike the analytic solver the loss is not
guaranteed to decrease monotonically (optimiser steps are not line searches), and the
objective uses the direct form, so each gradient costs O(m n^2) (X S is formed) instead of
the Gram form's O(n^3 + nnz(X) k): this is a research tool for small and medium data.

Registered objectives:

``sccase``
    Paper Eq. 2: ``||X S - W H||^2 + lam ||Z - H^T H||^2 + gamma1 ||W||^2 + gamma2 ||H||^2``.
``sccase_l1z``
    scCASE plus ``beta * sum(Z)``: an L1 penalty on Z (on ``Z >= 0`` the L1 norm is the
    plain sum, which is smooth), favouring sparse similarities.
``sccase_laplacian``
    scCASE plus ``mu * tr(H L H^T)`` with ``L`` the graph Laplacian of the symmetrised
    similarity ``A = (Z + Z^T) / 2``; equal to ``mu / 2 sum_ij A_ij ||h_i - h_j||^2``, so
    cells that Z calls similar get similar embeddings.
"""

from __future__ import annotations

import dataclasses
from functools import lru_cache, partial
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from sccase_jax.api import prepare, to_fit_result
from sccase_jax.losses import sccase_loss
from sccase_jax.params import Data, Factors, SolverConfig
from sccase_jax.solver import advance, drive, matmul_precision, to_result, tracked_fields
from sccase_jax.steps import project

__all__ = [
    "OBJECTIVES",
    "Objective",
    "VariantState",
    "default_optimizer",
    "fit_variant",
    "get_objective",
    "init_variant_state",
    "member_solver",
    "register_objective",
    "run_variant",
    "variant_update",
]


@dataclasses.dataclass(frozen=True, eq=False)
class Objective:
    """A registered objective: ``loss(X, Z, R, W, H, hp)`` and its weights' defaults.

    Hashed by identity, so it can be a static argument of :func:`jax.jit`.
    """

    name: str
    loss: Callable
    defaults: tuple  # ((name, value), ...)
    doc: str = ""

    def hyper(self, dtype=jnp.float32, **values) -> dict:
        """The weights as a dict of ``dtype`` arrays: the defaults, overridden by ``values``."""
        names = dict(self.defaults)
        unknown = set(values) - set(names)
        if unknown:
            raise ValueError(f"objective {self.name!r} has no weight(s) {sorted(unknown)}")
        names.update(values)
        return {k: jnp.asarray(v, dtype) for k, v in names.items()}

    def __call__(self, X, Z, R, W, H, hp):
        return self.loss(X, Z, R, W, H, hp)


OBJECTIVES: dict[str, Objective] = {}

# The objectives this module registers; register_objective never replaces them.
BUILTIN = frozenset({"sccase", "sccase_l1z", "sccase_laplacian"})


def register_objective(name: str, *, replace: bool = False, **defaults: float):
    """Decorator: register ``loss(X, Z, R, W, H, hp)`` under ``name`` with default weights.

    .. code-block:: python

        @register_objective("sccase_l2z", lam=1e6, gamma1=1.0, gamma2=1.0, eta=0.1)
        def sccase_l2z(X, Z, R, W, H, hp):
            return scc(X, Z, R, W, H, hp) + hp["eta"] * jnp.vdot(Z, Z)

    A name already registered is refused (``ValueError``); ``replace=True`` replaces an
    objective registered by the user, never a built-in one (:data:`BUILTIN`).
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"an objective's name must be a non-empty string, got {name!r}")
    if name in BUILTIN:
        raise ValueError(f"{name!r} is a built-in objective and cannot be replaced; register "
                         "yours under another name")
    if name in OBJECTIVES and not replace:
        raise ValueError(f"an objective named {name!r} is already registered; pass replace=True "
                         "to replace it")

    return _adder(name, defaults)


def _adder(name: str, defaults: dict):
    def deco(loss):
        OBJECTIVES[name] = Objective(name, loss, tuple(defaults.items()), loss.__doc__ or "")
        return loss

    return deco


def _builtin(name: str, **defaults: float):
    assert name in BUILTIN and name not in OBJECTIVES
    return _adder(name, defaults)


def get_objective(objective) -> Objective:
    """An :class:`Objective` from itself or its registered name."""
    if isinstance(objective, Objective):
        return objective
    try:
        return OBJECTIVES[objective]
    except KeyError:
        raise ValueError(f"unknown objective {objective!r}; registered: {sorted(OBJECTIVES)}") from None


@_builtin("sccase", lam=1e6, gamma1=1.0, gamma2=1.0)
def scc(X, Z, R, W, H, hp):
    """scCASE, paper Eq. 2."""
    return sccase_loss(X, Z, R, W, H, lam=hp["lam"], gamma1=hp["gamma1"], gamma2=hp["gamma2"])


@_builtin("sccase_l1z", lam=1e6, gamma1=1.0, gamma2=1.0, beta=1e-2)
def sccase_l1z(X, Z, R, W, H, hp):
    """scCASE plus ``beta * ||Z||_1`` (``= beta * sum(Z)`` on ``Z >= 0``)."""
    return scc(X, Z, R, W, H, hp) + hp["beta"] * jnp.sum(Z)


@_builtin("sccase_laplacian", lam=1e6, gamma1=1.0, gamma2=1.0, mu=1.0)
def sccase_laplacian(X, Z, R, W, H, hp):
    """scCASE plus ``mu * tr(H L H^T)``, ``L`` the Laplacian of ``(Z + Z^T) / 2``."""
    A = 0.5 * (Z + Z.T)
    HtH = H.T @ H
    smooth = jnp.vdot(jnp.sum(A, axis=1), jnp.diagonal(HtH)) - jnp.vdot(A, HtH)
    return scc(X, Z, R, W, H, hp) + hp["mu"] * smooth


def default_optimizer(learning_rate: float = 1e-3):
    """Adam: its per-coordinate scaling copes with lam ~ 1e6 next to weights ~ 1."""
    return optax.adam(learning_rate)


class VariantState(NamedTuple):
    """Loop carry of the projected-gradient solver (shares the tracked fields of the driver)."""

    W: Any
    H: Any
    Z: Any
    grads: Any  # gradient at (W, H, Z), reused by the next step
    opt_state: Any
    loss: Any
    initial_loss: Any
    rel_change: Any
    iteration: Any
    loss_history: Any
    status: Any


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
    """Minimise ``objective`` from ``factors0`` by projected optax steps; returns a ``Result``.

    ``objective`` is an :class:`Objective` (a registered name works outside ``jit``: use
    :func:`get_objective`), ``hp`` a dict of its weights (:meth:`Objective.hyper`),
    ``optimizer`` an optax ``GradientTransformation`` (default :func:`default_optimizer`).
    ``data.X`` must be dense.
    """
    return _run(data, factors0, hp, None, config, get_objective(objective),
                optimizer or default_optimizer())


@lru_cache(maxsize=64)
def member_solver(objective, optimizer=None):
    """Per-member solver for :func:`sccase_jax.sweeps.sweep` (``solver=``)."""
    objective = get_objective(objective)
    optimizer = optimizer or default_optimizer()

    def solve(data, factors0, hp, mask, config):
        return _run(data, factors0, hp, mask, config, objective, optimizer)

    solve.objective = objective
    return solve


def fit_variant(X, n_components: int, *, objective="sccase", optimizer=None, hyper=None,
                lam: float = 1e6, seed: int = 0, tol: float = 1e-6, max_iter: int = 1000,
                config: SolverConfig | None = None, **prepare_options):
    """Like :func:`sccase_jax.fit`, for any registered objective (projected optax solver).

    The start is built by :func:`~sccase_jax.api.prepare` (NMF, Jaccard Z0, mask R from
    ``seed``); ``hyper`` overrides the objective's other default weights.  Returns a
    :class:`~sccase_jax.api.FitResult`.
    """
    objective = get_objective(objective)
    prob = prepare(X, n_components, lam=lam, seed=seed, x_format="dense", **prepare_options)
    hp = objective.hyper(prob.hp.lam.dtype, **dict(hyper or {}, lam=lam))
    config = (config or SolverConfig())._replace(max_iter=int(max_iter), tol=float(tol))
    res = run_variant(prob.data, prob.factors, hp, objective=objective, optimizer=optimizer,
                      config=config)
    return to_fit_result(res, dict(
        n_components=int(n_components), objective=objective.name, seed=seed, tol=tol,
        max_iter=max_iter, hyper={k: float(v) for k, v in hp.items()}, config=config._asdict(),
    ))
