"""Imbalanced simulated sorted populations: the default output vs ``neighbors=300`` and ``cen``, and raw.

Cells simulated from the Corces 2016 bulk profiles as ``sim_corces2016`` (``experiments.common``)
(70 % of the reads on random peaks, about 100 reads a cell; 200 cells a type, simulation
seed 1), then subsampled to D6T1-like type sizes (200, 200, 150, 150, 100, 100, 60, 60, 40,
30, 30, 30, 30: 1,180 cells, 13 types).  Scored like ``quality.py`` (PCA(50) -> UMAP graph
-> Leiden searched to 13 clusters, Leiden seeds 0-2); enhancement seeds 0-2, K estimated.

    python -m experiments.archive.imbalanced_sim      # output: docs/results_raw/imbalanced_sim.txt
"""
import warnings

import numpy as np
import scipy.sparse as sp

from experiments.archive.output_screen import weights
from experiments.common import simulate_sorted
from experiments.quality import fit_for_outputs, score
from sccase_jax.evaluation.clustering import evaluate_clustering
from sccase_jax.output import enhanced_matrix

SIZES = [200, 200, 150, 150, 100, 100, 60, 60, 40, 30, 30, 30, 30]


def main():
    warnings.simplefilter("ignore")
    full = simulate_sorted(n_cells=200, depth=100.0, depth_sd=0.5, noise=0.7, seed=1)
    types = full.obs["cell_type"].astype(str).unique()
    rng = np.random.default_rng(0)
    keep = np.concatenate([rng.choice(np.where(full.obs["cell_type"].astype(str) == t)[0], n, replace=False)
                           for t, n in zip(types, SIZES)])
    a = full[np.sort(keep)].copy()
    a.X = sp.csr_matrix(a.X)
    lab = a.obs["cell_type"].astype(str).to_numpy()
    print("cells", a.n_obs, "types", len(types), flush=True)
    for v in ("paper", "l2"):
        r = evaluate_clustering(a.X, lab, transform="tfidf", tfidf_variant=v)
        print(f"raw {v}: ARI {r['ari']:.3f} AMI {r['ami']:.3f}", flush=True)
    res = {}
    for s in (0, 1, 2):
        out, X, Z, labs = fit_for_outputs(a, s)
        for nm in ("blend", "top300", "cen"):
            E = enhanced_matrix(X, np.asarray(weights(nm, Z, out.obsm["X_sccase"]), np.float32))
            r, _ = score(E, labs, None)
            res.setdefault(nm, []).append((r["ari"], r["ami"]))
            print(f"seed {s} k={out.obsm['X_sccase'].shape[1]} {nm}: ARI {r['ari']:.3f} AMI {r['ami']:.3f}", flush=True)
    for nm, v in res.items():
        v = np.array(v)
        print(f"MEAN {nm}: ARI {v[:,0].mean():.3f} AMI {v[:,1].mean():.3f}")


if __name__ == "__main__":
    main()
