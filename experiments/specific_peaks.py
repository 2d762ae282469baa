"""Precision of cell-type-specific peak rankings against a pseudo-bulk marker reference.

Target: Granja 2019 donor D6T1 (2,055 cells, 16 types), enhanced with the defaults and
k = 17.  Reference markers: for each type, the 500 peaks of the other donor's (D5T1)
pseudo-bulk with the largest log2 fold change of that type's CPM over the mean CPM of the
other types (+1 pseudo-count), over the peaks kept in the target.  Rankings, each type's
top 100 / 500 peaks:

* ``factor-share`` / ``factor-loading``: :func:`sccase_jax.tl.specific_peaks` (the group's
  most specific factor, its peaks by share of loadings / by loading, the release's);
* ``enhanced-wilcoxon``, ``enhanced-t-test``: scanpy's test on the enhanced layer;
* ``raw-wilcoxon``, ``raw-t-test``: the same on the L2 TF-IDF of the counts.

precision@N = |top N of the type ∩ its 500 reference markers| / N, averaged over the types;
chance = 500 / peaks.  Run ``python -m experiments.specific_peaks [--seed 0]``; writes
``experiments/results/specific_peaks.json``.  These are Granja 2019 data, not the paper's.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from experiments.common import D5T1_PSEUDOBULK, D6T1_2K, RESULTS, load

N_MARKERS = 500
TOPS = (100, 500)


def reference_markers(ref, peaks, n=N_MARKERS) -> dict:
    """Each reference type's ``n`` peaks (of ``peaks``) with the largest log2 fold change."""
    have = set(ref.var_names)
    sub = ref[:, [p for p in peaks if p in have]]
    C = np.asarray(sub.X.todense() if hasattr(sub.X, "todense") else sub.X, float)
    cpm = C / C.sum(axis=1, keepdims=True) * 1e6
    out = {}
    for i, t in enumerate(sub.obs["cell_type"].astype(str)):
        others = np.delete(cpm, i, axis=0).mean(axis=0)
        lfc = np.log2((cpm[i] + 1) / (others + 1))
        out[t] = set(sub.var_names[np.argsort(-lfc, kind="stable")[:n]])
    return out


def precision(table, markers) -> dict:
    res = {}
    for top in TOPS:
        per = {}
        for g, sub in table.groupby("group"):
            if g in markers:
                per[g] = len(set(sub.loc[sub["rank"] <= top, "peak"]) & markers[g]) / top
        res[f"p@{top}"] = float(np.mean(list(per.values())))
        res[f"p@{top}_per_type"] = per
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(RESULTS / "specific_peaks.json"))
    ap.add_argument("--cache", default=None, help="reuse (or write) the enhanced .h5ad here")
    args = ap.parse_args()
    import os

    import anndata as ad

    import sccase_jax
    from sccase_jax.tl import specific_peaks

    t0 = time.perf_counter()
    if args.cache and os.path.exists(args.cache):
        out = ad.read_h5ad(args.cache)
    else:
        out = sccase_jax.enhance(load(D6T1_2K), 17, seed=args.seed)
        if args.cache:
            out.write_h5ad(args.cache)
    t_fit = time.perf_counter() - t0
    markers = reference_markers(load(D5T1_PSEUDOBULK), list(out.var_names))
    n_peaks = out.n_vars
    rankings = {
        "factor-share": dict(method="factor", rank_by="share"),
        "factor-loading": dict(method="factor", rank_by="loading"),
        "enhanced-wilcoxon": dict(method="wilcoxon"),
        "enhanced-t-test": dict(method="t-test"),
        "raw-wilcoxon": dict(method="wilcoxon", layer="X"),
        "raw-t-test": dict(method="t-test", layer="X"),
    }
    results = {}
    for name, kw in rankings.items():
        t1 = time.perf_counter()
        table = specific_peaks(out, "cell_type", max(TOPS), inplace=False, **kw)
        results[name] = precision(table, markers)
        results[name]["time_s"] = time.perf_counter() - t1
        if kw["method"] == "factor":
            first = table.drop_duplicates("group")
            results[name]["factors"] = dict(zip(first.group, first.factor.astype(int).tolist()))
            results[name]["n_distinct_factors"] = int(first.factor.nunique())
            results[name]["n_groups_p_adj_below_0.05"] = int((first.p_adj < 0.05).sum())
        print(f"{name:20s} p@100 {results[name]['p@100']:.3f}  p@500 {results[name]['p@500']:.3f}")
    record = dict(dataset=D6T1_2K, reference=D5T1_PSEUDOBULK, k=17, seed=args.seed,
                  n_peaks=n_peaks, n_markers=N_MARKERS, chance=N_MARKERS / n_peaks,
                  fit_s=t_fit, results=results)
    print(f"chance {N_MARKERS / n_peaks:.3f}; fit {t_fit:.0f} s")
    with open(args.out, "w") as fh:
        json.dump(record, fh, indent=1)


if __name__ == "__main__":
    main()
