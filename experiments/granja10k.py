"""The whole Granja D6T1 data (10,335 cells x 10,000 peaks, 16 types): raw vs enhanced.

Scored like ``quality.py`` (PCA(50) -> UMAP 15-NN graph -> Leiden searched to 16 clusters,
Leiden seeds 0-2): raw TF-IDF (Eq. 1 and L2), then per enhancement seed one fit of
``enhance`` with the package defaults and ``max_iter`` iterations (10 by default: a
30-iteration fit takes 10-14 minutes on the 2-core CPU; quality did not depend on the cap
at 2k, docs/results.md), and from that fit the default output (each cell's 300 largest
weights in Z), the blend over all cells (``neighbors=None``) and, with ``--top1500``, the
blend over 1,500 cells (300 / 2,055 of the cells, the share that 300 is at 2k).

    python -m experiments.granja10k --seeds 0 --top1500      # with the raw baselines
    python -m experiments.granja10k --seeds 1 --no-raw
    # output: docs/results_raw/granja10k.txt (the two calls above)
"""
import argparse
import time
import warnings

import numpy as np
import scipy.sparse as sp

from experiments.common import D6T1_10K, load
from experiments.quality import fit_for_outputs, score
from sccase_jax.evaluation.clustering import evaluate_clustering
from sccase_jax.output import enhanced_matrix, output_weights


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--max-iter", type=int, default=10)
    ap.add_argument("--no-raw", action="store_true")
    ap.add_argument("--top1500", action="store_true")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    a = load(D6T1_10K)
    a.X = sp.csr_matrix(a.X)
    lab = a.obs["cell_type"].astype(str).to_numpy()
    print(f"{a.n_obs} cells x {a.n_vars} peaks, {len(set(lab))} types", flush=True)
    if not args.no_raw:
        for v in ("paper", "l2"):
            r = evaluate_clustering(a.X, lab, transform="tfidf", tfidf_variant=v)
            print(f"raw {v} TF-IDF: ARI {r['ari']:.3f} AMI {r['ami']:.3f} reached={r['reached']}",
                  flush=True)
    outputs = [("default (300 cells)", 300), ("blend, all cells", None)]
    if args.top1500:
        outputs.append(("blend, 1500 cells", 1500))
    for s in args.seeds:
        t = time.perf_counter()
        out, X, Z, labs = fit_for_outputs(a, s, max_iter=args.max_iter)
        k = out.obsm["X_sccase"].shape[1]
        print(f"seed {s}: fit {time.perf_counter() - t:.0f} s, k = {k}, "
              f"{out.uns['sccase']['n_iter']} iterations", flush=True)
        for nm, N in outputs:
            E = enhanced_matrix(X, np.asarray(output_weights(Z, "blend", 0.8, neighbors=N), np.float32))
            r, _ = score(E, labs, None)
            print(f"seed {s} {nm}: ARI {r['ari']:.3f} AMI {r['ami']:.3f} reached={r['reached']}",
                  flush=True)


if __name__ == "__main__":
    main()
