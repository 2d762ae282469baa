"""The support-restricted fit from a preprocessed peaks x cells X: :func:`fit_support`, and
:func:`fit_support_terms` with scCASER's reference, the batch term, the depth term or
extra registered terms.

Steps (none forms an n x n array): X on the device (``BCOO`` above the dense limit), the
NMF start (as the dense fit: same key, same W0, H0), the support (:mod:`.build`: cosine kNN
on H0 by default, or Jaccard kNN), the local Gram blocks and the Jaccard start on the
support, the mask R on the support, then the jitted solver (:mod:`.solver`).  The result's
``Z`` is a scipy CSC matrix (cells x cells) with ``n_neighbors`` entries per column.
With a reference, batch, depth or extra term the same start goes to the solver over the loss
terms (:mod:`sccase_jax.solver.over_terms`) on the support layout instead.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp

from sccase_jax import progress as _progress
from sccase_jax.layout import SupportLayout
from sccase_jax.params import Factors, Hyperparams, SolverConfig
from sccase_jax.problem import (
    batch_one_hot,
    check_input,
    depth_vector,
    device_matrix,
    reference_columns,
    resolve_k_ref,
    start_wh,
    warn_if_not_preprocessed,
)
from sccase_jax.solver.over_terms import run as run_terms
from sccase_jax.support import build
from sccase_jax.support.objective import SupportData, support_loss, to_sparse
from sccase_jax.support.solver import run, run_reporting
from sccase_jax.terms import Objective, TermData, extra_terms, sccase_terms
from sccase_jax.validate import InputError, default_dtype

__all__ = ["SUPPORTS", "SupportProblem", "fit_support", "fit_support_terms", "prepare_support"]

# F of paper Eq. 2 at the returned point: one program (op by op it compiled ~20 small ones).
_eq2 = jax.jit(support_loss)

SUPPORTS = ("embedding", "cosine", "jaccard")


class SupportProblem:
    """A support-restricted fit ready to run: ``data``, the start ``W, H, V`` and ``hp``."""

    def __init__(self, data, W, H, V, hp):
        self.data, self.W, self.H, self.V, self.hp = data, W, H, V, hp


def prepare_support(X, k: int, opts, n_neighbors: int = 30, knn_from: str = "embedding",
                    off_support: str = "drop", P=None, k_ref=None):
    """Everything before the solver: checks, device X, NMF, support, local Grams, start.

    ``P`` (peaks x ``k_ref``): scCASER's reference block, as in
    :func:`~sccase_jax.problem.prepare`: the first ``k_ref`` columns of W start from ``P``
    (their H by non-negative least squares, :func:`~sccase_jax.problem.start_wh`) and are
    pulled towards it with weight ``alpha``.
    """
    if knn_from not in SUPPORTS:
        raise InputError(f"knn_from must be one of {SUPPORTS}, got {knn_from!r}")
    X = check_input(X, k)
    warn_if_not_preprocessed(X)
    m, n = X.shape
    k_ = int(k)
    k_ref = resolve_k_ref(P, k_ref, k_)
    d = min(int(n_neighbors), n)
    dtype = opts.dtype or default_dtype()
    show = bool(opts.progress)
    t0 = time.perf_counter()
    key_mask, key_nmf = jax.random.split(jax.random.PRNGKey(opts.seed))
    Xd = device_matrix(X, dtype, opts.x_format)
    Pfull, M = reference_columns(P, k_ref, m, k_, dtype)
    W0, H0 = jax.block_until_ready(start_wh(X, Xd, k_, k_ref, Pfull, key_nmf, opts, dtype))
    if show:
        _progress.stage(f"NMF start ({n} cells, k = {k}) in {time.perf_counter() - t0:.1f} s")
    Xs = X if sp.issparse(X) else sp.csc_matrix(X)
    idx = (build.jaccard_support(Xs, d, progress=show) if knn_from == "jaccard" else
           build.embedding_support(H0, d, progress=show, cosine=knn_from == "cosine"))
    L, J = build.local_grams(Xs, idx, dtype=np.dtype(dtype), progress=show)
    V0 = build.normalise_start(J, idx, opts.jaccard_normalize)
    if show:
        _progress.stage(f"support ({knn_from}, {d} per cell), local Grams and start in "
                        f"{time.perf_counter() - t0:.1f} s")
    data = SupportData(X=Xd, idx=jnp.asarray(idx), mask=build.support_mask(key_mask, n, d, opts.keep_prob),
                       L=jnp.asarray(L), P=jnp.asarray(Pfull), M=jnp.asarray(M),
                       off=jnp.asarray(1.0 if off_support == "exact" else 0.0, dtype))
    hp = Hyperparams.create(opts.lam, opts.gamma1, opts.gamma2, opts.alpha if k_ref else 0.0,
                            dtype=dtype)
    return SupportProblem(data, W0, H0, jnp.asarray(V0, dtype), hp)


def fit_support(X, k: int, opts, config: SolverConfig, n_neighbors: int = 30,
                knn_from: str = "embedding", off_support: str = "drop"):
    """The support-restricted fit; returns a host :class:`~sccase_jax.result.FitResult`
    with ``Z`` sparse (CSC, cells x cells)."""
    prob = prepare_support(X, k, opts, n_neighbors, knn_from, off_support)
    if opts.progress:
        quiet = config._replace(progress=False)
        res = run_reporting(prob.data, prob.W, prob.H, prob.V, prob.hp, quiet,
                            _progress.Reporter(quiet.max_iter))
    else:
        res = run(prob.data, prob.W, prob.H, prob.V, prob.hp, config)
    # F of paper Eq. 2 (the off-support part included) at the returned point, whichever
    # off_support the fit used.
    eq2 = _eq2(prob.data._replace(off=jnp.ones_like(prob.data.off)), res.W, res.H, res.Z, prob.hp)
    res = res.fetch(dict(eq2_loss=float(eq2)))
    return res._replace(Z=to_sparse(res.Z, np.asarray(prob.data.idx)))


def fit_support_terms(X, k: int, opts, config: SolverConfig, n_neighbors: int = 30,
                      knn_from: str = "embedding", off_support: str = "drop", *, P=None,
                      k_ref=None, batch=None, depth=None):
    """The support-restricted fit with scCASER's reference ``P``, the batch term (``batch``:
    integer codes, one per cell), the depth term (``depth``: relative depths) and the extra
    registered terms of ``opts.terms`` (:func:`~sccase_jax.terms.extra_terms`): the
    alternating solver over the terms (:mod:`sccase_jax.solver.over_terms`,
    :func:`~sccase_jax.terms.sccase_terms`) on the :class:`~sccase_jax.layout.SupportLayout`.

    The start, the support, the mask and the terms' data are built as for the plain support
    fit (:func:`prepare_support`) and as :func:`~sccase_jax.problem.prepare` builds them for
    the dense fit (the reference block, the batch one-hot and weight, the depths), so with
    every cell a candidate (``n_neighbors >= cells``, ``off_support="exact"``) and the same
    mask (``keep_prob=1``) the fit is the dense fit's with ``z_step="gradient"``.  Returns a
    host :class:`~sccase_jax.result.FitResult`, ``Z`` sparse (CSC, cells x cells).
    """
    if config.w_step != "exact":
        raise InputError(f"z_support='knn' with a reference, batch, depth or extra term takes "
                         f"w_step='exact' only, got {config.w_step!r} (use z_support='dense')")
    if config.h_step not in ("backtrack", "exact"):
        raise InputError(f"h_step {config.h_step!r} has no support-restricted form")
    prob = prepare_support(X, k, opts, n_neighbors, knn_from, off_support, P=P, k_ref=k_ref)
    sd = prob.data
    n = sd.idx.shape[0]
    dtype = prob.V.dtype
    Ob, mu = batch_one_hot(batch, n, opts, dtype)
    data = TermData(sd.X, P=sd.P, M=sd.M, batch=Ob,
                    depth=None if depth is None else depth_vector(depth, n, dtype))
    layout = SupportLayout(sd.idx, sd.mask, sd.L, sd.off)
    objective = Objective((*sccase_terms(prob.hp, batch_mu=mu, depth=depth is not None),
                           *extra_terms(opts.terms, dtype)))
    if opts.progress:
        _progress.stage("compiling and running the solver (terms on the support)")
    res = run_terms(objective, data, layout, Factors(prob.W, prob.H, prob.V), config)
    # F with the off-support part included (off = 1) at the returned point, whichever
    # off_support the fit used: paper Eq. 2 with the reference, batch and depth terms.
    full = _terms_value(objective, Factors(res.W, res.H, res.Z), data,
                        layout._replace(off=jnp.ones_like(sd.off)))
    res = res.fetch(dict(eq2_loss=float(full)))
    return res._replace(Z=to_sparse(res.Z, np.asarray(sd.idx)))


_terms_value = jax.jit(lambda objective, factors, data, layout: objective.value(factors, data, layout))
