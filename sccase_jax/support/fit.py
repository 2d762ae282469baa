"""The support-restricted fit from a preprocessed peaks x cells X: :func:`fit_support`.

Steps (none forms an n x n array): X on the device (``BCOO`` above the dense limit), the
NMF start (as the dense fit: same key, same W0, H0), the support (:mod:`.build`: cosine kNN
on H0 by default, or Jaccard kNN), the local Gram blocks and the Jaccard start on the
support, the mask R on the support, then the jitted solver (:mod:`.solver`).  The result's
``Z`` is a scipy CSC matrix (cells x cells) with ``n_neighbors`` entries per column.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp

from sccase_jax import progress as _progress
from sccase_jax.params import Hyperparams, SolverConfig
from sccase_jax.problem import check_input, device_matrix, warn_if_not_preprocessed
from sccase_jax.start import nmf
from sccase_jax.support import build
from sccase_jax.support.objective import SupportData, support_loss, to_sparse
from sccase_jax.support.solver import run, run_reporting
from sccase_jax.validate import InputError, default_dtype

__all__ = ["SUPPORTS", "SupportProblem", "fit_support", "prepare_support"]

# F of paper Eq. 2 at the returned point: one program (op by op it compiled ~20 small ones).
_eq2 = jax.jit(support_loss)

SUPPORTS = ("embedding", "cosine", "jaccard")


class SupportProblem:
    """A support-restricted fit ready to run: ``data``, the start ``W, H, V`` and ``hp``."""

    def __init__(self, data, W, H, V, hp):
        self.data, self.W, self.H, self.V, self.hp = data, W, H, V, hp


def prepare_support(X, k: int, opts, n_neighbors: int = 30, knn_from: str = "embedding",
                    off_support: str = "drop"):
    """Everything before the solver: checks, device X, NMF, support, local Grams, start."""
    if knn_from not in SUPPORTS:
        raise InputError(f"knn_from must be one of {SUPPORTS}, got {knn_from!r}")
    X = check_input(X, k)
    warn_if_not_preprocessed(X)
    m, n = X.shape
    d = min(int(n_neighbors), n)
    dtype = opts.dtype or default_dtype()
    show = bool(opts.progress)
    t0 = time.perf_counter()
    key_mask, key_nmf = jax.random.split(jax.random.PRNGKey(opts.seed))
    Xd = device_matrix(X, dtype, opts.x_format)
    W0, H0 = jax.block_until_ready(nmf(Xd, int(k), key_nmf, n_iter=opts.nmf_iter,
                                       tol=opts.nmf_tol, host=X if sp.issparse(X) else None,
                                       sketch=opts.nmf_sketch))
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
    k_ = int(k)
    data = SupportData(X=Xd, idx=jnp.asarray(idx), mask=build.support_mask(key_mask, n, d, opts.keep_prob),
                       L=jnp.asarray(L), P=jnp.zeros((m, k_), dtype), M=jnp.zeros(k_, dtype),
                       off=jnp.asarray(1.0 if off_support == "exact" else 0.0, dtype))
    hp = Hyperparams.create(opts.lam, opts.gamma1, opts.gamma2, 0.0, dtype=dtype)
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
