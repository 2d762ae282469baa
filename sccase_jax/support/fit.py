"""The support-restricted fit from a preprocessed peaks x cells X: :func:`fit_support`,
with scCASER's reference, the batch term, the depth term and extra registered terms where
given.

Steps (none forms an n x n array): X on the device (``BCOO`` above the dense limit), the
NMF start (as the dense fit: same key, same W0, H0), the support (:mod:`.build`: cosine kNN
on H0 by default, or Jaccard kNN), the local Gram blocks and the Jaccard start on the
support, the mask R on the support, then the solver over the loss terms
(:mod:`sccase_jax.solver.over_terms`) on the :class:`~sccase_jax.layout.SupportLayout`.
The result's ``Z`` is a scipy CSC matrix (cells x cells) with ``n_neighbors`` entries per
column.
"""

from __future__ import annotations

import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp

from sccase_jax import progress as _progress
from sccase_jax.layout import SupportLayout, to_sparse
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
from sccase_jax.solver.over_terms import run, run_reporting
from sccase_jax.support import build
from sccase_jax.terms import Objective, TermData, extra_terms, sccase_terms
from sccase_jax.validate import InputError, default_dtype

__all__ = ["SUPPORTS", "SupportProblem", "fit_support", "prepare_support"]

SUPPORTS = ("embedding", "cosine", "jaccard")


class SupportProblem(NamedTuple):
    """A support-restricted fit ready to run: the objective, its data, Z's layout, the start."""

    objective: Objective
    data: TermData
    layout: SupportLayout
    factors: Factors


def prepare_support(X, k: int, opts, n_neighbors: int = 30, knn_from: str = "embedding",
                    off_support: str = "drop", P=None, k_ref=None, batch=None, depth=None):
    """Everything before the solver: checks, device X, NMF, support, local Grams, start,
    and the terms.

    ``P`` (peaks x ``k_ref``): scCASER's reference block, as in
    :func:`~sccase_jax.problem.prepare`: the first ``k_ref`` columns of W start from ``P``
    (their H by non-negative least squares, :func:`~sccase_jax.problem.start_wh`) and are
    pulled towards it with weight ``alpha``.  ``batch``: integer batch codes of the cells
    (the batch term); ``depth``: relative depths (the depth term); ``opts.terms``: extra
    registered terms.  With every cell a candidate (``n_neighbors >= cells``,
    ``off_support="exact"``) and the same mask (``keep_prob=1``) this is the dense fit's
    problem on the support layout.
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
    layout = SupportLayout(jnp.asarray(idx), build.support_mask(key_mask, n, d, opts.keep_prob),
                           jnp.asarray(L), jnp.asarray(1.0 if off_support == "exact" else 0.0, dtype))
    hp = Hyperparams.create(opts.lam, opts.gamma1, opts.gamma2, opts.alpha if k_ref else 0.0,
                            dtype=dtype)
    Ob, mu = batch_one_hot(batch, n, opts, dtype)
    data = TermData(Xd, P=jnp.asarray(Pfull), M=jnp.asarray(M), batch=Ob,
                    depth=None if depth is None else depth_vector(depth, n, dtype))
    objective = Objective((*sccase_terms(hp, batch_mu=mu, depth=depth is not None),
                           *extra_terms(opts.terms, dtype)))
    return SupportProblem(objective, data, layout, Factors(W0, H0, jnp.asarray(V0, dtype)))


def fit_support(X, k: int, opts, config: SolverConfig, n_neighbors: int = 30,
                knn_from: str = "embedding", off_support: str = "drop", *, P=None, k_ref=None,
                batch=None, depth=None):
    """The support-restricted fit (:func:`prepare_support`, then the solver over the terms);
    returns a host :class:`~sccase_jax.result.FitResult` with ``Z`` sparse (CSC, cells x
    cells) and ``params["eq2_loss"]``: F with the off-support part included (paper Eq. 2
    with the fit's terms) at the returned point, whichever ``off_support`` the fit used."""
    prob = prepare_support(X, k, opts, n_neighbors, knn_from, off_support, P=P, k_ref=k_ref,
                           batch=batch, depth=depth)
    if opts.progress:
        quiet = config._replace(progress=False)
        res = run_reporting(*prob, quiet, _progress.Reporter(quiet.max_iter))
    else:
        res = run(*prob, config)
    lay = prob.layout
    full = _value(prob.objective, Factors(res.W, res.H, res.Z), prob.data,
                  lay._replace(off=jnp.ones_like(lay.off)))
    res = res.fetch(dict(eq2_loss=float(full)))
    return res._replace(Z=to_sparse(res.Z, np.asarray(lay.idx)))


_value = jax.jit(lambda objective, factors, data, layout: objective.value(factors, data, layout))
