"""Sequencing-depth correction: how much of each cell's depth the enhanced matrix still
carries, and what it costs in cell-type scores.

Granja 2019 D6T1 (2,055 cells, 16 types; not the paper's data), k = 17, seed 0: raw L2
TF-IDF, scCASE, and scCASE with the depth term (``correct_depth=True``: the release's
``lam ||Z - P H^T H||^2`` solved exactly).  Depth of a cell = its reads in the kept peaks.
Scores of each matrix (cells x peaks):

* ``depth_r2``: R^2 of the linear regression of log10(depth) on the top 10 principal
  components (how much of the depth the main axes carry);
* ``pc1_depth_spearman``: |Spearman| of PC1 and depth; ``max_pc_depth_spearman`` the largest
  over the top 10 PCs;
* ``total_depth_spearman``: Spearman of each cell's total (sum over peaks) and its depth;
* ARI / AMI / silhouette against the cell types (Leiden seeds 0-2, searched to 16 clusters).

``python -m experiments.depth [--dataset granja2019_D6T1_2k]``; writes
``experiments/results/depth_<dataset>.json``.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from experiments.common import D6T1_2K, RESULTS, load


def depth_scores(emb, E, depth) -> dict:
    from scipy.stats import spearmanr
    from sklearn.linear_model import LinearRegression

    y = np.log10(depth)
    pcs = emb[:, :10]
    r2 = LinearRegression().fit(pcs, y).score(pcs, y)
    rho = [abs(spearmanr(pcs[:, i], depth)[0]) for i in range(pcs.shape[1])]
    total = np.asarray(E.sum(axis=1)).ravel()
    return {"depth_r2": float(r2), "pc1_depth_spearman": float(rho[0]),
            "max_pc_depth_spearman": float(max(rho)),
            "total_depth_spearman": float(spearmanr(total, depth)[0])}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", default=D6T1_2K)
    ap.add_argument("--k", type=int, default=17)
    args = ap.parse_args()
    import sccase_jax
    from sccase_jax.evaluation.clustering import evaluate_clustering

    a = load(args.dataset)
    labels = a.obs["cell_type"].astype(str).to_numpy()
    rows = {}
    runs = {"raw (L2 TF-IDF)": None, "scCASE": {}, "scCASE, correct_depth": {"correct_depth": True}}
    for name, kw in runs.items():
        t0 = time.perf_counter()
        if kw is None:
            import scipy.sparse as sp

            from sccase_jax.preprocessing import tfidf

            out, transform = a, None
            E = tfidf(sp.csr_matrix(a.X, dtype=np.float64).T, "l2").T.tocsr()
        else:
            out = sccase_jax.enhance(a, args.k, seed=0, **kw)
            E, transform = out.layers["sccase"], None
        depth = np.asarray(out.X.sum(axis=1)).ravel()
        ev = evaluate_clustering(E, labels, transform=transform)
        row = {m: ev[m] for m in ("ari", "ami", "silhouette")}
        row.update(depth_scores(ev["embedding"], E, depth))
        row["time_s"] = time.perf_counter() - t0
        rows[name] = row
        print(f"{name:24s} " + " ".join(f"{m} {v:.3f}" for m, v in row.items()))
    with open(RESULTS / f"depth_{args.dataset}.json", "w") as fh:
        json.dump({"dataset": args.dataset, "k": args.k, "seed": 0, "results": rows}, fh, indent=1)


if __name__ == "__main__":
    main()
