r"""The ``(lam, K)`` grid of :func:`sccase_jax.sweep` with Z on a support (``z_support="knn"``).

Each K has its own start and its own support (the embedding kNN of its NMF start H0, as
:func:`~sccase_jax.support.fit.prepare_support` builds it for ``fit``), so K is a Python
loop, one compilation per K; within a K the members share the data (X, the support, the
local Gram blocks, the mask) and the start, and the solver is ``vmap``-ed over lam in
batches of ``batch_size``.  Every member equals ``fit(X, K, lam=lam, z_support="knn",
...)`` up to the rounding of batched products.

The result is one batched :class:`~sccase_jax.result.FitResult` as for the dense sweep: W
and H padded to ``max(ks)`` components, and ``Z`` an object array ``(len(lams),
len(ks))`` of scipy CSC matrices (cells x cells, ``n_neighbors`` entries per column, as
``fit`` returns), so ``result.member(i, j)`` is the fit's result.  No n x n array exists.
"""

from __future__ import annotations

from functools import lru_cache

import jax
import jax.numpy as jnp
import numpy as np

from sccase_jax.params import SolverConfig
from sccase_jax.support.fit import prepare_support
from sccase_jax.support.objective import to_sparse
from sccase_jax.support.solver import run

__all__ = ["sweep_support"]


@lru_cache(maxsize=32)
def _batched(config: SolverConfig):
    return jax.jit(jax.vmap(lambda data, W, H, V, hp: run(data, W, H, V, hp, config),
                            in_axes=(None, None, None, None, 0)))


def sweep_support(X, lams, ks, opts, config: SolverConfig, batch_size=None,
                  keep_factors: bool = True) -> dict:
    """The members of the grid on the host, as arrays with leading axes ``(L, K)``
    (a dict of :class:`~sccase_jax.result.FitResult`'s fields, ``Z`` an object array)."""
    L, K = len(lams), len(ks)
    k_max = int(np.max(ks))
    b = L if batch_size is None else min(int(batch_size), L)
    cols = {f: [[None] * K for _ in range(L)] for f in
            ("W", "H", "Z", "loss", "initial_loss", "n_iter", "converged", "status", "rel_change",
             "x_change")}
    for j, k in enumerate(ks):
        prob = prepare_support(X, int(k), opts.replace(lam=float(lams[0])), opts.n_neighbors,
                               opts.knn_from, opts.off_support)
        idx = np.asarray(prob.data.idx)
        lam_all = jnp.asarray(lams, prob.hp.lam.dtype)
        fn = _batched(config)
        for start in range(0, L, b):
            sel = np.arange(start, start + b).clip(max=L - 1)  # the last batch padded: one program
            hp = prob.hp._replace(lam=lam_all[sel], **{
                f: jnp.broadcast_to(getattr(prob.hp, f), (b,)) for f in ("gamma1", "gamma2", "alpha")})
            res = jax.device_get(fn(prob.data, prob.W, prob.H, prob.V, hp))
            for r in range(min(b, L - start)):
                i = start + r
                cols["W"][i][j] = np.pad(np.asarray(res.W[r]), ((0, 0), (0, k_max - int(k))))
                cols["H"][i][j] = np.pad(np.asarray(res.H[r]), ((0, k_max - int(k)), (0, 0)))
                cols["Z"][i][j] = to_sparse(res.Z[r], idx)
                for f in ("loss", "initial_loss", "n_iter", "converged", "status", "rel_change",
                          "x_change"):
                    cols[f][i][j] = np.asarray(getattr(res, f)[r])
    out = {f: np.array(v) for f, v in cols.items() if f != "Z"}
    Z = np.empty((L, K), object)
    for i in range(L):
        for j in range(K):
            Z[i, j] = cols["Z"][i][j]
    out["Z"] = Z
    if not keep_factors:
        out.update(W=None, H=None, Z=None)
    return out
