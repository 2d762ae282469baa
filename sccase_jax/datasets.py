"""Small real datasets bundled with the package (no download needed)."""

from __future__ import annotations

from importlib import resources

__all__ = ["granja_bm600", "path", "simulate_batches", "simulate_from_bulk"]


def path(name: str = "granja2019_bm600.h5ad") -> str:
    """Filesystem path of a bundled data file."""
    return str(resources.files("sccase_jax").joinpath("data", name))


def granja_bm600():
    """Granja et al. 2019 bone marrow scATAC-seq, 600 cells x 5,000 peaks, 6 cell types.

    Raw read counts (cells x peaks, sparse), ``obs["cell_type"]`` the authors' labels
    (100 cells each), peaks named ``chr:start-end`` (hg19) with chr/start/end columns.
    Taken from the epiCHAOS example data (MIT licence); not one of the paper's datasets.
    """
    import anndata as ad

    return ad.read_h5ad(path())


def simulate_from_bulk(
    bulk,
    n_cells: int = 100,
    *,
    depth: float = 100.0,
    depth_sd: float = 0.5,
    noise: float = 0.7,
    label_key: str = "cell_type",
    seed: int = 0,
):
    """Single cells sampled from bulk ATAC profiles of sorted populations (known truth).

    Each profile (a row of ``bulk``, e.g. ``corces2016_bulk_signature.h5ad``) is scaled to
    a distribution ``p`` over its peaks and mixed with uniform noise,
    ``(1 - noise) p + noise / m``: the fraction ``noise`` of each cell's reads falls on
    random peaks, as in simulations of scATAC-seq from bulk data.  Every type gets
    ``n_cells`` cells whose read counts are log-normal around ``depth`` (log-scale standard
    deviation ``depth_sd``, at least 1 read) and whose reads are multinomial over the peaks.

    Returns a cells x peaks AnnData: ``X`` the counts (CSR float32), ``obs[label_key]`` the
    profile each cell came from, ``obs["n_reads"]``, ``layers["truth"]`` the noise-free
    profile ``p`` of the cell's type and ``layers["open"]`` the binary truth ``p >= 1 / m``
    (peaks enriched in that type, for :func:`sccase_jax.evaluation.metrics.signal_scores`).  ``uns``
    records the settings.  Deterministic for a given ``seed``.
    """
    import anndata as ad
    import numpy as np
    import pandas as pd
    import scipy.sparse as sp

    B = bulk.X.toarray() if sp.issparse(bulk.X) else np.asarray(bulk.X)
    B = np.asarray(B, dtype=np.float64)
    if B.ndim != 2 or B.shape[0] < 1 or B.shape[1] < 2:
        raise ValueError(f"bulk must hold at least one profile over two or more peaks, got {B.shape}")
    if not np.all(np.isfinite(B)) or (B < 0).any():
        raise ValueError("bulk profiles must be finite and non-negative")
    totals = B.sum(axis=1)
    if (totals <= 0).any():
        empty = list(np.asarray(bulk.obs_names)[totals <= 0][:5])
        raise ValueError(f"bulk profiles without any signal: {empty}")
    if not (isinstance(n_cells, (int, np.integer)) and n_cells >= 1):
        raise ValueError(f"n_cells must be a positive integer, got {n_cells!r}")
    if not (np.isfinite(depth) and depth >= 1):
        raise ValueError(f"depth must be >= 1 read, got {depth!r}")
    if not (np.isfinite(depth_sd) and depth_sd >= 0):
        raise ValueError(f"depth_sd must be >= 0, got {depth_sd!r}")
    if not (0.0 <= noise <= 1.0):
        raise ValueError(f"noise must lie in [0, 1], got {noise!r}")
    if label_key in bulk.obs:
        names = bulk.obs[label_key].astype(str).to_numpy()
    else:
        names = np.asarray(bulk.obs_names, dtype=str)

    m = B.shape[1]
    P = B / totals[:, None]
    S = (1.0 - noise) * P + noise / m
    rng = np.random.default_rng(seed)
    types = np.repeat(np.arange(B.shape[0]), n_cells)
    reads = np.maximum(np.rint(rng.lognormal(np.log(depth), depth_sd, types.size)), 1).astype(np.int64)
    counts = np.stack([rng.multinomial(r, S[t]) for r, t in zip(reads, types)])
    obs = pd.DataFrame(
        {label_key: pd.Categorical(names[types], categories=list(dict.fromkeys(names))),
         "n_reads": reads},
        index=[f"cell{i}" for i in range(types.size)],
    )
    out = ad.AnnData(sp.csr_matrix(counts, dtype=np.float32), obs=obs, var=bulk.var.copy())
    out.layers["truth"] = P[types].astype(np.float32)
    out.layers["open"] = sp.csr_matrix(P[types] >= 1.0 / m, dtype=np.float32)
    out.uns["simulation"] = {"source": "simulate_from_bulk", "n_cells": int(n_cells),
                             "depth": float(depth), "depth_sd": float(depth_sd),
                             "noise": float(noise), "seed": int(seed)}
    return out


def simulate_batches(adata, n_batches: int = 2, *, depth=(1.0, 0.4), efficiency_sd: float = 0.6,
                     batch_key: str = "batch", seed: int = 0):
    """Batches simulated on real counts: each cell, at random (seeded), in one of
    ``n_batches``; in batch ``b`` every read of peak ``p`` is kept with probability
    ``min(1, depth[b] x e[b, p])`` (binomial thinning), ``e[b, p]`` a peak-specific
    efficiency, log-normal with mean 1 and log-scale sd ``efficiency_sd``.  Returns a new
    AnnData (counts in ``X``, ``obs[batch_key]`` ``"batch0"``, ...); ``adata`` is not
    modified.  docs/batch.md.
    """
    import anndata as ad
    import numpy as np
    import scipy.sparse as sp

    from sccase_jax.validate import InputError, check_int, check_real

    n_batches = check_int("n_batches", n_batches, 2)
    depth = tuple(check_real("depth", d, 0.0, 1.0) for d in depth)
    if len(depth) != n_batches:
        raise InputError(f"depth must give one fraction per batch ({n_batches}), got {len(depth)}")
    efficiency_sd = check_real("efficiency_sd", efficiency_sd)
    rng = np.random.default_rng(seed)
    C = sp.csr_matrix(adata.X)
    n, m = C.shape
    batch = rng.permutation(np.arange(n) % n_batches)
    eff = np.exp(rng.normal(-0.5 * efficiency_sd**2, efficiency_sd, (n_batches, m)))
    keep = np.minimum(1.0, np.asarray(depth)[:, None] * eff)  # batches x peaks
    coo = C.tocoo()
    prob = keep[batch[coo.row], coo.col]
    kept = rng.binomial(np.round(coo.data).astype(np.int64), prob)
    out = sp.csr_matrix((kept.astype(np.float32), (coo.row, coo.col)), shape=(n, m))
    out.eliminate_zeros()
    obs = adata.obs.copy()
    obs[batch_key] = np.array([f"batch{b}" for b in batch])
    return ad.AnnData(out, obs=obs, var=adata.var.copy())
