r"""Vectorised sweeps over the similarity weight ``lam`` and the number of components K.

:func:`sweep` fits every ``(lam, K)`` pair of a grid with one compiled, ``vmap``-ed call
per batch.  Each member's result equals ``sccase_jax.fit(X, K, lam=lam, seed=seed, ...)``
(same starting point, same solver, same stopping rule); only the rounding of batched
products can differ, in the last bits.

K changes shapes, so every member is padded to ``Kmax = max(ks)``: the start of each K is
built exactly as :func:`~sccase_jax.api.prepare` builds it for :func:`~sccase_jax.api.fit`
(NMF with K components, the Jaccard Z0, the mask R of the seed), and then W gets
``Kmax - K`` zero columns and H as many zero rows.  A zero column of W with the matching
zero row of H is a fixed point of every gradient (each of their entries is a sum of
products with a zero factor), so the padded fit equals the unpadded one; a component mask
(the same idea as the masked form of paper Eq. 13) is applied after every iteration as
well, which keeps the inactive components exactly zero even for objectives of
:mod:`sccase_jax.variants` that lack the fixed point.

Memory.  Each member carries its own n x n Z.  While a batch runs, one member holds about
six n x n arrays at once (Z and its cache ``G S``, the gradient, a product's operand and
result; in the W and H steps the new Z beside the previous one, ``S`` and ``Q``), so plan
on roughly ``7 n^2`` floats per member plus the shared ``G`` and X (XLA's compiled memory
analysis on CPU, n = 800: 5.3 n^2 of temporaries per member in a batch of 1 and of 4,
plus the n^2 of its output Z); at float32 that is about 28 n^2 bytes (n = 2,000 cells:
~110 MB per member; n = 10,000: ~2.8 GB).
The returned factors hold another ``n^2`` per member on the host (``keep_factors=False``
drops them).  ``batch_size`` bounds how many members are on the device at once; batches
run one after another, each padded to the same size so that they share one compilation.
A vmapped while-loop runs until its slowest member stops, so members converging at very
different speeds waste work inside a batch.
"""

from __future__ import annotations

import inspect
from functools import lru_cache
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from sccase_jax.api import (
    DEFAULT_MAX_ITER,
    FitResult,
    InputError,
    _STATUS_NAMES,
    prepare,
)
from sccase_jax.params import Factors, Hyperparams, SolverConfig
from sccase_jax.solver import drive, init_state, matmul_precision, to_result, update

__all__ = ["SweepResult", "masked_run", "pad_factors", "sweep"]

_PREPARE_OPTIONS = {
    name
    for name in inspect.signature(prepare).parameters
    if name not in ("X", "n_components", "lam", "seed", "init")
}
_RUN_OPTIONS = {"tol", "max_iter", "config", "progress"}


class SweepResult(NamedTuple):
    """What :func:`sweep` returns (host numpy arrays), laid out on the ``(lam, K)`` grid.

    Every array has the leading sweep axes ``(len(lams), len(ks))``; entry ``[i, j]`` is the
    fit with ``lam = lams[i]`` and ``K = ks[j]``.

    Attributes
    ----------
    lams, ks
        The grid axes.
    lam, k
        The setting of each member (``(L, K)`` each).
    final_loss
        F of the returned iterate as :func:`~sccase_jax.fit` reports it
        (``loss[-1]``, or ``initial_loss`` when no iteration ran).
    initial_loss, n_iter, converged, status, rel_change
        As in :class:`~sccase_jax.api.FitResult`; ``status`` holds the solver's codes
        (:data:`~sccase_jax.solver.CONVERGED` etc.).
    loss_history
        ``(L, K, max_iter)``; NaN after ``n_iter``.
    W, H, Z
        Padded factors ``(L, K, m, Kmax)``, ``(L, K, Kmax, n)`` and ``(L, K, n, n)``
        (``None`` with ``keep_factors=False``); components ``>= k`` are exactly zero.
        :meth:`member` returns one member unpadded.
    metrics
        ``{name: (L, K) array}`` from the ``score`` callback, else ``{}``.
    params
        The shared settings.
    """

    lams: np.ndarray
    ks: np.ndarray
    lam: np.ndarray
    k: np.ndarray
    final_loss: np.ndarray
    initial_loss: np.ndarray
    n_iter: np.ndarray
    converged: np.ndarray
    status: np.ndarray
    rel_change: np.ndarray
    loss_history: np.ndarray
    W: np.ndarray | None
    H: np.ndarray | None
    Z: np.ndarray | None
    metrics: dict
    params: dict

    def member(self, i: int, j: int) -> FitResult:
        """Member ``[i, j]`` as a :class:`~sccase_jax.api.FitResult` (W, H cut to its K)."""
        k, n = int(self.k[i, j]), int(self.n_iter[i, j])
        params = dict(self.params, lam=float(self.lam[i, j]), n_components=k)
        return FitResult(
            W=None if self.W is None else self.W[i, j][:, :k],
            H=None if self.H is None else self.H[i, j][:k],
            Z=None if self.Z is None else self.Z[i, j],
            loss=self.loss_history[i, j, :n].copy(),
            initial_loss=float(self.initial_loss[i, j]),
            n_iter=n,
            converged=bool(self.converged[i, j]),
            status=_STATUS_NAMES.get(int(self.status[i, j]), "running"),
            params=params,
            rel_change=float(self.rel_change[i, j]),
        )

    def best(self, key: str = "final_loss", maximize: bool = False) -> tuple[int, int]:
        """Grid index ``(i, j)`` of the best member by ``final_loss`` or a metric (NaN last)."""
        vals = self.final_loss if key == "final_loss" else self.metrics[key]
        vals = np.where(np.isnan(vals), -np.inf if maximize else np.inf, vals)
        flat = np.argmax(vals) if maximize else np.argmin(vals)
        return tuple(int(a) for a in np.unravel_index(flat, vals.shape))


def pad_factors(factors: Factors, k_max: int) -> tuple[Factors, Any]:
    """Zero-pad W (columns) and H (rows) to ``k_max`` components; return them and the mask."""
    W, H, Z = factors
    k = W.shape[1]
    W = jnp.pad(W, ((0, 0), (0, k_max - k)))
    H = jnp.pad(H, ((0, k_max - k), (0, 0)))
    mask = (jnp.arange(k_max) < k).astype(W.dtype)
    return Factors(W, H, Z), mask


def mask_components(state, mask):
    """Zero the inactive components of a state's W (columns) and H (rows)."""
    return state._replace(W=state.W * mask[None, :], H=state.H * mask[:, None])


def masked_run(data, factors0, hp, mask, config: SolverConfig):
    """The analytic solver of :func:`sccase_jax.solver.run` on padded factors (not jitted)."""

    def step(s):
        return mask_components(update(s, data, hp, config), mask)

    with matmul_precision(config):
        return to_result(drive(init_state(data, factors0, hp, config), step, config))


@lru_cache(maxsize=32)
def _batched(member: Callable, config: SolverConfig):
    """``jit(vmap(member))`` over (hp, W0, H0, mask), sharing data and Z0."""

    def one(data, Z0, hp, W0, H0, mask):
        return member(data, Factors(W0, H0, Z0), hp, mask, config)

    return jax.jit(jax.vmap(one, in_axes=(None, None, 0, 0, 0, 0)))


def sweep(
    X,
    *,
    lams,
    ks,
    seed: int = 0,
    batch_size: int | None = None,
    solver: Callable | None = None,
    hyper: dict | None = None,
    score: Callable | None = None,
    keep_factors: bool = True,
    **fit_options,
) -> SweepResult:
    r"""Fit every ``(lam, K)`` pair of ``lams x ks`` in vmapped batches.

    Parameters
    ----------
    X
        Preprocessed peaks x cells matrix, as for :func:`~sccase_jax.fit`.
    lams, ks
        The grid: similarity weights and numbers of components.
    seed
        Seeds the mask R and the NMF starts (as in ``fit``); shared by every member.
    batch_size
        Members per compiled call (default: all at once).  See the module notes on memory.
    solver
        Per-member solver ``solver(data, factors0, hp, mask, config) -> Result``; default
        :func:`masked_run` (the analytic solver, i.e. ``fit``).  For an objective of
        :mod:`sccase_jax.variants` pass ``variants.member_solver(objective, optimizer)``.
    hyper
        For a variant solver (one with an ``objective`` attribute, as
        :func:`~sccase_jax.variants.member_solver` returns): the fixed weights besides
        ``lam``, over the objective's defaults.  ``None`` for the analytic solver, whose
        weights come from ``gamma1``/``gamma2``/``alpha`` as in ``fit``.
    score
        Optional ``score(member: FitResult) -> dict[str, float]`` run on the host for each
        member (e.g. clustering scores of ``X Z`` against labels); the values come back in
        ``metrics`` so the sweep can be ranked (:meth:`SweepResult.best`).
    keep_factors
        Return the padded W, H and Z of every member (``n^2`` floats each for Z).
    **fit_options
        Any other keyword of :func:`~sccase_jax.fit` except ``init``: ``gamma1``,
        ``gamma2``, ``keep_prob``, ``tol``, ``max_iter``, ``config``, ``nmf_iter``,
        ``jaccard_normalize``, ``dtype``, ``x_format``, ``P``/``k_ref``/``alpha``, ...
    """
    unknown = set(fit_options) - _PREPARE_OPTIONS - _RUN_OPTIONS
    if unknown:
        raise InputError(f"sweep got unknown or unsupported option(s): {sorted(unknown)}")
    lams = np.atleast_1d(np.asarray(lams, dtype=float))
    ks = np.atleast_1d(np.asarray(ks))
    if lams.ndim != 1 or ks.ndim != 1 or not lams.size or not ks.size:
        raise InputError("lams and ks must be non-empty 1-d sequences")
    if not np.issubdtype(ks.dtype, np.integer):
        raise InputError(f"ks must be integers, got {ks}")
    if batch_size is not None and batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    max_iter = int(fit_options.pop("max_iter", DEFAULT_MAX_ITER))
    tol = float(fit_options.pop("tol", 1e-6))
    progress = bool(fit_options.pop("progress", False))
    config = fit_options.pop("config", None) or SolverConfig()
    config = config._replace(max_iter=max_iter, tol=tol, progress=progress)
    if config.z_step == "auto":
        # Under vmap a branch between the paper's and the free Z step runs both (three
        # products an iteration); the free step alone would form G S afresh in every
        # iteration (its refresh is a branch too).  The paper's step costs two.
        config = config._replace(z_step="gradient")
    if max_iter < 0 or not np.isfinite(tol) or tol < 0:
        raise InputError(f"need max_iter >= 0 and a finite tol >= 0, got {max_iter}, {tol}")

    objective = getattr(solver, "objective", None)
    if objective is not None:
        fit_options.setdefault("x_format", "dense")  # the variants' objectives take a dense X
    L, K, k_max = lams.size, ks.size, int(ks.max())
    # One prepare per K, exactly as fit builds its start; lam is set per member below.
    probs = [prepare(X, int(k), lam=float(lams[0]), seed=seed, **fit_options) for k in ks]
    Ws, Hs, masks = [], [], []
    for prob in probs:
        f, mask = pad_factors(prob.factors, k_max)
        Ws.append(f.W)
        Hs.append(f.H)
        masks.append(mask)
    # X, G and R do not depend on K; the reference block P, M is padded like W.
    data = probs[0].data
    pad = k_max - int(ks[0])
    data = data._replace(P=jnp.pad(data.P, ((0, 0), (0, pad))), M=jnp.pad(data.M, (0, pad)))
    Z0 = probs[0].factors.Z
    hp0 = probs[0].hp
    dtype = hp0.lam.dtype

    # Flat member order: lam-major (member i * K + j).
    N = L * K
    li, kj = np.repeat(np.arange(L), K), np.tile(np.arange(K), L)
    lam_m = jnp.asarray(lams[li], dtype)
    if solver is None:
        if hyper is not None:
            raise InputError("hyper is for variant solvers; pass gamma1/gamma2/alpha instead")
        hp_m = Hyperparams(lam_m, *(jnp.broadcast_to(v, (N,)) for v in hp0[1:]))
    else:
        if objective is None:
            raise InputError("solver must carry its objective (use variants.member_solver)")
        hp_m = {name: jnp.broadcast_to(v, (N,)) for name, v in objective.hyper(dtype, **(hyper or {})).items()}
        hp_m["lam"] = lam_m
    W_m, H_m, mask_m = (jnp.stack([a[j] for j in kj]) for a in (Ws, Hs, masks))

    fn = _batched(solver or masked_run, config)
    b = N if batch_size is None else min(int(batch_size), N)
    outs = []
    for start in range(0, N, b):
        idx = np.arange(start, start + b).clip(max=N - 1)  # pad the last batch: one compile
        take = lambda a: a[idx]  # noqa: E731
        res = fn(data, Z0, jax.tree.map(take, hp_m), take(W_m), take(H_m), take(mask_m))
        if not keep_factors:
            res = res._replace(factors=Factors(None, None, None))
        res = jax.device_get(res)
        n_real = min(b, N - start)
        outs.append(jax.tree.map(lambda a: np.asarray(a)[:n_real], res))
    res = jax.tree.map(lambda *a: np.concatenate(a).reshape((L, K) + a[0].shape[1:]), *outs)

    n_iter = res.num_steps.astype(int)
    hist = res.loss_history
    last = np.take_along_axis(hist, np.maximum(n_iter - 1, 0)[..., None], axis=-1)[..., 0]
    final = np.where(n_iter > 0, last, res.initial_loss)
    W, H, Z = res.factors if keep_factors else (None, None, None)
    out = SweepResult(
        lams=lams,
        ks=ks,
        lam=lams[:, None].repeat(K, 1),
        k=ks[None, :].repeat(L, 0),
        final_loss=final,
        initial_loss=res.initial_loss,
        n_iter=n_iter,
        converged=res.converged,
        status=res.status,
        rel_change=res.rel_change,
        loss_history=hist,
        W=W,
        H=H,
        Z=Z,
        metrics={},
        params=dict(
            fit_options, seed=seed, max_iter=max_iter, tol=tol, k_max=k_max,
            config=config._asdict(), hyper=hyper, dtype=np.dtype(dtype).name,
        ),
    )
    if score is not None:
        rows = [[score(out.member(i, j)) for j in range(K)] for i in range(L)]
        names = sorted({name for row in rows for d in row for name in d})
        metrics = {
            name: np.array([[float(d.get(name, np.nan)) for d in row] for row in rows])
            for name in names
        }
        out = out._replace(metrics=metrics)
    return out
