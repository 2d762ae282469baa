"""Semi-synthetic scATAC counts of realistic shape: 50,000-500,000 peaks, thousands of reads a cell.

The shared matrices keep 5,000-10,000 peaks; real peak sets have 50,000-500,000.  This
builds counts of any shape whose structure comes from real data, seeded:

- **cell types and their accessibility** from the Granja 2019 D6T1 10k cells (16 labelled
  types): each synthetic peak takes the per-type open rate of a randomly drawn real peak
  (its "parent"), times a peak-level log-normal factor (sd 0.5, peaks differ in strength) and
  a per-type log-normal factor (sd 0.3, so children of one parent are not copies);
- **cells**: types drawn with the real type proportions, a log-normal depth factor (sd 0.4),
  the rates scaled so that a cell has ``nnz_per_cell`` open peaks on average;
- **values**: drawn from the real matrix's value distribution (1 and 2 mostly: cut sites);
- **peaks**: names and coordinates from the real Cell Ranger peak set
  (``10x/atac_pbmc_1k_nextgem/peaks.bed``, 50,025 peaks): its peaks where there are enough,
  otherwise widths drawn from it and placed per chromosome with its gaps shrunk to fit
  (``var`` has ``chrom``, ``start``, ``end``; names ``chrom:start-end``).

These are not real cells: they have the shape and sparsity of real data and a known type
structure.  ``python -m experiments.realistic 2000 120000 --out FILE.h5ad`` writes one
(``--peaks-subset 10000`` also writes the same cells on a random 10,000 of the peaks).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from experiments.common import D6T1_10K, DATA, load

BED = DATA / "10x" / "atac_pbmc_1k_nextgem" / "peaks.bed"
CHROMS = [f"chr{i}" for i in range(1, 23)] + ["chrX", "chrY"]


def read_bed(path=BED):
    """``(chrom, start, end)`` arrays of a BED file (first three columns)."""
    chrom, start, end = [], [], []
    with open(path) as fh:
        for line in fh:
            if not line.strip() or line.startswith(("#", "track", "browser")):
                continue
            c, s, e = line.split("\t")[:3]
            chrom.append(c)
            start.append(int(s))
            end.append(int(e))
    return np.asarray(chrom), np.asarray(start, np.int64), np.asarray(end, np.int64)


def peak_set(n_peaks: int, rng) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n_peaks`` peaks in genome order: a random subset of the real BED when it has enough,
    else real widths placed per chromosome with the real gaps shrunk to fit."""
    chrom, start, end = read_bed()
    keep = np.isin(chrom, CHROMS)
    chrom, start, end = chrom[keep], start[keep], end[keep]
    if n_peaks <= chrom.size:
        idx = np.sort(rng.choice(chrom.size, n_peaks, replace=False))
        return chrom[idx], start[idx], end[idx]
    factor = n_peaks / chrom.size
    width = end - start
    out_c, out_s, out_e = [], [], []
    for c in CHROMS:
        on = chrom == c
        if not on.any():
            continue
        gaps = np.diff(start[on])
        gaps = gaps[gaps > 0]
        count = int(round(on.sum() * factor))
        w = rng.choice(width[on], count)
        g = np.maximum(rng.choice(gaps, count) / factor, w + 50).astype(np.int64)
        s = start[on][0] + np.concatenate([[0], np.cumsum(g[:-1])])
        out_c.append(np.full(count, c))
        out_s.append(s)
        out_e.append(s + w)
    chrom, start, end = (np.concatenate(a) for a in (out_c, out_s, out_e))
    if chrom.size > n_peaks:  # rounding per chromosome: drop the surplus at random
        idx = np.sort(rng.choice(chrom.size, n_peaks, replace=False))
        chrom, start, end = chrom[idx], start[idx], end[idx]
    return chrom, start, end


def realistic_counts(n_cells: int, n_peaks: int, nnz_per_cell: float = 4000.0, seed: int = 0,
                     block: int = 200):
    """A cells x peaks AnnData of semi-synthetic counts (see the module docstring)."""
    import anndata as ad
    import pandas as pd

    rng = np.random.default_rng(seed)
    real = load(D6T1_10K)
    C = sp.csr_matrix(real.X)
    types = real.obs["cell_type"].astype(str).to_numpy()
    names, codes, sizes = np.unique(types, return_inverse=True, return_counts=True)
    open_ = (C > 0).astype(np.float64)
    rate = np.vstack([np.asarray(open_[codes == t].mean(axis=0)).ravel() for t in range(names.size)])
    values, freq = np.unique(C.data, return_counts=True)

    parent = rng.integers(0, rate.shape[1], n_peaks)
    strength = rng.lognormal(0.0, 0.5, n_peaks)
    prof = rate[:, parent] * strength[None, :] * rng.lognormal(0.0, 0.3, (names.size, n_peaks))
    cell_type = rng.choice(names.size, n_cells, p=sizes / sizes.sum())
    depth = rng.lognormal(0.0, 0.4, n_cells)
    # Scale so that the expected number of open peaks a cell is nnz_per_cell (before the cap).
    mean_open = float(np.mean(prof.sum(axis=1)[cell_type] * depth))  # never cells x peaks
    prof = (prof * (nnz_per_cell / mean_open)).astype(np.float32)

    blocks = []
    for j in range(0, n_cells, block):
        t, dpt = cell_type[j : j + block], depth[j : j + block]
        p = np.minimum(prof[t] * dpt[:, None].astype(np.float32), 0.95)
        B = sp.csr_matrix(rng.random(p.shape, dtype=np.float32) < p, dtype=np.float32)
        B.data = rng.choice(values, B.nnz, p=freq / freq.sum()).astype(np.float32)
        blocks.append(B)
    X = sp.vstack(blocks).tocsr()

    chrom, start, end = peak_set(n_peaks, rng)
    var_names = [f"{c}:{s}-{e}" for c, s, e in zip(chrom, start, end)]
    var = pd.DataFrame({"chrom": chrom, "start": start, "end": end}, index=var_names)
    obs = pd.DataFrame({"cell_type": pd.Categorical(names[cell_type])},
                       index=[f"cell{i}" for i in range(n_cells)])
    a = ad.AnnData(X=X, obs=obs, var=var)
    a.uns["source"] = (f"semi-synthetic (experiments.realistic, seed {seed}): types and per-type "
                       f"open rates of {D6T1_10K}, peaks shaped on {BED.name}")
    return a


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cells", type=int)
    ap.add_argument("peaks", type=int)
    ap.add_argument("--nnz", type=float, default=4000.0, help="open peaks a cell, on average")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    ap.add_argument("--peaks-subset", type=int, default=None,
                    help="also write the same cells on this many random peaks (FILE_pSUBSET.h5ad)")
    args = ap.parse_args(argv)
    a = realistic_counts(args.cells, args.peaks, args.nnz, args.seed)
    a.write_h5ad(args.out)
    print(f"{args.out}: {a.n_obs} x {a.n_vars}, {a.X.nnz / a.n_obs:.0f} stored entries a cell")
    if args.peaks_subset:
        rng = np.random.default_rng(args.seed + 1)
        idx = np.sort(rng.choice(a.n_vars, args.peaks_subset, replace=False))
        sub = a[:, idx].copy()
        path = Path(args.out)
        out = path.with_name(f"{path.stem}_p{args.peaks_subset}{path.suffix}")
        sub.write_h5ad(out)
        print(f"{out}: {sub.n_obs} x {sub.n_vars}, {sub.X.nnz / sub.n_obs:.0f} stored entries a cell")


if __name__ == "__main__":
    main()
