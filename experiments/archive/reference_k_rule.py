"""scCASER's default K with a reference: the released rule on the estimate alone vs on
max(estimate, number of reference profiles) (the package's rule), enhancement seeds 0-2.

    python -m experiments.archive.reference_k_rule      # ~5 min on 2 cores

Granja 2019 D6T1 2k (16 types) and bm600 (6 types) with the D5T1 pseudo-bulk reference (16
profiles; it shares cells with bm600, 108 of whose cells are from D5T1, so that row is
optimistic).  Package defaults otherwise (30 iterations); scored like quality.py (Leiden
searched to the number of types, mean of Leiden seeds 0-2).  Output recorded in
docs/results_raw/reference_k_rule.txt; summarised in docs/reference.md.
"""

import numpy as np

from experiments.common import BM600, D5T1_PSEUDOBULK, D6T1_2K, load
from sccase_jax import enhance
from sccase_jax.estimate import estimate_n_components
from sccase_jax.evaluation.clustering import evaluate_clustering
from sccase_jax.preprocessing import preprocess
from sccase_jax.tl import get_counts

pb = load(D5T1_PSEUDOBULK)
for name in (D6T1_2K, BM600):
    t = load(name)
    X, _, _ = preprocess(get_counts(t), min_cells_frac=0.0, tfidf_variant="l2")
    for rule in ("estimate alone (released)", "max(estimate, profiles) (package)"):
        res = []
        for s in (0, 1, 2):
            kw = {}
            if rule.startswith("estimate"):
                c = int(estimate_n_components(X, seed=s))
                kw["n_components"] = max(round(1.3 * c) + c // 2500, 2)
            out = enhance(t, reference=pb, seed=s, **kw)
            r = evaluate_clustering(out.layers["sccase"], np.asarray(out.obs["cell_type"]).astype(str),
                                    transform=None)
            info = out.uns["sccase"]
            print(f"{name} | {rule} | seed {s} | k {info['params']['n_components']} | k_ref "
                  f"{info['reference']['k_ref']} | ARI {r['ari']:.3f} AMI {r['ami']:.3f}", flush=True)
            res.append((r["ari"], r["ami"]))
        print(f"{name} | {rule} | mean | ARI {np.mean(res, 0)[0]:.3f} AMI {np.mean(res, 0)[1]:.3f}",
              flush=True)
