"""AnnData front end: :func:`enhance` = preprocessing + :func:`~sccase_jax.api.fit` + output."""

from __future__ import annotations

import difflib
import inspect
import time
import warnings
from typing import Any

import numpy as np
import scipy.sparse as sp

from sccase_jax.api import (
    DEFAULT_MAX_ITER,
    DEFAULT_TOL,
    InputError,
    check_config,
    check_dtype,
    check_input,
    check_int,
    check_jaccard_normalize,
    check_keep_prob,
    check_matrix,
    check_real,
    check_seed,
    enhanced_matrix,
    fit,
)
from sccase_jax.params import SolverConfig, release_config
from sccase_jax.preprocessing import check_preprocessed, preprocess

__all__ = [
    "DEFAULT_NEIGHBORS", "OUTPUTS", "enhance", "enhanced_layer", "get_counts", "keep_largest",
    "minmax_scale", "output_weights", "resolve_neighbors",
]


def get_counts(adata, layer: str | None = None):
    """Counts as peaks x cells CSR (AnnData holds cells x peaks), validated."""
    if layer is None:
        M = adata.X
        if M is None:
            raise InputError("adata.X is empty; pass layer=... to use a layer")
    else:
        if layer not in adata.layers:
            have = ", ".join(map(repr, adata.layers.keys())) or "none"
            raise InputError(f"layer {layer!r} not found in adata.layers (available: {have})")
        M = adata.layers[layer]
    if not (sp.issparse(M) or isinstance(M, np.ndarray)):
        # A backed AnnData's sparse X is an on-disk dataset: read it.
        M = M.to_memory() if hasattr(M, "to_memory") else np.asarray(M)
    check_matrix(M, "the count matrix")
    return sp.csr_matrix(M, dtype=np.float64).T.tocsr()


def minmax_scale(E: np.ndarray) -> np.ndarray:
    """The released code's output scaling: min-max per peak, then per cell (in place)."""
    for axis in (0, 1):  # E is cells x peaks: axis 0 scales each peak, then axis 1 each cell
        lo = E.min(axis=axis, keepdims=True)
        span = E.max(axis=axis, keepdims=True) - lo
        E -= lo
        E /= np.where(span > 0, span, 1)
    return E


OUTPUTS = ("blend", "xz")

# The blended output's default: each cell averages its DEFAULT_NEIGHBORS most similar cells
# under Z (all of them in data of at most that many cells).  Chosen by measured clustering
# quality (docs/results.md, "Defaults"): on the Granja bone-marrow data it raised ARI/AMI
# above both raw TF-IDF baselines (D6T1 2k 0.368/0.595 against 0.338/0.577 with all cells;
# the whole 10k data 0.443/0.632 against 0.365/0.603, seeds 0-1), tied on bm600 and
# chromVAR, and cost the simulated balanced populations 0.036 ARI, still above raw.
DEFAULT_NEIGHBORS = 300


def resolve_neighbors(neighbors, output: str):
    """``neighbors`` as :func:`output_weights` takes it: ``"auto"`` is
    :data:`DEFAULT_NEIGHBORS` for the blended output and ``None`` (all cells) for the
    paper's ``X Z``; ``"all"`` is ``None``; an integer or ``None`` is returned as is."""
    if isinstance(neighbors, str):
        if neighbors == "auto":
            return DEFAULT_NEIGHBORS if output == "blend" else None
        if neighbors == "all":
            return None
        raise InputError(
            f"neighbors must be a positive integer, 'auto', 'all' or None, got {neighbors!r}"
        )
    return neighbors


def _check_output(output: str, blend, neighbors=None) -> None:
    if output not in OUTPUTS:
        raise InputError(f"output must be one of {OUTPUTS}, got {output!r}")
    if output == "blend" and not (
        isinstance(blend, (int, float, np.floating)) and 0.0 <= float(blend) <= 1.0
    ):
        raise InputError(f"blend must be a number in [0, 1], got {blend!r}")
    if neighbors is not None and not (
        isinstance(neighbors, (int, np.integer)) and not isinstance(neighbors, bool)
        and neighbors >= 1
    ):
        raise InputError(
            f"neighbors must be a positive integer, 'auto', 'all' or None, got {neighbors!r}"
        )


# Columns of Z selected at a time by keep_largest.
KEEP_BLOCK = 256


def keep_largest(Z, neighbors: int) -> np.ndarray:
    """``Z`` with each column reduced to its ``neighbors`` largest entries (the rest 0).

    Exactly ``neighbors`` entries per column are kept (ties broken by position); with
    ``neighbors >= n`` the result equals ``Z``.
    """
    Z = np.asarray(Z)
    n = Z.shape[0]
    if neighbors >= n:
        return Z.copy()
    out = np.zeros_like(Z)
    # In blocks of columns: a whole-matrix argpartition holds an n x n int64 index array
    # and a negated copy of Z (3 n^2 floats more, 1.2 GB at 10,000 cells).  Each column
    # is selected on its own either way, so the result is the same.
    for j in range(0, Z.shape[1], KEEP_BLOCK):
        blk = Z[:, j : j + KEEP_BLOCK]
        key = -blk if np.issubdtype(Z.dtype, np.floating) else -blk.astype(np.float64)
        idx = np.argpartition(key, neighbors - 1, axis=0)[:neighbors]
        np.put_along_axis(out[:, j : j + KEEP_BLOCK], idx, np.take_along_axis(blk, idx, axis=0),
                          axis=0)
    return out


def output_weights(Z, output: str = "blend", blend: float = 0.8,
                   neighbors: int | str | None = None) -> np.ndarray:
    """The n x n matrix ``B`` whose product ``X B`` is the enhanced matrix.

    ``"xz"``: ``B = Z``, the paper's ``X Z``.  ``"blend"``: ``B = (1 - blend) I + blend Zc``
    with ``Zc`` the columns of ``Z`` scaled to sum 1, so that each enhanced cell is
    ``(1 - blend) x_j + blend sum_i x_i Zc_ij``: its own TF-IDF profile blended with the
    ``Z``-weighted average of the cells (a column of ``Z`` without weight keeps the cell's
    own profile).  Either way the product runs through the same dense or blocked code.

    ``neighbors``: first keep only the ``neighbors`` largest entries of each column of
    ``Z`` (:func:`keep_largest`), so that each cell averages its most similar cells only.
    ``None`` or ``"all"`` (this function's default): all of ``Z``; ``"auto"``:
    :data:`DEFAULT_NEIGHBORS` (300) for the blended output, all of ``Z`` for ``"xz"``
    (:func:`resolve_neighbors`; :func:`enhance`'s default).  A ``Z`` of integers is taken
    as float64.
    Measured (docs/results.md, items 9, 12 and 14): on the Granja data 100-500 raised
    ARI/AMI (D6T1 2k by about 0.03/0.02); on simulated balanced populations every value
    tried lowered them (by 0.03-0.09 ARI).
    """
    if output in OUTPUTS:  # else _check_output names the bad output
        neighbors = resolve_neighbors(neighbors, output)
    _check_output(output, blend, neighbors)
    Z = np.asarray(Z)
    if not np.issubdtype(Z.dtype, np.floating):
        Z = Z.astype(np.float64)  # integer weights would be scaled to 0
    if neighbors is None:
        return _weights(Z, output, blend, inplace=False)
    # keep_largest's result is a fresh array: scaled in place
    return _weights(keep_largest(Z, int(neighbors)), output, blend, inplace=True)


def _weights(Z, output: str, blend: float, inplace: bool) -> np.ndarray:
    """:func:`output_weights` of a Z already cut to its neighbours (scaled in place if
    ``inplace``)."""
    if output == "xz":
        return Z
    s = Z.sum(axis=0)
    empty = ~(s > 0)
    scale = (float(blend) / np.where(empty, 1, s)).astype(Z.dtype)
    if inplace:
        Z *= scale
        B = Z
    else:
        B = Z * scale
    B[np.diag_indices_from(B)] += np.where(empty, 1.0, 1.0 - float(blend)).astype(Z.dtype)
    return B


LAYER_DTYPES = ("float32", "float16")
STORE_Z = ("auto", "full", "none")


def _check_store_z(store_z):
    """``store_z`` as given ("auto", "full", "none") or a positive int, else InputError."""
    if isinstance(store_z, str) and store_z in STORE_Z:
        return store_z
    if isinstance(store_z, (int, np.integer)) and not isinstance(store_z, bool) and store_z >= 1:
        return int(store_z)
    raise InputError(f"store_z must be 'auto', 'full', 'none' or a positive integer, got {store_z!r}")


def _stored_z(store_z, neighbors):
    """What obsp keeps: ``"full"``, ``"none"`` or a number of neighbours per cell."""
    if store_z == "auto":
        return "full" if neighbors is None else int(neighbors)
    return store_z


def enhanced_layer(adata, key: str = "sccase", *, block: int = 1024) -> np.ndarray:
    """Recompute the enhanced layer of an :func:`enhance` output from what it stores.

    From the raw counts in ``adata.X`` (kept cells x kept peaks), the settings in
    ``uns[key]["params"]`` (TF-IDF variant, binarisation, output, blend, neighbours,
    scaling) and Z in ``obsp[f"{key}_Z"]``: the same matrix as ``layers[key]`` (float32;
    to the bit when the counts are whole numbers), for outputs written with
    ``store_layer=False``.  The stored Z must cover the output's neighbours (the default
    ``store_z="auto"`` does); otherwise an :class:`~sccase_jax.api.InputError` says why.
    """
    from sccase_jax.preprocessing import binarize, tfidf

    info = adata.uns.get(key)
    if not isinstance(info, dict) or "params" not in info:
        raise InputError(f"uns[{key!r}] holds no enhance settings: not an enhance output")
    params = info["params"]
    zkey = f"{key}_Z"
    if zkey not in adata.obsp:
        raise InputError(f"obsp[{zkey!r}] is missing (written with store_z='none'): Z is needed "
                         "to recompute the enhanced layer")
    neighbors = params.get("neighbors")
    neighbors = None if neighbors in (None, "none") else int(neighbors)
    stored = params.get("store_z", "full")
    if stored not in ("full", "none") and (neighbors is None or int(stored) < neighbors):
        used = "every cell" if neighbors is None else f"{neighbors} neighbours per cell"
        raise InputError(f"obsp[{zkey!r}] keeps {stored} neighbours per cell but the output used "
                         f"{used}; write with store_z='full' (or a larger store_z) to recompute it")
    Z = adata.obsp[zkey]
    Z = Z.toarray() if sp.issparse(Z) else np.asarray(Z)
    C = sp.csr_matrix(adata.X, dtype=np.float64).T.tocsr()  # peaks x cells
    if params.get("binarize"):
        C = binarize(C)
    X = tfidf(C, params.get("tfidf", "l2"))
    if neighbors is not None:
        Z = keep_largest(Z, neighbors)
    output = params.get("output", "blend")
    blend = 0.0 if output != "blend" else float(params["blend"])
    B = _weights(Z, output, blend, inplace=neighbors is not None)
    E = enhanced_matrix(X, B, block=block)
    if params.get("scale_output"):
        minmax_scale(E)
    return E


def _plain(v: Any):
    """Make a value writable into ``uns`` (h5ad has no None)."""
    if v is None:
        return "none"
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


def enhance(
    adata,
    n_components: int | None = None,
    *,
    reference=None,
    k_ref: int | None = None,
    alpha: float | None = None,
    peak_match: str = "auto",
    min_peak_match: float = 0.1,
    warn_peak_match: float = 0.5,
    lam: float | None = None,
    gamma1: float = 1.0,
    gamma2: float = 1.0,
    keep_prob: float = 0.95,
    tol: float | None = None,
    max_iter: int | None = None,
    seed: int = 0,
    layer: str | None = None,
    min_cells_frac: float | None = None,
    tfidf: str = "l2",
    binarize: bool = False,
    drop_empty_cells: bool = False,
    preset: str = "paper",
    config: SolverConfig | None = None,
    output: str | None = None,
    blend: float = 0.8,
    scale_output: bool | None = None,
    neighbors: int | str | None = "auto",
    key_added: str = "sccase",
    store_z: int | str = "auto",
    layer_dtype: str = "float32",
    store_layer: bool = True,
    progress: bool = False,
    out_file: str | None = None,
    overwrite: bool = False,
    block: int = 1024,
    **fit_options,
):
    """Enhance scATAC-seq counts with scCASE; returns a new AnnData over the kept peaks.

    Parameters
    ----------
    adata
        Cells x peaks counts in ``adata.X`` or ``adata.layers[layer]``; never modified.
    n_components
        k, the total number of components (with a reference k = k1 + k2).  ``None``
        estimates the number of cell types c (ASTER-like ensemble) and uses c + 1 (scCASE)
        or ``round(1.3 c) + c // 2500`` (scCASER), as the released code does; with a
        reference, c is at least its number of profiles (so that each profile keeps its
        column in W1: with the estimate alone, 5 for the 16-profile D5T1 reference on the
        Granja D6T1 data, ARI/AMI were 0.320/0.539 against 0.389/0.603 with the blend over
        all cells, docs/reference.md; 0.410/0.636 with the default output).
    reference
        scCASER: an AnnData of reference profiles x peaks (bulk, pseudo-bulk or
        self-reference; see :mod:`sccase_jax.reference`).  Its peaks are matched to the
        kept target peaks by name or genomic overlap (``peak_match``), mapped (unmatched
        target peaks get 0), transformed like the target's TF-IDF, and factorised by NMF
        into ``P`` (peaks x k1), the start of and the pull on the reference block W1.
    k_ref
        k1, the reference block's columns.  Default ``min(n_profiles, k - 1)``: one column
        per profile while leaving at least one free column.
    alpha
        Weight of ``||P - W1||^2``.  Default 1.0 with a reference (P is scaled to the
        free block's NMF start, so the pull equals the ridge ``gamma1`` on W); unused
        without one.
    peak_match
        ``"auto"`` (overlap when both sides have coordinates, else names), ``"name"`` or
        ``"overlap"``.
    min_peak_match, warn_peak_match
        Refuse the reference when fewer than ``min_peak_match`` (default 10 %) of the kept
        target peaks are matched; warn below ``warn_peak_match`` (default 50 %).  Both are
        fractions in [0, 1].
    lam
        Weight of the similarity term; default 1e6, or 1e5 with a reference (MODEL.md).
    gamma1, gamma2, keep_prob
        As in :func:`~sccase_jax.api.fit` (numbers).
    tol, max_iter
        Stopping rule as in :func:`~sccase_jax.api.fit`.  Default ``None``: the value of
        ``config`` when one is given or set by the preset (``preset="release"``: 3
        iterations, ``tol = 0``), else ``tol = 1e-6`` and ``max_iter = 30``.  A value
        passed explicitly always wins over the preset's.  ``max_iter = 0`` returns the
        starting point.
    seed
        Seeds the mask R, the NMF start and the estimate of k: an integer in
        [0, 2**32 - 1].
    min_cells_frac
        Drop peaks accessible in fewer than this fraction of cells.  Default ``None``: 0
        (only peaks without any read are dropped), or the paper's 0.01 with
        ``preset="release"``.  Chosen by measured quality: on the Granja data the paper's
        1 % filter lowered clustering quality of both raw and enhanced data (by 0.02-0.03
        ARI); 0.3 % was tied with no filter (docs/results.md).
    tfidf, binarize
        TF-IDF variant and whether to binarise counts first.  Default ``"l2"`` (the
        released code's variant), chosen by measured clustering quality on the Granja data
        (docs/results.md); ``"paper"`` is Eq. 1 exactly.
    drop_empty_cells
        Remove cells left without counts by the peak filter instead of refusing.
    preset
        ``"paper"`` (default: the paper's solver, exact steps, run to ``tol``) or
        ``"release"``: the sccase 0.2.5 solver (3 iterations, H rows rescaled, printed W
        step, unguarded moves, row-normalised Jaccard).  Explicit ``config``, ``max_iter``
        and ``tol`` still win.
    config
        Full solver configuration, a :class:`~sccase_jax.params.SolverConfig` (anything
        else is an :class:`~sccase_jax.api.InputError`); its ``max_iter``/``tol`` are used
        unless the arguments ``max_iter``/``tol`` are given.
    output, blend
        What the enhanced matrix is (:func:`output_weights`).  ``"blend"`` (default):
        ``(1 - blend) X + blend X Zc``, each cell's TF-IDF profile blended with the
        ``Z``-weighted average of the cells (``Zc``: columns of ``Z`` summing to 1),
        ``blend = 0.8``.  ``"xz"``: the paper's ``X Z`` (the default with
        ``preset="release"``).  Chosen by measured clustering quality (docs/results.md):
        against ``X Z`` min-max scaled (the previous default) the blend was tied on the
        Granja data and better on simulated sorted populations and on the chromVAR cells
        (ARI 0.77 -> 1.00); over all cells 0.7-0.9 gave the same within seed noise, with
        the default ``neighbors`` 0.8 was best on the Granja data (0.7 better on the
        simulated populations; docs/results.md, item 14).
    scale_output
        Min-max scale the enhanced matrix per peak then per cell (as the released code
        does): True, False or ``None``.  Default ``None``: True for ``output="xz"`` (with the
        L2 TF-IDF it raised ARI/AMI of ``X Z`` on the Granja data), False for ``"blend"``
        (scaling lowered it).
    neighbors
        Keep only each cell's ``neighbors`` largest weights in ``Z`` before forming the
        output (:func:`output_weights`); ``obsp`` still holds the full ``Z``.  Default
        ``"auto"``: 300 (:data:`DEFAULT_NEIGHBORS`) for the blended output, all cells for
        ``output="xz"`` (the paper's ``X Z``, and the release preset).  ``None`` or
        ``"all"``: every cell (the default before this was measured).  Chosen by measured
        clustering quality (docs/results.md, "Defaults"): 300 raised ARI/AMI above both raw
        TF-IDF baselines on the Granja D6T1 data (2k: 0.368/0.595 against 0.338/0.577 with
        all cells; raw 0.345/0.518) and on the whole 10k data, tied on bm600 and chromVAR,
        and lowered the simulated balanced populations (0.712/0.805 against 0.748/0.829,
        still above raw 0.681/0.784): pass ``neighbors=None`` for balanced, very noisy data.
    key_added
        Prefix of the written keys (a non-empty string).
    store_z
        What ``obsp[f"{key_added}_Z"]`` keeps of Z.  ``"auto"`` (default): the neighbours
        the output used (each cell's ``neighbors`` largest weights, a sparse matrix), or
        the whole dense Z when the output used every cell (``output="xz"``,
        ``neighbors="all"``); an integer N: each cell's N largest weights (sparse);
        ``"full"``: the dense n x n Z (4 n^2 bytes: 17 MB at 2,000 cells, 430 MB at
        10,000); ``"none"``: not stored.  :func:`enhanced_layer` recomputes the enhanced
        layer from what is stored whenever it covers the output's neighbours.
    layer_dtype
        dtype of ``layers[key_added]``: ``"float32"`` (default) or ``"float16"`` (half the
        size, about three significant digits).
    store_layer
        Keep the enhanced layer (default).  ``False`` leaves it out (the largest part of
        the output: cells x peaks dense); :func:`enhanced_layer` recomputes it from the
        stored counts, settings and Z.
    progress
        Print to stderr each stage before the iterations (the K estimate and its result,
        the start), then one line per iteration (:func:`~sccase_jax.api.fit`).
    out_file, block
        For data whose dense enhanced matrix does not fit in memory: write the result to
        the .h5ad ``out_file``, with ``layers[key_added]`` computed and written ``block``
        cells at a time (a positive integer; :func:`sccase_jax.io.write_enhanced_h5ad`);
        the returned AnnData then lacks that layer.  ``out_file`` is checked before the
        fit (an ``.h5ad`` name in a directory where a file can be created, not the file of
        a backed ``adata`` or ``reference``) and written under a temporary name beside it,
        renamed when complete: a failure leaves no file.
    overwrite
        Replace an existing ``out_file``.  Default False: an existing file is refused
        before any work (an AnnData read into memory keeps no record of its file, so this
        is what keeps ``enhance(read_h5ad(p), out_file=p)`` from replacing the input).
    **fit_options
        Passed on to :func:`~sccase_jax.api.fit` (``x_format``, ``dtype``, ``nmf_iter``,
        ``jaccard_normalize``, ``gram``, ``init``).  An unknown keyword is a ``TypeError``
        raised before any work, naming the closest valid argument.  ``dtype`` is float32
        or float64; float64 needs ``jax.config.update("jax_enable_x64", True)`` (without
        it, a warning and float32).

    A backed AnnData (``read_h5ad(..., backed="r")``) is read into memory first (the
    caller's object is not changed).  Counts whose TF-IDF is all zero (every kept peak open
    in every cell, e.g. a single cell) are an :class:`~sccase_jax.api.InputError`; cells
    whose TF-IDF profile alone is all zero give a warning naming how many.

    Returns
    -------
    A new AnnData (kept cells x kept peaks) with ``obs`` and ``var`` copied, ``X`` the raw
    counts, and ``layers[key_added]`` the enhanced matrix ``(X B)^T`` (``B`` from
    :func:`output_weights`: the blend by default, ``Z`` with ``output="xz"``),
    ``obsm[f"X_{key_added}"] = H^T``, ``varm[f"{key_added}_W"] = W``,
    ``obsp[f"{key_added}_Z"] = Z``, ``uns[key_added] = {"loss", "initial_loss", "n_iter",
    "converged", "status", "message", "rel_change", "params", "time_s"}`` and, with a
    reference,
    ``uns[key_added]["reference"]`` (profiles, k_ref, alpha, how many peaks matched).
    """
    import anndata as ad

    t0 = time.perf_counter()
    _check_fit_options(fit_options)
    if preset not in ("paper", "release"):
        raise InputError(f"preset must be 'paper' or 'release', got {preset!r}")
    release = preset == "release"
    check_config(config)
    if release:
        config = config or release_config()
        fit_options.setdefault("jaccard_normalize", "row")
    # None: the config's value (the caller's or the preset's), else the package default.
    if max_iter is None:
        max_iter = DEFAULT_MAX_ITER if config is None else config.max_iter
    if tol is None:
        tol = DEFAULT_TOL if config is None else config.tol
    max_iter = check_int("max_iter", max_iter, 0)
    tol = check_real("tol", tol)
    if n_components is not None:
        n_components = check_int("n_components", n_components, 1, integral_float=False)
    seed = check_seed(seed, 0, 2**32 - 1)  # also seeds numpy and scikit-learn
    for name, v in (("lam", lam), ("gamma1", gamma1), ("gamma2", gamma2), ("alpha", alpha)):
        if v is not None or name.startswith("gamma"):  # lam, alpha: None is their default
            check_real(name, v)
    check_keep_prob(keep_prob)
    if k_ref is not None:
        check_int("k_ref", k_ref, 0, integral_float=False)
    for name, v in (("min_peak_match", min_peak_match), ("warn_peak_match", warn_peak_match)):
        check_real(name, v, 0.0, 1.0)
    if min_cells_frac is not None:
        check_real("min_cells_frac", min_cells_frac, 0.0, 1.0)
    if scale_output is not None and not isinstance(scale_output, (bool, np.bool_)):
        raise InputError(f"scale_output must be True, False or None, got {scale_output!r}")
    if not isinstance(key_added, str) or not key_added:
        raise InputError(f"key_added must be a non-empty string, got {key_added!r}")
    block = check_int("block", block, 1, integral_float=False)
    store_z = _check_store_z(store_z)
    if layer_dtype not in LAYER_DTYPES:
        raise InputError(f"layer_dtype must be one of {LAYER_DTYPES}, got {layer_dtype!r}")
    for name, v in (("store_layer", store_layer), ("overwrite", overwrite)):
        if not isinstance(v, (bool, np.bool_)):
            raise InputError(f"{name} must be True or False, got {v!r}")
    if out_file is not None:
        from sccase_jax.io import check_out_file, source_file

        out_file = check_out_file(
            out_file, overwrite=bool(overwrite),
            protect=(("input", source_file(adata)), ("reference", source_file(reference))),
        )
    if "dtype" in fit_options:
        fit_options["dtype"] = check_dtype(fit_options["dtype"])
    if "jaccard_normalize" in fit_options:
        check_jaccard_normalize(fit_options["jaccard_normalize"])
    if "nmf_iter" in fit_options:
        fit_options["nmf_iter"] = check_int("nmf_iter", fit_options["nmf_iter"], 0)
    if output is None:
        output = "xz" if release else "blend"
    if scale_output is None:
        scale_output = output == "xz"
    neighbors = resolve_neighbors(neighbors, output)
    _check_output(output, blend, neighbors)  # before the fit, not after it
    if lam is None:
        lam = 1e6 if reference is None else 1e5
    if min_cells_frac is None:
        min_cells_frac = 0.01 if release else 0.0
    if reference is None and (k_ref or alpha):
        raise InputError("k_ref and alpha need a reference (reference=...)")
    # A backed AnnData holds X as an on-disk dataset: read it (a new object) into memory.
    if getattr(adata, "isbacked", False):
        adata = adata.to_memory()
    if reference is not None and getattr(reference, "isbacked", False):
        reference = reference.to_memory()

    counts = get_counts(adata, layer)
    X, peak_mask, cell_mask = preprocess(
        counts,
        min_cells_frac=min_cells_frac,
        tfidf_variant=tfidf,
        binarize_counts=binarize,
        drop_empty_cells=drop_empty_cells,
    )
    n_zero = check_preprocessed(X)
    if n_zero:
        warnings.warn(
            f"{n_zero} of {X.shape[1]} cells have an all-zero TF-IDF profile (every kept peak "
            "they open is open in every cell, so its idf is 0): they carry no information into "
            "the fit and their enhanced profiles may be all zero",
            UserWarning,
            stacklevel=2,
        )
    n_components_estimated = n_components is None
    if n_components is None:
        from sccase_jax.estimate import estimate_n_components

        if progress:
            from sccase_jax._progress import stage

            stage(f"estimating the number of cell types ({X.shape[1]} cells x {X.shape[0]} peaks)")
        t_est = time.perf_counter()
        c = int(estimate_n_components(X, seed=seed))
        c_est = c
        if reference is None:
            n_components = c + 1
        else:
            # A reference lists the cell types it knows: at least one column per profile.
            c = max(c, int(getattr(reference, "n_obs", 0) or 0))
            n_components = max(round(1.3 * c) + c // 2500, 2)
        n_components = min(n_components, min(X.shape))
        if progress:
            stage(f"estimated {c_est} cell types in {time.perf_counter() - t_est:.1f} s: "
                  f"k = {n_components}"
                  + ("" if reference is None else " (at least one type per reference profile)"))
    ref_info = None
    if reference is not None:
        fit_options, ref_info = _reference_block(
            reference, adata.var.iloc[np.flatnonzero(peak_mask)], counts[peak_mask][:, cell_mask],
            X, n_components, k_ref=k_ref, alpha=alpha, peak_match=peak_match,
            min_match=min_peak_match, warn_match=warn_peak_match, tfidf=tfidf, binarize=binarize,
            seed=seed, fit_options=fit_options,
        )
    res = fit(
        X,
        n_components,
        lam=lam,
        gamma1=gamma1,
        gamma2=gamma2,
        keep_prob=keep_prob,
        tol=tol,
        max_iter=max_iter,
        seed=seed,
        config=config,
        progress=progress,
        **fit_options,
    )
    if res.status == "nonfinite":
        if res.n_iter == 0:
            raise InputError(
                "the objective is not finite at the starting point (values too large for "
                f"{res.params['dtype']}?); rescale the input or use float64"
            )
        warnings.warn(
            f"the objective became non-finite at iteration {res.n_iter + 1}; returning the "
            "last finite iterate",
            RuntimeWarning,
            stacklevel=2,
        )
    # The neighbours the output uses, selected once: for the output and for obsp.
    z_kept = _stored_z(store_z, neighbors)
    Zk = res.Z if neighbors is None else keep_largest(res.Z, int(neighbors))
    z_store = None
    if z_kept == "full":
        z_store = res.Z
    elif z_kept != "none":
        z_store = sp.csr_matrix(Zk if z_kept == neighbors else keep_largest(res.Z, z_kept))
    B = _weights(Zk, output, blend, inplace=neighbors is not None)
    del Zk
    if out_file is None and store_layer:
        E = enhanced_matrix(X, B)
        if scale_output:
            minmax_scale(E)

    out = ad.AnnData(
        X=sp.csr_matrix(counts[peak_mask][:, cell_mask].T, dtype=np.float32),
        obs=adata.obs.iloc[np.flatnonzero(cell_mask)].copy(),
        var=adata.var.iloc[np.flatnonzero(peak_mask)].copy(),
    )
    if out_file is None and store_layer:
        out.layers[key_added] = E.astype(layer_dtype, copy=False)
    out.obsm[f"X_{key_added}"] = res.H.T.copy()
    out.varm[f"{key_added}_W"] = res.W
    if z_store is not None:
        out.obsp[f"{key_added}_Z"] = z_store
    params = dict(res.params, min_cells_frac=min_cells_frac, tfidf=tfidf, binarize=binarize,
                  drop_empty_cells=drop_empty_cells, preset=preset, output=output,
                  blend=float(blend) if output == "blend" else None, scale_output=scale_output,
                  neighbors=None if neighbors is None else int(neighbors),
                  layer=layer, n_components_estimated=n_components_estimated,
                  store_z=z_kept, layer_dtype=layer_dtype,
                  store_layer=bool(store_layer) and out_file is None)
    record = {
        "loss": res.loss,
        "initial_loss": res.initial_loss,
        "n_iter": res.n_iter,
        "converged": res.converged,
        "status": res.status,
        "message": res.message,
        "rel_change": res.rel_change,
        "params": params,
        "time_s": time.perf_counter() - t0,
    }
    if ref_info is not None:
        record["reference"] = ref_info
    out.uns[key_added] = _plain(record)
    if out_file is not None:
        from sccase_jax import io

        if store_layer:
            extra = ((out.n_obs, out.n_vars), layer_dtype)
            if progress:
                from sccase_jax._progress import stage

                stage(f"writing {out_file}: about "
                      f"{io.format_bytes(io.h5ad_bytes(out, extra))}, the enhanced layer "
                      f"({io.format_bytes(out.n_obs * out.n_vars * np.dtype(layer_dtype).itemsize)}"
                      f" {layer_dtype}) block by block")
            io.write_enhanced_h5ad(out, out_file, X, B, key=key_added, block=block,
                                   scale=scale_output, dtype=np.dtype(layer_dtype))
        else:
            io.write_h5ad_atomic(out, out_file)
    return out


def _check_fit_options(fit_options: dict) -> None:
    """Refuse keywords that neither :func:`enhance` nor :func:`~sccase_jax.api.fit` takes.

    Raised before any work, as Python would for a misspelt argument, with the closest
    valid name suggested.
    """
    own = set(inspect.signature(enhance).parameters) - {"adata", "fit_options"}
    passable = set(inspect.signature(fit).parameters) - {"X", "n_components"} - own
    for name in fit_options:
        if name not in passable:
            close = difflib.get_close_matches(name, sorted(own | passable), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise TypeError(f"enhance() got an unexpected keyword argument {name!r}{hint}")


def _reference_block(reference, target_var, counts, X, k, *, k_ref, alpha, peak_match, min_match,
                     warn_match, tfidf, binarize, seed, fit_options):
    """Map, transform and factorise the reference; return the fit options and a record."""
    from sccase_jax import reference as refmod

    if not hasattr(reference, "var") or not hasattr(reference, "X"):
        raise InputError("reference must be an AnnData of profiles x peaks")
    if "P" in fit_options or "k_ref" in fit_options:
        raise InputError("pass the reference as reference=..., not P/k_ref fit options")
    Rm, match = refmod.map_reference(reference, target_var, method=peak_match,
                                     min_match=min_match, warn_match=warn_match)
    check_input(X, k)
    k = int(k)
    k1 = refmod.default_k_ref(Rm.shape[1], k) if k_ref is None else int(k_ref)
    if not 1 <= k1 <= min(k, Rm.shape[1]):
        raise InputError(f"k_ref must be between 1 and min(n_components = {k}, reference profiles ="
                         f" {Rm.shape[1]}), got {k1}")
    alpha = 1.0 if alpha is None else float(alpha)
    nmf_iter = fit_options.get("nmf_iter", 200)
    Rt = refmod.transform_reference(Rm, counts, tfidf, binarize)
    P = refmod.reference_loadings(Rt, k1, X=X, n_free=k - k1, seed=seed, nmf_iter=nmf_iter,
                                  dtype=fit_options.get("dtype"))
    info = dict(n_profiles=int(Rm.shape[1]), profiles=[str(s) for s in reference.obs_names],
                k_ref=k1, alpha=alpha, match_method=match.method, n_target_peaks=match.n_target,
                n_matched=match.n_matched, frac_matched=float(match.fraction),
                n_ref_peaks=match.n_ref, n_ref_peaks_used=match.n_ref_used,
                min_peak_match=min_match, warn_peak_match=warn_match)
    return dict(fit_options, P=P, k_ref=k1, alpha=alpha), info
