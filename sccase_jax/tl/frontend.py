"""The AnnData front end: :func:`enhance` = preprocessing + the fit + the output.

One call reads the counts of an AnnData (cells x peaks), preprocesses them (peak filter,
TF-IDF: :mod:`sccase_jax.preprocessing`), chooses k (the estimate of the number of cell
types, :mod:`sccase_jax.estimate`), maps a reference if one is given (scCASER,
:mod:`sccase_jax.reference`), fits (:func:`sccase_jax.fitting.fit_with`), builds the
enhanced matrix (:mod:`sccase_jax.output`) and returns a new AnnData, or writes it
(:mod:`sccase_jax.io`).  Every setting is an option of :class:`sccase_jax.options.Options`.
"""

from __future__ import annotations

import dataclasses
import os
import time
import warnings
from typing import Any

import numpy as np
import scipy.sparse as sp

from sccase_jax import diagnostics, estimate, integration, io, output
from sccase_jax import progress as _progress
from sccase_jax.fitting import dense_z, fit_with
from sccase_jax.objectives.depth import relative_depth
from sccase_jax.options import Options, options_from, signature
from sccase_jax.preprocessing import check_preprocessed, preprocess
from sccase_jax.problem import check_input, reduce
from sccase_jax.reference.mapping import reference_block
from sccase_jax.support.build import host_gram, keeps_gram
from sccase_jax.tl import store
from sccase_jax.validate import InputError, check_matrix, default_dtype

__all__ = ["batch_codes", "enhance", "get_counts"]


def enhance(adata, n_components: int | None = None, *, reference=None, **options):
    """Enhance scATAC-seq counts with scCASE; returns a new AnnData over the kept peaks.

    ``adata`` holds cells x peaks counts in ``X`` (or ``layers[layer]``) and is never
    modified; a backed AnnData is read into memory first.  A path is read with
    :func:`sccase_jax.readers.read` (an .h5ad, a Cell Ranger .h5 or matrix-market folder, a
    MuData .h5mu; a fragments file needs ``sccase_jax.read(path, peaks=BED)`` first).
    ``n_components`` is k, the total number of components (``None``: the estimated number of
    cell types c, plus 1; with a reference ``round(1.3 c) + c // 2500`` with c at least its
    number of profiles, so that each profile keeps its column in W1).  ``reference``:
    scCASER, an AnnData of reference profiles x peaks (bulk, pseudo-bulk or self-reference:
    :mod:`sccase_jax.reference`), matched to the kept peaks by name or genomic overlap.
    Every other setting is an option of :class:`sccase_jax.options.Options`, listed below
    with its default; an unknown keyword is a ``TypeError`` raised before any work, naming
    the closest valid one, and every value is checked before any work
    (:class:`~sccase_jax.validate.InputError`).

    Returns a new AnnData (kept cells x kept peaks) with ``obs`` and ``var`` copied, ``X``
    the raw counts, ``layers[key_added]`` the enhanced matrix ``(X B)^T`` (``B`` from
    :func:`~sccase_jax.output.output_weights`: the blend by default, ``Z`` with
    ``output="xz"``), ``obsm[f"X_{key_added}"] = H^T``, ``varm[f"{key_added}_W"] = W``,
    ``obsp[f"{key_added}_Z"]`` (Z, by default cut to the output's neighbours, sparse),
    ``uns[key_added] = {"loss", "initial_loss", "n_iter", "converged", "status",
    "message", "rel_change", "params", "time_s"}`` and, with a reference,
    ``uns[key_added]["reference"]``.  With ``out_file`` the result is written there (the
    enhanced layer in cell blocks) and the returned AnnData lacks that layer.
    """
    t0 = time.perf_counter()
    opts = options_from(dict(options, n_components=n_components), caller="enhance")
    if reference is None and (opts.k_ref or opts.alpha):
        raise InputError("k_ref and alpha need a reference (reference=...)")
    if opts.batch_key is None and opts.batch_weight != 1.0:
        raise InputError("batch_weight needs batch_key (the obs column of the batches)")
    if opts.batch_method == "harmony" and opts.batch_weight != 1.0:
        raise InputError("batch_weight is the weight of the batch term: use it with "
                         "batch_method='term'")
    path = os.fspath(adata) if isinstance(adata, (str, os.PathLike)) else None
    out_file = opts.out_file
    if out_file is not None:
        out_file = io.check_out_file(
            out_file, overwrite=opts.overwrite,
            protect=(("input", path or io.source_file(adata)), ("reference", io.source_file(reference))))
    if path is not None:  # any input the readers know, told apart by its content
        from sccase_jax.readers import read

        adata = read(path)
    batch = batch_codes(adata, opts.batch_key)  # refused before any work
    opts = opts.resolved(reference=reference is not None)
    # A backed AnnData holds X as an on-disk dataset: read it (a new object) into memory.
    if getattr(adata, "isbacked", False):
        adata = adata.to_memory()
    if reference is not None and getattr(reference, "isbacked", False):
        reference = reference.to_memory()

    counts = get_counts(adata, opts.layer)
    X, peak_mask, cell_mask = _preprocessed(counts, opts)
    neighbors = output.resolve_neighbors(opts.neighbors, opts.output, X.shape[1],
                                         output.cell_entries(X))
    # G = X^T X, formed once: for the fit (the dense layout's G on the device with X; on
    # the support layout on the host, where it fits and its local Gram blocks come from it),
    # for the PCA of the k estimate (from G instead of a sparse SVD of X, which costs
    # seconds on many peaks) and for the output's support check.
    terms = (reference is not None or opts.correct_depth or opts.terms is not None
             or (opts.batch_key is not None and opts.batch_method == "term"))
    reduced, gram = None, None
    if dense_z(opts, X.shape[1], terms):
        reduced = reduce(X, opts)
        gram = reduced.G
    elif keeps_gram(X.shape[1], opts.dtype or default_dtype()):
        gram = host_gram(X, opts.dtype or default_dtype(), progress=opts.progress)
    k, estimated = _components(X, opts, reference, gram)
    kept = counts[peak_mask][:, cell_mask]
    ref_info, P = None, None
    if reference is not None:
        check_input(X, k)
        P, k_ref, ref_info = reference_block(
            reference, adata.var.iloc[np.flatnonzero(peak_mask)], kept, X, k, opts)
        opts = opts.replace(k_ref=k_ref)
    if batch is not None:
        batch = batch_codes(adata, opts.batch_key, cell_mask)
    depth = relative_depth(np.asarray(kept.sum(axis=0)).ravel()) if opts.correct_depth else None
    harmony = batch is not None and opts.batch_method == "harmony"
    res = fit_with(X, k, opts, P=P, batch=None if harmony else batch, depth=depth,
                   reduced=reduced, xtx=None if reduced is not None else gram)
    _check_finite(res)
    corrected = None
    if harmony:
        # The embedding corrected for the batches, and the output's similarity built from it
        # instead of the fitted Z (sccase_jax.integration).
        if opts.progress:
            _progress.stage("correcting the cell embedding for the batches (Harmony)")
        corrected = integration.harmony(res.H.T, batch, seed=opts.seed)
        res = res._replace(Z=output.embedding_similarity(corrected, neighbors))
    B, z_store, z_kept = store.weights_and_z(res, opts, neighbors)
    support = _support(X, B, opts, gram)
    keep_layer, layer_note = store.layer_plan((X.shape[1], X.shape[0]), opts)
    if opts.progress and not keep_layer:
        _progress.stage(f"enhanced layer: {layer_note}")
    E, enh = store.enhanced_output(X, B, opts, keep_layer, in_memory=out_file is None)

    out = _assemble(adata, kept, peak_mask, cell_mask, res, E, z_store, opts)
    if corrected is not None:
        out.obsm[f"X_{opts.key_added}_harmony"] = corrected
    if sp.issparse(B):
        out.obsp[f"{opts.key_added}_weights"] = sp.csr_matrix(B)
    params = dict(res.params, min_cells_frac=opts.min_cells_frac, tfidf=opts.tfidf,
                  binarize=opts.binarize, drop_empty_cells=opts.drop_empty_cells,
                  preset=opts.preset, output=opts.output,
                  blend=float(opts.blend) if opts.output == "blend" else None,
                  scale_output=opts.scale_output,
                  neighbors=None if neighbors is None else int(neighbors), layer=opts.layer,
                  n_components_estimated=estimated, store_z=z_kept,
                  layer_dtype=opts.layer_dtype, batch_key=opts.batch_key,
                  batch_method=opts.batch_method if opts.batch_key else None,
                  batch_weight=(float(opts.batch_weight)
                                if opts.batch_key and opts.batch_method == "term" else None),
                  correct_depth=bool(opts.correct_depth),
                  store_layer=keep_layer, layer_budget=opts.layer_budget)
    record = {"loss": res.loss, "initial_loss": res.initial_loss, "n_iter": res.n_iter,
              "converged": res.converged, "status": str(res.status), "message": res.message,
              "rel_change": res.rel_change, "params": params, "layer": layer_note,
              "time_s": time.perf_counter() - t0}
    if enh.scaling is not None:
        record["scaling"] = enh.scaling.as_dict()
    if support is not None:
        record["support"] = support
    if ref_info is not None:
        record["reference"] = ref_info
    if isinstance(adata.uns.get("sccase_input"), dict):  # what a reader recorded about the file
        record["input"] = dict(adata.uns["sccase_input"])
    out.uns[opts.key_added] = _plain(record)
    if out_file is not None:
        store.write(out, out_file, enh, keep_layer, opts)
    return out


def _enhance_doc() -> str:
    lines = ["", "    Options", "    -------"]
    for f in dataclasses.fields(Options):
        if f.name == "n_components":
            continue
        default = f.metadata["default_text"] or repr(f.default)
        lines.append(f"    {f.name} = {f.default!r}")
        lines.append(f"        {f.metadata['help']} (default {default}).")
    return "\n".join(lines) + "\n"


enhance.__doc__ += _enhance_doc()
enhance.__signature__ = signature(enhance, None, keep=("adata", "n_components", "reference"))


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


def batch_codes(adata, key: str | None, cell_mask=None):
    """Integer codes of ``adata.obs[key]`` (of the cells in ``cell_mask``), or None without
    a key; one-line errors for an unknown key, missing labels, a single batch or a batch of
    one cell."""
    if key is None:
        return None
    if key not in adata.obs:
        have = ", ".join(map(repr, list(adata.obs.columns)[:12])) or "none"
        raise InputError(f"batch_key {key!r} is not a column of adata.obs (available: {have})")
    col = adata.obs[key]
    if cell_mask is not None:
        col = col[np.asarray(cell_mask)]
    missing = int(col.isna().sum())
    if missing:
        raise InputError(f"obs[{key!r}] has {missing} cells without a batch (NaN); label or "
                         "drop them first")
    names, codes = np.unique(col.astype(str).to_numpy(), return_inverse=True)
    if names.size < 2:
        raise InputError(f"obs[{key!r}] holds a single batch ({names[0]!r}): nothing to correct")
    sizes = np.bincount(codes)
    if sizes.min() < 2:
        raise InputError(f"batch {names[int(np.argmin(sizes))]!r} of obs[{key!r}] has one cell; "
                         "every batch needs at least two")
    return codes.astype(np.int32)


def _preprocessed(counts, opts: Options):
    """``(X, peak_mask, cell_mask)``: the TF-IDF of the kept peaks and cells; warns about
    cells whose TF-IDF profile is all zero."""
    X, peak_mask, cell_mask = preprocess(
        counts, min_cells_frac=opts.min_cells_frac, tfidf_variant=opts.tfidf,
        binarize_counts=opts.binarize, drop_empty_cells=opts.drop_empty_cells)
    n_zero = check_preprocessed(X)
    if n_zero:
        warnings.warn(
            f"{n_zero} of {X.shape[1]} cells have an all-zero TF-IDF profile (every kept peak "
            "they open is open in every cell, so its idf is 0): they carry no information into "
            "the fit and their enhanced profiles may be all zero",
            UserWarning,
            stacklevel=3,
        )
    return X, peak_mask, cell_mask


def _components(X, opts: Options, reference, gram=None) -> tuple[int, bool]:
    """``(k, estimated)``: ``opts.n_components``, or the released code's rule on the
    estimated number of cell types (with a reference, at least one type per profile)."""
    if opts.n_components is not None:
        return opts.n_components, False
    if opts.progress:
        _progress.stage(f"estimating the number of cell types ({X.shape[1]} cells x "
                        f"{X.shape[0]} peaks)")
    t_est = time.perf_counter()
    c = c_est = int(estimate.estimate_n_components(
        X, seed=opts.seed, gram=None if gram is None else np.asarray(gram)))
    if reference is None:
        k = c + 1
    else:
        # A reference lists the cell types it knows: at least one column per profile.
        c = max(c, int(getattr(reference, "n_obs", 0) or 0))
        k = max(round(1.3 * c) + c // 2500, 2)
    k = min(k, min(X.shape))
    if opts.progress:
        _progress.stage(f"estimated {c_est} cell types in {time.perf_counter() - t_est:.1f} s: "
                        f"k = {k}"
                        + ("" if reference is None else " (at least one type per reference profile)"))
    return k, True


def _support(X, B, opts: Options, gram=None):
    """The neighbour support of the blended output (:mod:`sccase_jax.diagnostics`), with a
    warning when the data do not support the structure it imposes; None for ``"xz"``.
    ``gram``: the fit's G = X^T X, when formed."""
    if opts.output != "blend" or opts.blend == 0:
        return None
    support = diagnostics.neighbour_support(X, B, seed=opts.seed, gram=gram)
    if opts.progress:
        _progress.stage(f"output: {support['message']}")
    if not support["supported"]:
        warnings.warn(support["message"], UserWarning, stacklevel=3)
    return support


def _check_finite(res) -> None:
    """A non-finite objective at the start is an error; later, a warning (the last finite
    iterate is returned)."""
    if res.status != "nonfinite":
        return
    if res.n_iter == 0:
        raise InputError(
            "the objective is not finite at the starting point (values too large for "
            f"{res.params['dtype']}?); rescale the input or use float64"
        )
    warnings.warn(
        f"the objective became non-finite at iteration {res.n_iter + 1}; returning the "
        "last finite iterate",
        RuntimeWarning,
        stacklevel=3,
    )


def _assemble(adata, kept, peak_mask, cell_mask, res, E, z_store, opts: Options):
    """The returned AnnData: raw counts, obs and var of the kept cells and peaks, the
    enhanced layer, H^T, W and Z."""
    import anndata as ad

    key = opts.key_added
    out = ad.AnnData(
        X=sp.csr_matrix(kept.T, dtype=np.float32),
        obs=adata.obs.iloc[np.flatnonzero(cell_mask)].copy(),
        var=adata.var.iloc[np.flatnonzero(peak_mask)].copy(),
    )
    if E is not None:
        out.layers[key] = E.astype(opts.layer_dtype, copy=False)
    out.obsm[f"X_{key}"] = res.H.T.copy()
    out.varm[f"{key}_W"] = res.W
    if z_store is not None:
        out.obsp[f"{key}_Z"] = z_store
    return out


def _plain(v: Any):
    """Make a value writable into ``uns`` (h5ad has no None)."""
    if v is None:
        return "none"
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v
