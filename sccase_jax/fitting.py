"""The array-level entry points: :func:`fit` scCASE, or :func:`fit_variant` any registered
objective, to a preprocessed peaks x cells matrix."""

from __future__ import annotations

import time

import jax.numpy as jnp
import numpy as np

from sccase_jax import progress as _progress
from sccase_jax.layout import DenseLayout
from sccase_jax.objectives.registry import get_objective
from sccase_jax.options import FIT, KNN_AUTO_CELLS, VARIANT_MAX_ITER, Options, options_from, signature
from sccase_jax.params import Factors, SolverConfig
from sccase_jax.problem import check_input, prepare, resolve_k_ref
from sccase_jax.result import FitResult
from sccase_jax.solver.alternating import run, run_donated, run_reporting
from sccase_jax.solver.over_terms import run as run_terms
from sccase_jax.solver.over_terms import run_reporting as run_terms_reporting
from sccase_jax.solver.projected import run_variant
from sccase_jax.start import gram_matrix
from sccase_jax.support.fit import fit_support
from sccase_jax.terms import Objective, TermData, extra_terms, sccase_terms
from sccase_jax.validate import InputError

__all__ = ["dense_z", "fit", "fit_options", "fit_variant", "solver_config"]

FIT_OPTIONS = Options.names(FIT)


def solver_config(opts: Options) -> SolverConfig:
    """The :class:`~sccase_jax.params.SolverConfig` of resolved options: their config (the
    preset's, or the defaults) with their ``max_iter``, ``tol`` and ``progress``."""
    return (opts.config or SolverConfig())._replace(max_iter=opts.max_iter, tol=opts.tol,
                                                    x_tol=opts.x_tol, progress=opts.progress)


def fit_options(opts: Options, n_components: int, k_ref: int, config: SolverConfig, dtype) -> dict:
    """The settings a fit records in ``FitResult.params``."""
    return dict(
        n_components=int(n_components), lam=opts.lam, gamma1=opts.gamma1, gamma2=opts.gamma2,
        keep_prob=opts.keep_prob, tol=opts.tol, x_tol=opts.x_tol, max_iter=opts.max_iter,
        seed=opts.seed,
        k_ref=k_ref, alpha=opts.alpha, jaccard_normalize=opts.jaccard_normalize,
        nmf_iter=opts.nmf_iter, nmf_tol=opts.nmf_tol, nmf_sketch=opts.nmf_sketch,
        config=config._asdict(), dtype=np.dtype(dtype).name,
    ) | ({} if opts.terms is None else {"terms": dict(opts.terms)})


def fit(X, n_components: int, *, P=None, init: Factors | None = None, **options) -> FitResult:
    """Fit scCASE to an already preprocessed peaks x cells matrix.

    ``X``: preprocessed accessibility, peaks x cells (scipy sparse or dense), non-negative;
    ``X, peaks, cells = sccase_jax.preprocess(adata.X.T)`` builds it from the raw counts of
    an AnnData (cells x peaks) as :func:`sccase_jax.enhance` does.  X that looks like raw
    counts or like a cells x peaks matrix is fitted with a warning.  ``n_components``: k.
    ``P``: scCASER reference loadings (peaks x ``k_ref``) for the first ``k_ref`` columns
    of W, pulled towards ``P`` with weight ``alpha``.  ``init``: starting
    :class:`~sccase_jax.params.Factors` (skips NMF and Jaccard).

    ``**options``: the fit's options of :class:`sccase_jax.options.Options` (``lam``,
    ``gamma1``, ``gamma2``, ``keep_prob``, ``tol``, ``max_iter``, ``seed``, ``preset``,
    ``config``, ``jaccard_normalize``, ``nmf_iter``, ``nmf_tol``, ``x_format``, ``gram``, ``dtype``,
    ``progress``, ``k_ref``, ``alpha``, ``z_support``, ``terms``), with the same defaults and
    checks as :func:`sccase_jax.enhance`.  ``terms={name: weight}`` adds registered loss
    terms (:func:`sccase_jax.terms.register_term`), fitted with the built-in ones by the
    solver over the terms (:mod:`sccase_jax.solver.over_terms`) on either layout of Z.
    The fit stops once an iteration moves H and Z by less than
    ``x_tol`` (1e-4) of their size or changes F by less than ``tol`` (1e-6) of itself,
    or after ``max_iter`` (30) iterations; ``tol``, ``x_tol`` and ``max_iter`` default to
    the config's (the preset's) when one is given, and ``x_tol`` to 0 when ``tol`` is
    given (the paper's rule alone).  0 iterations return the starting point.
    ``progress`` prints how long the start took, then iteration, F and relative change.
    """
    opts = options_from(options, allowed=FIT_OPTIONS, caller="fit", none_is_default=False)
    return fit_with(X, n_components, opts, P=P, init=init)


fit.__signature__ = signature(fit, FIT, keep=("X", "n_components", "P", "init"))


def fit_with(X, n_components: int, opts: Options, *, P=None, init=None, batch=None,
             depth=None, reduced=None, xtx=None) -> FitResult:
    """:func:`fit` with checked :class:`~sccase_jax.options.Options` (as ``enhance`` calls it);
    ``batch``: integer batch codes of the cells, for the batch term; ``depth``: relative
    depths, for the depth term; ``reduced``: X's :func:`~sccase_jax.problem.reduce`, when
    formed already (dense Z only); ``xtx``: X^T X on the host, when formed already
    (:func:`~sccase_jax.support.build.host_gram`; the support layout only)."""
    opts = opts.resolved()
    terms = P is not None or batch is not None or depth is not None or opts.terms is not None
    n = X.shape[1] if getattr(X, "ndim", 0) == 2 else 0  # bad shapes: prepare says so
    if _knn(opts, n, _dense_only(opts, terms, init is not None)):
        return _fit_knn(X, n_components, opts, P, init, batch, depth, xtx)
    t0 = time.perf_counter()
    prob = prepare(X, n_components, opts, P=P, k_ref=opts.k_ref, init=init, batch=batch,
                   depth=depth, reduced=reduced)
    if opts.progress:
        n = prob.factors.Z.shape[0]
        _progress.stage(f"start: {n} cells, k = {int(n_components)}, Gram matrix, Jaccard Z0 "
                        f"and NMF start in {time.perf_counter() - t0:.1f} s; compiling and "
                        "running the solver")
    config = solver_config(opts)
    if opts.terms is not None or batch is not None or depth is not None:
        res = _fit_dense_terms(X, prob, opts, config)
    elif opts.progress and init is None:
        # One line an iteration from the host loop: the compiled fit then holds no host
        # callback and goes into JAX's persistent compilation cache.
        quiet = config._replace(progress=False)
        res = run_reporting(prob.data, prob.factors, prob.hp, quiet, _progress.Reporter(quiet.max_iter))
    else:
        # Factors made here are ours to donate (Z0's buffer becomes the iterate); a caller's
        # ``init`` may share buffers with arrays the caller keeps, so it is not donated.
        solve = run_donated if init is None else run
        res = solve(prob.data, prob.factors, prob.hp, config)
    k_ref = int(np.asarray(prob.data.M).sum())
    params = fit_options(opts, n_components, k_ref, config, prob.hp.lam.dtype)
    params["gram"] = "dense" if prob.data.G is not None else "sparse"
    return res.fetch(params)


def _fit_dense_terms(X, prob, opts: Options, config: SolverConfig):
    """The dense fit with the batch term, the depth term or extra terms: the solver over
    the terms (:mod:`sccase_jax.solver.over_terms`) on the dense layout of
    :func:`dense_terms` (the Gram-form solver fits scCASE and scCASER alone)."""
    if opts.progress:  # one line an iteration from the host loop, as the plain fit
        quiet = config._replace(progress=False)
        return run_terms_reporting(*dense_terms(X, prob, opts), quiet,
                                   _progress.Reporter(quiet.max_iter))
    return run_terms(*dense_terms(X, prob, opts), config)


def dense_terms(X, prob, opts: Options):
    """``(objective, data, layout, factors)`` of a dense fit over terms from the plain fit's
    start ``prob`` (the same W0, H0, Z0, mask R and data, :func:`~sccase_jax.problem.prepare`):
    the :class:`~sccase_jax.layout.DenseLayout`, the built-in terms of ``prob`` (scCASER's
    pull, the batch and depth terms where set) plus ``opts.terms``."""
    d = prob.data
    dtype = prob.hp.lam.dtype
    G = d.G
    if G is None:  # the plain fit's products went through the sparse X: the layout needs G
        G = jnp.asarray(gram_matrix(check_input(X, prob.factors.W.shape[1]), np.dtype(dtype)))
    ref = bool(np.asarray(d.M).any())  # without a reference: no pull term, one W block
    data = TermData(d.X, P=d.P if ref else None, M=d.M if ref else None, batch=d.batch,
                    depth=d.depth)
    objective = Objective((*sccase_terms(prob.hp, batch_mu=d.batch_mu, depth=d.depth is not None,
                                         reference=ref), *extra_terms(opts.terms, dtype)))
    return objective, data, DenseLayout(d.R, G), prob.factors


def dense_z(opts: Options, n_cells: int, terms: bool = False, init: bool = False) -> bool:
    """Whether a fit of ``n_cells`` cells with these options keeps Z dense (n x n);
    ``terms``: the fit has a reference, the batch term, the depth term or extra terms;
    ``init``: a start."""
    opts = opts.resolved()
    return not _knn(opts, n_cells, _dense_only(opts, terms, init))


def _dense_only(opts: Options, terms: bool, init: bool) -> bool:
    """Whether only the dense layout fits this: a given start (n x n)."""
    return init


def _knn(opts: Options, n_cells: int, dense_only: bool = False) -> bool:
    """Whether the fit restricts Z to a candidate support (``z_support``): asked for, or
    ``"auto"`` above :data:`~sccase_jax.options.KNN_AUTO_CELLS` cells unless the fit holds
    something only the dense layout fits (``dense_only``: :func:`_dense_only`; a sweep's
    reference or variant solver).  A reference, the batch term and the depth term are
    fitted on either layout."""
    return opts.z_support == "knn" or (opts.z_support == "auto" and n_cells > KNN_AUTO_CELLS
                                        and not dense_only)


def _fit_knn(X, n_components: int, opts: Options, P, init, batch=None, depth=None,
             xtx=None) -> FitResult:
    """The support-restricted fit (:func:`~sccase_jax.support.fit.fit_support`: the solver
    over the terms on the support layout); Z comes back sparse."""
    if init is not None:
        raise InputError("z_support='knn' takes no init (use z_support='dense')")
    config = solver_config(opts)
    res = fit_support(X, n_components, opts, config, opts.n_neighbors, opts.knn_from,
                      opts.off_support, P=P, k_ref=opts.k_ref, batch=batch, depth=depth,
                      xtx=xtx)
    k_ref = 0 if P is None else resolve_k_ref(P, opts.k_ref, int(n_components))
    params = fit_options(opts, n_components, k_ref, config, res.W.dtype)
    params.update(res.params or {}, gram="support", z_support="knn", n_neighbors=int(opts.n_neighbors),
                  knn_from=opts.knn_from, off_support=opts.off_support)
    return res._replace(params=params)


def fit_variant(X, n_components: int, *, objective="sccase", optimizer=None, hyper=None,
                **options) -> FitResult:
    """Like :func:`fit`, for any registered objective (the projected optax solver).

    The start is built by :func:`~sccase_jax.problem.prepare` as for :func:`fit` (NMF,
    Jaccard Z0, mask R from ``seed``; X kept dense: the objectives take a dense X);
    ``hyper`` overrides the objective's weights other than ``lam``; ``optimizer`` is an
    optax ``GradientTransformation`` (default Adam, 1e-3).  ``max_iter`` defaults to
    :data:`~sccase_jax.options.VARIANT_MAX_ITER` (optimiser steps are small).
    """
    objective = get_objective(objective)
    opts = options_from(options, allowed=FIT_OPTIONS, caller="fit_variant")
    if opts.terms is not None:
        raise InputError("fit_variant fits a registered objective, not terms (use fit(..., terms=...))")
    if opts.max_iter is None:
        opts = opts.replace(max_iter=VARIANT_MAX_ITER)
    opts = opts.replace(x_format="dense").resolved()
    prob = prepare(X, n_components, opts)
    hp = objective.hyper(prob.hp.lam.dtype, **dict(hyper or {}, lam=opts.lam))
    config = (opts.config or SolverConfig())._replace(max_iter=int(opts.max_iter),
                                                      tol=float(opts.tol))
    res = run_variant(prob.data, prob.factors, hp, objective=objective, optimizer=optimizer,
                      config=config)
    return res.fetch(dict(
        n_components=int(n_components), objective=objective.name, seed=opts.seed, tol=opts.tol,
        max_iter=opts.max_iter, hyper={k: float(v) for k, v in hp.items()},
        config=config._asdict(),
    ))


fit_variant.__signature__ = signature(
    fit_variant, FIT, keep=("X", "n_components", "objective", "optimizer", "hyper"))
