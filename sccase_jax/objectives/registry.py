r"""The registry of objectives: new losses fitted without hand-written gradients.

An *objective* is a pure function

.. code-block:: python

    loss(X, Z, R, W, H, hp) -> scalar

of the dense data ``X`` (peaks x cells), the similarity ``Z`` and mask ``R`` (cells x
cells), the factors ``W`` (peaks x k), ``H`` (k x cells) and a dict ``hp`` of scalar
weights (array leaves, so they can be vmapped).  :func:`register_objective` adds one to
:data:`OBJECTIVES` with the default values of its weights; the tests then run the gradient,
jit, vmap and dtype checks on it automatically.  The projected optax solver
(:mod:`sccase_jax.solver.projected`) fits any of them with :func:`jax.grad`.

Registered objectives (:data:`BUILTIN`):

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
from collections.abc import Callable

import jax.numpy as jnp

from sccase_jax.objectives.sccase import sccase_loss

__all__ = ["BUILTIN", "OBJECTIVES", "Objective", "get_objective", "register_objective"]


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
            return OBJECTIVES["sccase"](X, Z, R, W, H, hp) + hp["eta"] * jnp.vdot(Z, Z)

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
