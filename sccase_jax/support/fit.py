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
from sccase_jax.params import Factors, SolverConfig
from sccase_jax.problem import checked, device_matrix, start_wh
from sccase_jax.solver.over_terms import run, run_reporting
from sccase_jax.support import build
from sccase_jax.terms import Objective, TermData, extra_terms, sccase_terms
from sccase_jax.validate import InputError

__all__ = ["SUPPORTS", "SupportProblem", "fit_support", "prepare_support"]

SUPPORTS = ("embedding", "cosine", "jaccard")


class SupportProblem(NamedTuple):
    """A support-restricted fit ready to run: the objective, its data, Z's layout, the start."""

    objective: Objective
    data: TermData
    layout: SupportLayout
    factors: Factors


def prepare_support(X, k: int, opts, n_neighbors: int = 30, knn_from: str = "embedding",
                    off_support: str = "drop", P=None, k_ref=None, batch=None, depth=None,
                    xtx=None):
    """Everything before the solver: checks, device X, NMF, support, local Grams, start,
    and the terms.

    ``P`` (peaks x ``k_ref``): scCASER's reference block, as in
    :func:`~sccase_jax.problem.prepare`: the first ``k_ref`` columns of W start from ``P``
    (their H by non-negative least squares, :func:`~sccase_jax.problem.start_wh`) and are
    pulled towards it with weight ``alpha``.  ``batch``: integer batch codes of the cells
    (the batch term); ``depth``: relative depths (the depth term); ``opts.terms``: extra
    registered terms.  ``xtx``: X^T X (cells x cells, on the host) when the caller formed
    it (:func:`~sccase_jax.support.build.host_gram`): the local Gram blocks are read from it.
    With every cell a candidate (``n_neighbors >= cells``,
    ``off_support="exact"``) and the same mask (``keep_prob=1``) this is the dense fit's
    problem on the support layout.
    """
    if knn_from not in SUPPORTS:
        raise InputError(f"knn_from must be one of {SUPPORTS}, got {knn_from!r}")
    c = checked(X, k, opts, P, k_ref, batch, depth)
    X, dtype = c.X, c.dtype
    n = X.shape[1]
    d = min(int(n_neighbors), n)
    show = bool(opts.progress)
    t0 = time.perf_counter()
    Xd = device_matrix(X, dtype, opts.x_format)
    W0, H0 = jax.block_until_ready(start_wh(X, Xd, c.k, c.k_ref, c.P, c.key_nmf, opts, dtype))
    if show:
        _progress.stage(f"NMF start ({n} cells, k = {k}) in {time.perf_counter() - t0:.1f} s")
    Xs = X if sp.issparse(X) else sp.csc_matrix(X)
    idx = (build.jaccard_support(Xs, d, progress=show) if knn_from == "jaccard" else
           build.embedding_support(H0, d, progress=show, cosine=knn_from == "cosine"))
    L, J = build.local_grams(Xs, idx, dtype=np.dtype(dtype), progress=show, gram=xtx)
    V0 = build.normalise_start(J, idx, opts.jaccard_normalize)
    if show:
        _progress.stage(f"support ({knn_from}, {d} per cell), local Grams and start in "
                        f"{time.perf_counter() - t0:.1f} s")
    layout = SupportLayout(jnp.asarray(idx), build.support_mask(c.key_mask, n, d, opts.keep_prob),
                           jnp.asarray(L), jnp.asarray(1.0 if off_support == "exact" else 0.0, dtype))
    ref = c.k_ref > 0  # without a reference: no pull term, and one W block
    data = TermData(Xd, P=jnp.asarray(c.P) if ref else None, M=jnp.asarray(c.M) if ref else None,
                    batch=c.batch, depth=c.depth)
    objective = Objective((*sccase_terms(c.hp, batch_mu=c.batch_mu, depth=depth is not None,
                                         reference=ref), *extra_terms(opts.terms, dtype)))
    return SupportProblem(objective, data, layout, Factors(W0, H0, jnp.asarray(V0, dtype)))


def fit_support(X, k: int, opts, config: SolverConfig, n_neighbors: int = 30,
                knn_from: str = "embedding", off_support: str = "drop", *, P=None, k_ref=None,
                batch=None, depth=None, xtx=None):
    """The support-restricted fit (:func:`prepare_support`, then the solver over the terms);
    returns a host :class:`~sccase_jax.result.FitResult` with ``Z`` sparse (CSC, cells x
    cells) and ``params["eq2_loss"]``: F with the off-support part included (paper Eq. 2
    with the fit's terms) at the returned point, whichever ``off_support`` the fit used."""
    prob = prepare_support(X, k, opts, n_neighbors, knn_from, off_support, P=P, k_ref=k_ref,
                           batch=batch, depth=depth, xtx=xtx)
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
