"""Small pytrees that the core passes around.

Shapes (peaks ``m``, cells ``n``, components ``k``):

=========  ========  ==========================================================
symbol     shape     meaning
=========  ========  ==========================================================
``X``      m x n     preprocessed accessibility (dense array or ``BCOO``)
``G``      n x n     ``X^T X``, the cell Gram matrix, formed once
``R``      n x n     boolean keep-mask of the dropout ``S = Z o R``
``W``      m x k     peak loadings
``H``      k x n     cell embedding
``Z``      n x n     cell-to-cell similarity
``P``      m x k     reference loadings (scCASER), zero outside the reference block
``M``      k         1.0 on reference (W1) columns, 0.0 on free (W2) columns
=========  ========  ==========================================================

Everything that changes a shape or the traced program lives in the static, hashable
:class:`SolverConfig`; everything one may want to sweep lives in :class:`Hyperparams`,
whose leaves are arrays so the whole fit can be ``vmap``-ed over them.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax.numpy as jnp

__all__ = ["Data", "Factors", "Hyperparams", "SolverConfig", "release_config"]


class Factors(NamedTuple):
    """The unknowns of the model."""

    W: Any  # m x k
    H: Any  # k x n
    Z: Any  # n x n


class Hyperparams(NamedTuple):
    """Weights of the objective; every field is an array leaf (vmappable)."""

    lam: Any
    gamma1: Any
    gamma2: Any
    alpha: Any

    @classmethod
    def create(cls, lam=1e6, gamma1=1.0, gamma2=1.0, alpha=0.0, dtype=jnp.float32):
        """Build hyperparameters as arrays of ``dtype`` (broadcast shapes kept)."""
        return cls(*(jnp.asarray(v, dtype) for v in (lam, gamma1, gamma2, alpha)))


class Data(NamedTuple):
    """Everything fixed during a fit.

    ``X`` is used only in m x k / k x n products (``X @ (S H^T)`` and ``W^T X``);
    the n x n products go through ``G``.  ``P`` and ``M`` describe the scCASER reference
    block; for plain scCASE ``M`` is all zeros and ``P`` is ignored.  ``batch`` (the n x B
    one-hot batches) and ``batch_mu`` (the weight mu) carry the batch term, ``depth`` (n
    relative depths) the depth term, to the fit over terms
    (:func:`sccase_jax.fitting.dense_terms`, the ``Batch`` and ``Depth`` terms of
    :mod:`sccase_jax.terms`); the Gram-form solver refuses them.  ``None`` (default): not used.
    """

    X: Any  # m x n, dense or jax.experimental.sparse.BCOO
    G: Any  # n x n
    R: Any  # n x n, bool
    P: Any  # m x k
    M: Any  # k, float 0/1 (reference columns)
    batch: Any = None  # n x B one-hot batches (float), or None: no batch term
    batch_mu: Any = None  # scalar weight mu of the batch term
    depth: Any = None  # n, the depth term's p = depth / median(depth), or None: no depth term


class SolverConfig(NamedTuple):
    """Static solver settings (hashable; changing one recompiles).

    Attributes
    ----------
    max_iter
        Maximum number of outer iterations (Z, W, H updates); sets the history length.
        30 by default: with lam = 1e6 the relative change of F levels off near 5e-6 and
        rarely meets tol = 1e-6, and clustering quality was the same at 10, 30 and 100
        iterations (docs/results.md).
    tol
        Stop when ``|F_prev - F| / |F_prev| < tol`` (paper: 1e-6).  ``0`` never stops early.
    x_tol
        Also stop when the answer has settled: when ``max(||dH|| / ||H||, ||dZ|| / ||Z||)``
        of the last iteration (what the output is built from) is below ``x_tol`` (docs/model.md,
        "Stopping").  ``0`` (here) leaves the rule out of the program; ``fit`` and
        ``enhance`` default to :data:`~sccase_jax.options.DEFAULT_X_TOL` unless ``tol`` is
        given.
    w_step
        ``"exact"``: the exact line minimiser including the ``gamma1``/``alpha`` terms;
        ``"printed"``: the paper's printed Eq. 8 (and the released code), without ``gamma1``.
    z_step
        ``"free"``: the exact step along the gradient without the entries held at the bound
        (``Z = 0`` where the gradient is positive), one n x n x n product per step, the
        trial's ``G S`` updated from it (docs/model.md); ``"gradient"``: the paper's Eq.
        9-11, the exact step along the full gradient, then projected (two products, the
        released code); ``"auto"`` (default): the paper's step from the start and after
        any large move (most entries of Z moving, many cut to 0), the free step otherwise.
        :func:`sccase_jax.sweep` runs ``"auto"`` as ``"gradient"`` (under ``vmap`` a
        branch between the two would run both).
    h_step
        ``"backtrack"`` (paper): try ``h_step_init`` and shrink by ``h_step_shrink`` until F
        does not increase, at most ``h_max_trials`` trials; ``"exact"``: the minimiser of the
        quartic ``F(H - d D)``, guarded by the same backtracking.
    rescale_h
        Rescale each row of H to sum 1 at the start of every iteration (released code).
    guard
        Accept a projected move only if F does not increase (halving the step up to
        ``max_trials`` times, else keeping the old value).  This makes F monotone.
    max_trials
        Step halvings tried by the guard for the Z and W moves.
    progress
        Report iteration, F and relative change through ``jax.debug.callback``.
    precision
        Precision of every float32 matrix product in the fit, a value of
        ``jax.default_matmul_precision``: ``"highest"`` (true float32, the default) or
        ``"tensorfloat32"`` / ``"bfloat16"`` for the faster, less accurate tensor-core modes
        of GPUs and TPUs (JAX's own default on those).  ``None`` leaves JAX's setting alone.
        No effect on CPU, where products are always true float32 (docs/performance.md).
    """

    max_iter: int = 30
    tol: float = 1e-6
    x_tol: float = 0.0
    w_step: str = "exact"
    z_step: str = "auto"
    h_step: str = "backtrack"
    h_step_init: float = 0.2
    h_step_shrink: float = 0.2
    h_max_trials: int = 20
    rescale_h: bool = False
    guard: bool = True
    max_trials: int = 4
    progress: bool = False
    precision: str | None = "highest"


def release_config(**overrides) -> SolverConfig:
    """Settings that reproduce the authors' release (sccase 0.2.5).

    Three fixed iterations, H rows rescaled to sum 1 each iteration, the Z step along the
    full gradient, the printed W step,
    H trial steps ``0.2**i`` for ``i = 0..9`` and no monotonicity guard.  Combine with the
    row-normalised Jaccard start and the L2 TF-IDF to compare with the original.
    """
    base = dict(
        max_iter=3,
        tol=0.0,
        x_tol=0.0,
        w_step="printed",
        z_step="gradient",
        h_step="backtrack",
        h_step_init=1.0,
        h_step_shrink=0.2,
        h_max_trials=10,
        rescale_h=True,
        guard=False,
    )
    base.update(overrides)
    return SolverConfig(**base)
