"""The one result type of every fit (:class:`FitResult`) and how a fit ended (:class:`Status`).

The jitted solvers return a :class:`FitResult` of device arrays (``status`` an int32 code,
``loss`` the whole preallocated history); :meth:`FitResult.fetch` brings it to the host as
numpy arrays and Python scalars, ``status`` a :class:`Status` and ``loss`` cut to the
iterations run.  A vmapped fit (:func:`sccase_jax.sweep`) gives the same type with leading
grid axes on every field; :meth:`FitResult.member` takes one fit out of it.
"""

from __future__ import annotations

import enum
from typing import Any, NamedTuple

import numpy as np

__all__ = [
    "CONVERGED",
    "MAX_ITER",
    "NONFINITE",
    "RUNNING",
    "SETTLED",
    "FitResult",
    "Status",
    "status_message",
]

# The solvers' int32 codes (inside jit); Status names them on the host.
RUNNING, CONVERGED, MAX_ITER, NONFINITE = 0, 1, 2, 3


class Status(enum.StrEnum):
    """How a fit ended; equal to its name as a string (``Status.CONVERGED == "converged"``)."""

    RUNNING = "running"
    CONVERGED = "converged"
    MAX_ITER = "max_iter"
    NONFINITE = "nonfinite"

    @property
    def code(self) -> int:
        """The solver's int32 code of this status."""
        return _CODES[self]

    @classmethod
    def of(cls, code) -> Status:
        """The status of a solver code."""
        return _BY_CODE.get(int(code), cls.RUNNING)


_CODES = {Status.RUNNING: RUNNING, Status.CONVERGED: CONVERGED, Status.MAX_ITER: MAX_ITER,
          Status.NONFINITE: NONFINITE}
_BY_CODE = {code: status for status, code in _CODES.items()}

# A fit stopped by max_iter whose last relative change of F is below this is reported as
# usable: F had levelled off.  In float32 the relative change of F levels off near 5e-6 at
# lam = 1e6 (the float resolution of the iterates), above the paper's tol = 1e-6, and
# clustering quality was the same at 10, 30 and 100 iterations (docs/results.md).
SETTLED = 1e-4


def status_message(status, n_iter: int, rel_change: float, tol=None, max_iter=None,
                   x_change: float = float("inf"), x_tol=None) -> str:
    """One line saying how a fit ended, for people: converged (and by which rule), iteration
    budget, non-finite.

    A fit that reached ``max_iter`` is not a failure: with ``rel_change`` below
    :data:`SETTLED` the line says that F had levelled off and the result is usable.
    """
    status = Status(status)
    rel = f"{rel_change:.1e}" if np.isfinite(rel_change) else "n/a"
    tol_s = "" if tol is None else f", tol {float(tol):g}"
    if status == Status.CONVERGED:
        if x_tol and np.isfinite(x_change) and x_change < float(x_tol):
            return (f"converged after {n_iter} iterations: the last one moved H and Z by "
                    f"{x_change:.1e} of their size (x_tol {float(x_tol):g}); the answer has "
                    f"settled (relative change of F {rel})")
        return f"converged after {n_iter} iterations (relative change of F {rel}{tol_s})"
    if status == Status.NONFINITE:
        if n_iter == 0:
            return "the objective is not finite at the starting point"
        return (f"stopped at iteration {n_iter + 1}: the objective became non-finite; the last "
                "finite iterate is returned")
    if n_iter == 0:
        return "no iteration run (max_iter = 0): the result is the starting point"
    budget = f"the iteration budget ({n_iter} iterations, max_iter = {max_iter or n_iter})"
    if np.isfinite(rel_change) and rel_change < SETTLED:
        return (f"reached {budget}; the result is usable: F changed by {rel} of its value in the "
                f"last iteration{tol_s} (F levels off there in float32)")
    return (f"reached {budget} while F still changed by {rel} of its value per iteration{tol_s}; "
            "raise max_iter to fit closer to a minimum")


class FitResult(NamedTuple):
    """What a fit returns: the factors, the history of F and how it ended.

    Attributes
    ----------
    W, H, Z
        Loadings (peaks x k), embedding (k x cells), similarity (cells x cells).
    loss
        F after each iteration (length ``n_iter`` on the host; on device and for a batch of
        fits the preallocated history of length ``max_iter``, NaN where not reached).
    initial_loss
        F at the starting point.
    n_iter
        Iterations run.
    converged
        Whether the relative change of F fell below ``tol``.
    status
        A :class:`Status` (on device its int32 code): ``"converged"``, ``"max_iter"`` or
        ``"nonfinite"`` (F became non-finite; the last finite iterate is returned).
    params
        The settings used, for the record (for a batch also the grid: ``lams``, ``ks``).
    rel_change
        ``|change of F| / |F|`` in the last iteration (``inf`` when none ran): what the
        stopping rule compared with ``tol``.
    x_change
        ``max(||dH|| / ||H||, ||dZ|| / ||Z||)`` in the last iteration: what
        the rule on the iterate compared with ``x_tol`` (``inf`` when that rule was off or
        no iteration ran).
    metrics
        For a batch: ``{name: array over the grid}`` from a ``score`` callback.
    """

    W: Any
    H: Any
    Z: Any
    loss: Any
    initial_loss: Any
    n_iter: Any
    converged: Any
    status: Any
    params: Any = None
    rel_change: Any = float("inf")
    metrics: Any = None
    x_change: Any = float("inf")

    # -- one fit ------------------------------------------------------------------------------

    @property
    def factors(self):
        """``Factors(W, H, Z)``."""
        from sccase_jax.params import Factors

        return Factors(self.W, self.H, self.Z)

    @property
    def message(self) -> str:
        """How the fit ended, in words (:func:`status_message`)."""
        p = self.params or {}
        return status_message(self.status, self.n_iter, self.rel_change, p.get("tol"),
                              p.get("max_iter"), self.x_change, p.get("x_tol"))

    @property
    def final_loss(self):
        """F of the returned iterate: the last of ``loss``, or ``initial_loss`` without any."""
        n = np.asarray(self.n_iter).astype(int)
        hist = np.asarray(self.loss)
        if n.ndim == 0:
            return float(hist[n - 1]) if n > 0 else float(self.initial_loss)
        last = np.take_along_axis(hist, np.maximum(n - 1, 0)[..., None], axis=-1)[..., 0]
        return np.where(n > 0, last, np.asarray(self.initial_loss))

    def fetch(self, params: dict | None = None, *, batched: bool = False) -> FitResult:
        """This result on the host (numpy arrays, Python scalars, a :class:`Status`).

        ``params`` is recorded; ``batched``: the fields carry leading grid axes (the loss
        history is kept whole, statuses become an object array of :class:`Status`).
        """
        import jax

        res = jax.device_get(self)
        if batched:
            status = np.vectorize(Status.of, otypes=[object])(np.asarray(res.status))
            return res._replace(
                W=None if res.W is None else np.asarray(res.W),
                H=None if res.H is None else np.asarray(res.H),
                Z=None if res.Z is None else np.asarray(res.Z),
                loss=np.asarray(res.loss), initial_loss=np.asarray(res.initial_loss),
                n_iter=np.asarray(res.n_iter).astype(int), converged=np.asarray(res.converged),
                status=status, rel_change=np.asarray(res.rel_change), params=params,
                metrics=res.metrics or {}, x_change=np.asarray(res.x_change))
        n_iter = int(res.n_iter)
        return FitResult(
            W=np.asarray(res.W), H=np.asarray(res.H), Z=np.asarray(res.Z),
            loss=np.asarray(res.loss)[:n_iter].copy(), initial_loss=float(res.initial_loss),
            n_iter=n_iter, converged=bool(res.converged), status=Status.of(res.status),
            params=params, rel_change=float(res.rel_change), metrics={},
            x_change=float(res.x_change))

    # -- a batch of fits (sweep) ---------------------------------------------------------------

    @property
    def lams(self):
        """The grid's lam axis (a batch from :func:`sccase_jax.sweep`)."""
        return self.params["lams"]

    @property
    def ks(self):
        """The grid's K axis."""
        return self.params["ks"]

    @property
    def lam(self):
        """lam of every member, on the grid."""
        return self.lams[:, None].repeat(len(self.ks), 1)

    @property
    def k(self):
        """K of every member, on the grid."""
        return self.ks[None, :].repeat(len(self.lams), 0)

    def member(self, i: int, j: int) -> FitResult:
        """Member ``[i, j]`` of a batch as one fit (W and H cut to its K)."""
        k, n = int(self.k[i, j]), int(self.n_iter[i, j])
        params = {key: v for key, v in self.params.items() if key not in ("lams", "ks")}
        params.update(lam=float(self.lam[i, j]), n_components=k)
        return FitResult(
            W=None if self.W is None else self.W[i, j][:, :k],
            H=None if self.H is None else self.H[i, j][:k],
            Z=None if self.Z is None else self.Z[i, j],
            loss=self.loss[i, j, :n].copy(),
            initial_loss=float(self.initial_loss[i, j]),
            n_iter=n,
            converged=bool(self.converged[i, j]),
            status=Status(self.status[i, j]),
            params=params,
            rel_change=float(self.rel_change[i, j]),
            metrics={},
            x_change=float(np.asarray(self.x_change)[i, j]),
        )

    def best(self, key: str = "final_loss", maximize: bool = False) -> tuple[int, int]:
        """Grid index ``(i, j)`` of the best member by ``final_loss`` or a metric (NaN last)."""
        vals = self.final_loss if key == "final_loss" else self.metrics[key]
        vals = np.where(np.isnan(vals), -np.inf if maximize else np.inf, vals)
        flat = np.argmax(vals) if maximize else np.argmin(vals)
        return tuple(int(a) for a in np.unravel_index(flat, vals.shape))
