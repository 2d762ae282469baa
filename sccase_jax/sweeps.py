r"""Vectorised sweeps over the similarity weight ``lam`` and the number of components K.

:func:`sweep` fits every ``(lam, K)`` pair of a grid with one compiled, ``vmap``-ed call
per batch.  Each member's result equals ``sccase_jax.fit(X, K, lam=lam, seed=seed, ...)``
(same starting point, same solver, same stopping rule); only the rounding of batched
products can differ, in the last bits.

K changes shapes, so every member is padded to ``Kmax = max(ks)``: the start of each K is
built exactly as :func:`~sccase_jax.problem.prepare` builds it for :func:`~sccase_jax.fit`
(NMF with K components, the Jaccard Z0, the mask R of the seed), and then W gets
``Kmax - K`` zero columns and H as many zero rows.  A zero column of W with the matching
zero row of H is a fixed point of every gradient (each of their entries is a sum of
products with a zero factor), so the padded fit equals the unpadded one; a component mask
(the same idea as the masked form of paper Eq. 13) is applied after every iteration as
well, which keeps the inactive components exactly zero even for objectives of
the projected solver (:mod:`sccase_jax.solver.projected`) that lack the fixed point.

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

import dataclasses
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sccase_jax.fitting import FIT_OPTIONS, _knn, dense_terms, solver_config
from sccase_jax.layout import to_sparse
from sccase_jax.options import FIT, Options, signature
from sccase_jax.params import Factors, Hyperparams, SolverConfig
from sccase_jax.problem import prepare
from sccase_jax.result import FitResult
from sccase_jax.solver.alternating import init_state, update
from sccase_jax.solver.driver import drive, matmul_precision, to_result
from sccase_jax.solver.over_terms import run as run_terms
from sccase_jax.support.fit import prepare_support
from sccase_jax.validate import InputError, check_int, check_real

__all__ = ["masked_run", "pad_factors", "sweep"]


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
    """The alternating solver of :func:`sccase_jax.solver.run` on padded factors (not jitted)."""

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


def sweep(X, *, lams, ks, batch_size: int | None = None, solver: Callable | None = None,
          hyper: dict | None = None, score: Callable | None = None, keep_factors: bool = True,
          P=None, **options) -> FitResult:
    r"""Fit every ``(lam, K)`` pair of ``lams x ks`` in vmapped batches.

    Returns one :class:`~sccase_jax.result.FitResult` whose fields carry the leading grid
    axes ``(len(lams), len(ks))``: entry ``[i, j]`` is the fit with ``lam = lams[i]`` and
    ``K = ks[j]`` (:meth:`~sccase_jax.result.FitResult.member`); ``W`` and ``H`` are padded
    to ``max(ks)`` components (those ``>= k`` exactly zero), ``loss`` is the whole history
    (NaN after ``n_iter``), ``params`` holds the grid (``lams``, ``ks``: also
    ``result.lams``, ``result.ks``, ``result.lam``, ``result.k``), ``final_loss`` F of each
    returned iterate and ``metrics`` the ``score`` callback's values.

    Parameters
    ----------
    X
        Preprocessed peaks x cells matrix, as for :func:`~sccase_jax.fit`.
    lams, ks
        The grid: similarity weights and numbers of components.
    batch_size
        Members per compiled call (default: all at once).  See the module notes on memory.
    solver
        Per-member solver ``solver(data, factors0, hp, mask, config) -> FitResult``; default
        :func:`masked_run` (the alternating solver, i.e. ``fit``).  For a registered
        objective pass ``sccase_jax.solver.member_solver(objective, optimizer)``.
    hyper
        For such a variant solver: its fixed weights besides ``lam``, over the objective's
        defaults.  ``None`` for the alternating solver, whose weights come from
        ``gamma1``/``gamma2``/``alpha`` as in ``fit``.
    score
        Optional ``score(member: FitResult) -> dict[str, float]`` run on the host for each
        member (e.g. clustering scores of ``X Z`` against labels); the values come back in
        ``metrics`` so the sweep can be ranked (:meth:`~sccase_jax.result.FitResult.best`).
    keep_factors
        Return the padded W, H and Z of every member (``n^2`` floats each for Z).
    P
        scCASER reference loadings, as for ``fit``.
    **options
        The fit's options, as for :func:`~sccase_jax.fit` (``seed`` seeds the mask R and
        the NMF starts of every member).  With ``z_support="knn"`` (or ``"auto"`` above
        5,000 cells, as in ``fit``) Z lives on each cell's support, and with ``terms=`` extra
        registered terms are fitted: both through the solver over terms, vmapped over the
        whole grid (each K's start and support padded to the largest K), each member equal
        to ``fit``'s; on a support ``Z`` comes back as an object array of scipy matrices.

    Every ``lams[i]``, ``ks[j]`` and ``hyper`` weight is checked before any work: a
    negative, non-finite or non-numeric one is an :class:`~sccase_jax.validate.InputError`
    naming it.
    """
    unknown = set(options) - set(FIT_OPTIONS)
    if unknown:
        raise InputError(f"sweep got unknown or unsupported option(s): {sorted(unknown)}")
    opts = Options(**options).resolved()
    lams, ks = _grid(lams, ks, getattr(X, "shape", None))
    if batch_size is not None:
        batch_size = check_int("batch_size", batch_size, 1)
    objective = getattr(solver, "objective", None)
    _check_hyper(solver, objective, hyper)
    config = solver_config(opts)
    shape = getattr(X, "shape", ())
    # "auto" keeps a sweep with a variant solver dense (the solver over terms fits terms,
    # not a registered objective).
    knn = _knn(opts, shape[1] if len(shape) == 2 else 0, solver is not None)
    if knn or opts.terms is not None:
        if solver is not None:
            raise InputError("a variant solver sweeps with Z dense and scCASE's own terms only "
                             "(no z_support='knn', no terms=...)")
        return _sweep_terms(X, lams, ks, opts, config, batch_size, keep_factors, score, options,
                            P, knn)
    if config.z_step == "auto":
        # Under vmap a branch between the paper's and the free Z step runs both (three
        # products an iteration); the free step alone would form G S afresh in every
        # iteration (its refresh is a branch too).  The paper's step costs two.
        config = config._replace(z_step="gradient")
    if objective is not None and "x_format" not in options:
        opts = opts.replace(x_format="dense")  # the registered objectives take a dense X
    data, Z0, hp0, starts = _starts(X, ks, lams, opts, P)
    hp_m = _member_weights(hp0, lams, len(ks), solver, objective, hyper)
    res = _run_batches(solver or masked_run, config, data, Z0, hp_m, starts, len(lams) * len(ks),
                       batch_size, keep_factors)
    res = jax.tree.map(lambda a: a.reshape((len(lams), len(ks)) + a.shape[1:]), res)
    given = {k: v for k, v in options.items()
             if k not in ("seed", "max_iter", "tol", "x_tol", "config", "progress")}
    params = dict(given, seed=opts.seed, max_iter=opts.max_iter, tol=opts.tol, x_tol=opts.x_tol,
                  k_max=int(ks.max()), config=config._asdict(), hyper=hyper,
                  dtype=np.dtype(hp0.lam.dtype).name, lams=lams, ks=ks)
    out = res.fetch(params, batched=True)
    if score is not None:
        out = out._replace(metrics=_scores(out, score))
    return out


sweep.__signature__ = signature(
    sweep, FIT, keep=("X", "lams", "ks", "batch_size", "solver", "hyper", "score",
                      "keep_factors", "P"))


def _sweep_terms(X, lams, ks, opts, config, batch_size, keep_factors, score, options, P,
                 knn: bool) -> FitResult:
    """The grid through the solver over terms (:mod:`sccase_jax.solver.over_terms`): Z on a
    support (``knn``), or dense with extra terms.  Each K has its own start (and support),
    built as ``fit`` builds it and padded to the largest K with components that do not move
    (``over_terms.update``'s ``components``); the solver is vmapped over the members of the
    whole grid (lam and K) in batches of ``batch_size`` (default: all at once), one
    compilation.  Every member equals ``fit(X, K, lam=lam, ...)`` up to the rounding of
    batched products; on a support its ``Z`` is a scipy CSC matrix (an object array over
    the grid)."""
    L, K = len(lams), len(ks)
    k_max = int(ks.max())
    o = opts.replace(lam=float(lams[0]))
    per_k, hosts = [], []
    for k in ks:
        if knn:
            prob = prepare_support(X, int(k), o, o.n_neighbors, o.knn_from, o.off_support, P=P,
                                   k_ref=o.k_ref)
            idx = np.asarray(prob.layout.idx)
            hosts.append(lambda V, idx=idx: to_sparse(V, idx))
        else:
            prob = dense_terms(X, prepare(X, int(k), o, P=P, k_ref=o.k_ref), o)
            hosts.append(np.asarray)
            if per_k:  # the dense layout (G, R) is the same for every K: keep the first alone
                prob = (*prob[:2], None, prob[3])
        per_k.append(_pad_components(prob, k_max))
    objective, data, layout = per_k[0][:3]
    layout = None if knn else layout  # on a support each member brings its own
    # What differs between the K: the start, the components that move, the reference
    # columns (padded) and, on a support, the layout (the support is built from each K's
    # NMF start).
    varying = jax.tree.map(lambda *a: jnp.stack(a), *[
        (f0, comp, None if data.M is None else (d.P, d.M), lay if knn else None)
        for _, d, lay, f0, comp in per_k])
    members = [(i, j) for j in range(K) for i in range(L)]
    n_mem = len(members)
    b = n_mem if batch_size is None else min(int(batch_size), n_mem)
    lam_all = jnp.asarray(lams, per_k[0][3].W.dtype)
    fields = ("W", "H", "Z", "loss", "initial_loss", "n_iter", "converged", "status",
              "rel_change", "x_change")
    cols = {f: [[None] * K for _ in range(L)] for f in fields}
    for start in range(0, n_mem, b):
        sel = np.arange(start, start + b).clip(max=n_mem - 1)  # the last batch padded: one program
        li = np.asarray([members[s][0] for s in sel])
        kj = np.asarray([members[s][1] for s in sel])
        var = jax.tree.map(lambda a: a[kj], varying)
        res = jax.device_get(_terms_batched(config)(lam_all[li], var, objective, data, layout))
        for r in range(min(b, n_mem - start)):
            i, j = members[start + r]
            cols["W"][i][j] = np.asarray(res.W[r])
            cols["H"][i][j] = np.asarray(res.H[r])
            cols["Z"][i][j] = hosts[j](res.Z[r])
            for f in fields[3:]:
                cols[f][i][j] = np.asarray(getattr(res, f)[r])
    out = {f: np.array(v) for f, v in cols.items() if f != "Z"}
    Z = np.empty((L, K), object)
    for i in range(L):
        for j in range(K):
            Z[i, j] = cols["Z"][i][j]
    out["Z"] = Z if knn else np.array(cols["Z"])
    if not keep_factors:
        out.update(W=None, H=None, Z=None)
    given = {k: v for k, v in options.items()
             if k not in ("seed", "max_iter", "tol", "x_tol", "config", "progress")}
    params = dict(given, seed=opts.seed, max_iter=opts.max_iter, tol=opts.tol, x_tol=opts.x_tol,
                  k_max=k_max, config=config._asdict(), hyper=None,
                  dtype=np.dtype(out["loss"].dtype).name, lams=lams, ks=ks)
    if knn:
        params.update(gram="support", z_support="knn", n_neighbors=int(opts.n_neighbors),
                      knn_from=opts.knn_from, off_support=opts.off_support)
    res = FitResult(**out).fetch(params, batched=True)
    if score is not None:
        res = res._replace(metrics=_scores(res, score))
    return res


def _pad_components(prob, k_max: int):
    """``(objective, data, layout, f0, components)`` of a problem over terms with its k
    components padded to ``k_max`` (zero columns of W, rows of H and reference columns;
    ``components`` 1 on the first k)."""
    objective, data, layout, f0 = prob
    k = f0.W.shape[1]
    pad = k_max - k
    f0 = f0._replace(W=jnp.pad(f0.W, ((0, 0), (0, pad))), H=jnp.pad(f0.H, ((0, pad), (0, 0))))
    if data.M is not None:
        data = data._replace(P=jnp.pad(data.P, ((0, 0), (0, pad))), M=jnp.pad(data.M, (0, pad)))
    return objective, data, layout, f0, (jnp.arange(k_max) < k).astype(f0.W.dtype)


@lru_cache(maxsize=32)
def _terms_batched(config: SolverConfig):
    """``jit(vmap(run))`` of the solver over terms over the members of a grid: each its lam
    (the similarity or depth term's weight) and its K's start, components, reference
    columns and support; the objective's other weights, X and a dense layout shared."""

    def one(lam, var, objective, data, layout):
        f0, components, ref, lay = var
        data = data if ref is None else data._replace(P=ref[0], M=ref[1])
        layout = layout if lay is None else lay
        terms = tuple(dataclasses.replace(t, weight=lam) if t.name in ("similarity", "depth")
                      else t for t in objective.terms)
        return run_terms(type(objective)(terms), data, layout, f0, config, components)

    return jax.jit(jax.vmap(one, in_axes=(0, 0, None, None, None)))


def _grid(lams, ks, shape=None):
    """The grid as 1-d arrays, every member checked before any work.

    Each ``lams[i]`` must be a finite number >= 0 and each ``ks[j]`` an integer >= 1 (and at
    most ``min(peaks, cells)`` when ``shape`` is known): a bad value anywhere in the grid is
    an :class:`InputError` naming it, not a fit that diverges inside a batch.
    """
    lams, ks = np.atleast_1d(np.asarray(lams, dtype=object)), np.atleast_1d(np.asarray(ks, dtype=object))
    if lams.ndim != 1 or ks.ndim != 1 or not lams.size or not ks.size:
        raise InputError("lams and ks must be non-empty 1-d sequences")
    lams = np.array([check_real(f"lams[{i}]", lam) for i, lam in enumerate(lams)], dtype=float)
    for j, k in enumerate(ks):
        if not isinstance(k, (int, np.integer)) or isinstance(k, (bool, np.bool_)):
            raise InputError(f"ks must be integers, got ks[{j}] = {k!r}")
    ks = np.array([check_int(f"ks[{j}]", k, 1) for j, k in enumerate(ks)])
    if shape is not None and len(shape) == 2 and ks.max() > min(shape):
        j = int(np.argmax(ks > min(shape)))
        raise InputError(f"ks[{j}] = {ks[j]} exceeds min(peaks, cells) = {min(shape)}")
    return lams, ks


def _check_hyper(solver, objective, hyper) -> None:
    """Every fixed weight of a variant solver: a known name and a finite number >= 0."""
    if hyper is None:
        return
    if solver is None:
        raise InputError("hyper is for variant solvers; pass gamma1/gamma2/alpha instead")
    if not isinstance(hyper, dict):
        raise InputError(f"hyper must be a dict of weights, got {type(hyper).__name__}")
    if "lam" in hyper:
        raise InputError("hyper must not set lam: the sweep's lams give each member's lam")
    known = dict(objective.defaults) if objective is not None else None
    for name, value in hyper.items():
        if known is not None and name not in known:
            raise InputError(f"objective {objective.name!r} has no weight {name!r} "
                             f"(its weights: {sorted(known)})")
        check_real(f"hyper[{name!r}]", value)


def _starts(X, ks, lams, opts: Options, P):
    """The shared data, Z0 and weights, and each K's padded start ``(W0, H0, mask)``.

    One prepare per K, exactly as fit builds its start; lam is set per member later.  X, G
    and R do not depend on K; the reference block P, M is padded like W.
    """
    k_max = int(ks.max())
    probs = [prepare(X, int(k), opts.replace(lam=float(lams[0])), P=P, k_ref=opts.k_ref)
             for k in ks]
    starts = [pad_factors(prob.factors, k_max) for prob in probs]
    data = probs[0].data
    pad = k_max - int(ks[0])
    data = data._replace(P=jnp.pad(data.P, ((0, 0), (0, pad))), M=jnp.pad(data.M, (0, pad)))
    return data, probs[0].factors.Z, probs[0].hp, starts


def _member_weights(hp0, lams, K: int, solver, objective, hyper):
    """Each member's weights, lam-major (member ``i * K + j``)."""
    N = len(lams) * K
    lam_m = jnp.asarray(np.repeat(lams, K), hp0.lam.dtype)
    if solver is None:
        return Hyperparams(lam_m, *(jnp.broadcast_to(v, (N,)) for v in hp0[1:]))
    if objective is None:
        raise InputError("solver must carry its objective (use solver.member_solver)")
    hp_m = {name: jnp.broadcast_to(v, (N,))
            for name, v in objective.hyper(hp0.lam.dtype, **(hyper or {})).items()}
    hp_m["lam"] = lam_m
    return hp_m


def _run_batches(member, config, data, Z0, hp_m, starts, N: int, batch_size, keep_factors):
    """All N members in batches of ``batch_size`` (the last padded: one compilation),
    concatenated on the host."""
    K = len(starts)
    kj = np.tile(np.arange(K), N // K)
    W_m = jnp.stack([starts[j][0].W for j in kj])
    H_m = jnp.stack([starts[j][0].H for j in kj])
    mask_m = jnp.stack([starts[j][1] for j in kj])
    fn = _batched(member, config)
    b = N if batch_size is None else min(int(batch_size), N)
    outs = []
    for start in range(0, N, b):
        idx = np.arange(start, start + b).clip(max=N - 1)
        take = lambda a: a[idx]  # noqa: E731
        res = fn(data, Z0, jax.tree.map(take, hp_m), take(W_m), take(H_m), take(mask_m))
        if not keep_factors:
            res = res._replace(W=None, H=None, Z=None)
        res = jax.device_get(res)
        n_real = min(b, N - start)
        outs.append(jax.tree.map(lambda a: np.asarray(a)[:n_real], res))
    return jax.tree.map(lambda *a: np.concatenate(a), *outs)


def _scores(res: FitResult, score: Callable) -> dict:
    """``{name: (L, K) array}`` of ``score(member)`` over the grid (NaN where missing)."""
    L, K = res.n_iter.shape
    rows = [[score(res.member(i, j)) for j in range(K)] for i in range(L)]
    names = sorted({name for row in rows for d in row for name in d})
    return {name: np.array([[float(d.get(name, np.nan)) for d in row] for row in rows])
            for name in names}
