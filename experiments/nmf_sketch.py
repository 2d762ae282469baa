"""The NMF start's leading sweeps on a sketch of X: time and clustering against exact sweeps.

Each HALS sweep of the start multiplies X twice by a k-column matrix; above a few million
stored entries these products are most of a run's time (2,000 x 120,000: 200 sweeps,
15-20 s).  ``nmf(..., sketch=s)`` runs the first ``s`` of the sweeps on X's rank-(k + 10)
sketch ``Q (Q^T X)`` from the start's randomized SVD (products with the m x (k + 10) Q and
the (k + 10) x n ``Q^T X`` only), the rest on X itself.  For each dataset, enhancement seed
and ``s`` in ``--sketch``: the default ``enhance`` with ``nmf_sketch=s`` (everything else
default), its time and the clustering of its enhanced layer (Leiden
searched to the number of types on PCA 50, Leiden seeds 0, 1, 2).

    python -m experiments.nmf_sketch --dataset granja2019_bm600 --sketch 0 150 180
    python -m experiments.nmf_sketch --file /tmp/r2k_120k.h5ad --sketch 0 150 180
    python -m experiments.nmf_sketch --report

``--file``: an ``.h5ad`` with ``obs["cell_type"]``, e.g. the semi-synthetic counts of
realistic shape that ``python -m experiments.realistic 2000 120000 --out FILE`` writes
(seed 0).  A run adds its seeds and sketches to the dataset's earlier results in
``experiments/results/nmf_sketch_<name>.json``.  Data: Granja 2019 bone
marrow and semi-synthetic counts built from it; not the paper's datasets.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from experiments.common import RESULTS, load


def run(name, adata, seeds, sketches):
    import anndata as ad

    from experiments.quality import score
    from sccase_jax.tl import enhance, enhanced_layer

    path = RESULTS / f"nmf_sketch_{name}.json"
    res = {"dataset": name, "cells": int(adata.n_obs), "peaks": int(adata.n_vars), "seeds": {}}
    if path.exists():  # runs with other seeds or sketches are kept
        res["seeds"] = json.loads(path.read_text())["seeds"]
    for seed in seeds:
        rows = {}
        for s in sketches:
            a = ad.AnnData(adata.X.copy(), obs=adata.obs.copy(), var=adata.var.copy())
            t0 = time.perf_counter()
            out = enhance(a, seed=seed, layer_budget=None, progress=False, nmf_sketch=s)
            secs = time.perf_counter() - t0
            E = np.asarray(out.layers["sccase"]) if "sccase" in out.layers else enhanced_layer(out)
            labels = out.obs["cell_type"].astype(str).to_numpy()
            sc, _ = score(E, labels, None)
            rows[str(s)] = {m: sc[m] for m in ("ari", "ami", "ari_sd", "ami_sd")}
            rows[str(s)].update(enhance_s=secs, k=int(out.uns["sccase"]["params"]["n_components"]),
                                iterations=int(out.uns["sccase"].get("iterations", -1)))
            print(f"{name} seed {seed} sketch {s}: ARI {sc['ari']:.3f} AMI {sc['ami']:.3f} "
                  f"{secs:.1f} s", flush=True)
            del E, out
        res["seeds"].setdefault(str(seed), {}).update(rows)
    path.write_text(json.dumps(res, indent=1) + "\n")
    print(f"wrote {path}")


def report():
    for path in sorted(RESULTS.glob("nmf_sketch_*.json")):
        r = json.loads(path.read_text())
        sk = sorted(set.intersection(*(set(v) for v in r["seeds"].values())), key=int)
        print(f"\n{r['dataset']} ({r['cells']} cells x {r['peaks']} peaks)\n")
        print("| seed | " + " | ".join(f"sketch {s}: ARI / AMI, s" for s in sk) + " |")
        print("|---|" + "---|" * len(sk))
        for seed, v in r["seeds"].items():
            print(f"| {seed} | " + " | ".join(
                f"{v[s]['ari']:.3f} / {v[s]['ami']:.3f}, {v[s]['enhance_s']:.1f}" for s in sk) + " |")
        m = [(np.mean([v[s]["ari"] for v in r["seeds"].values()]),
              np.mean([v[s]["ami"] for v in r["seeds"].values()]),
              np.mean([v[s]["enhance_s"] for v in r["seeds"].values()])) for s in sk]
        print("| mean | " + " | ".join(f"{a:.3f} / {b:.3f}, {c:.1f}" for a, b, c in m) + " |")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset")
    ap.add_argument("--file")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--sketch", type=int, nargs="+", default=[0, 150, 180])
    ap.add_argument("--report", action="store_true")
    args = ap.parse_args(argv)
    if args.report:
        return report()
    if args.file:
        import anndata as ad

        name, adata = Path(args.file).stem, ad.read_h5ad(args.file)
    else:
        name, adata = args.dataset, load(args.dataset)
    run(name, adata, args.seeds, args.sketch)


if __name__ == "__main__":
    main()
