"""Clustering quality of ``enhance`` against ``max_iter`` (10, 30, 100), seeds 0-2.

    python -m experiments.archive.max_iter_sweep granja2019_bm600 cell_type

Every other setting is the package default; scored like experiments/quality.py (Leiden
searched to the number of types, mean of Leiden seeds 0-2).  Output recorded in
docs/results_raw/max_iter_sweep.txt; the evidence for the max_iter default (docs/results.md).
"""
import sys
import time

import numpy as np

import sccase_jax
from experiments.common import load
from sccase_jax.evaluation.clustering import evaluate_clustering

if len(sys.argv) != 3:
    raise SystemExit(__doc__)
ds, label = sys.argv[1], sys.argv[2]
a = load(ds)
for m in (10, 30, 100):
    res = []
    for s in (0, 1, 2):
        t0 = time.perf_counter()
        e = sccase_jax.enhance(a, seed=s, max_iter=m, progress=False)
        t = time.perf_counter() - t0
        r = evaluate_clustering(e.layers["sccase"], e.obs[label].astype(str).to_numpy(), transform=None)
        res.append((r["ari"], r["ami"], t, e.uns["sccase"]["n_iter"]))
        print(ds, m, s, res[-1], flush=True)
    arr = np.array([x[:3] for x in res])
    print(ds, "max_iter", m, "mean ARI {:.3f} AMI {:.3f} time {:.1f}".format(*arr.mean(0)), flush=True)
