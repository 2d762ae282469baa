"""How many HALS sweeps the NMF start needs: the enhanced layer's clustering after n sweeps.

The start's NMF decides most of the result (MODEL.md: the fit settles in its first
iteration, around the NMF embedding).  For each dataset and enhancement seed:
``enhance(adata, seed=s, nmf_iter=n, nmf_tol=0)`` for every n in ``--sweeps`` (the rest
default), the clustering of its enhanced layer (Leiden searched to the number of types on
PCA 50, Leiden seeds 0, 1, 2) and the NMF objective's relative decrease per sweep
(``sccase_jax.start.nmf(..., trace=True)``), from which a tolerance on that decrease
(``nmf_tol``) says where the sweeps would have stopped.

    python -m experiments.nmf_start --dataset granja2019_D6T1_2k --seeds 0 1 2
    python -m experiments.nmf_start --report

Results: ``experiments/results/nmf_start_<dataset>.json``.  Data: Granja 2019 bone
marrow, chromVAR's example and cells simulated from Corces 2016 sorted bulk profiles; not
the paper's datasets.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import scipy.sparse as sp

from experiments.common import RESULTS, load

SWEEPS = (10, 20, 50, 100, 200)
TOLS = (1e-4, 3e-5, 1e-5, 3e-6, 1e-6)


def run(name, seeds, sweeps):
    import jax

    from experiments.quality import score
    from sccase_jax.estimate import estimate_n_components
    from sccase_jax.preprocessing import preprocess
    from sccase_jax.problem import device_matrix
    from sccase_jax.start import nmf
    from sccase_jax.tl import enhance

    a = load(name)
    a.X = sp.csr_matrix(a.X)
    X, _, cells = preprocess(sp.csr_matrix(a.X, dtype=np.float64).T.tocsr())
    labels = a.obs["cell_type"].astype(str).to_numpy()[cells]
    res = {"dataset": name, "cells": int(X.shape[1]), "peaks": int(X.shape[0]), "seeds": {}}
    for seed in seeds:
        k = int(estimate_n_components(X, seed=seed)) + 1
        key_nmf = jax.random.split(jax.random.PRNGKey(seed))[1]  # the fit's NMF key
        _, _, _, hist = nmf(device_matrix(X, np.float32), k, key_nmf, max(sweeps), trace=True)
        hist = np.asarray(hist, np.float64)
        stops = {str(t): int(np.argmax(hist[1:, 1] < t) + 2) if np.any(hist[1:, 1] < t) else None
                 for t in TOLS}
        rows = {}
        for n_sweeps in sweeps:
            t0 = time.perf_counter()
            out = enhance(a, k, seed=seed, nmf_iter=n_sweeps, nmf_tol=0.0)
            secs = time.perf_counter() - t0
            sc, _ = score(np.asarray(out.layers["sccase"]), labels, None)
            rows[str(n_sweeps)] = {m: sc[m] for m in ("ari", "ami", "ari_sd", "ami_sd")}
            rows[str(n_sweeps)]["enhance_s"] = secs
            print(f"{name} seed {seed} k {k} sweeps {n_sweeps}: ARI {sc['ari']:.3f} "
                  f"AMI {sc['ami']:.3f}", flush=True)
        res["seeds"][str(seed)] = {"k": k, "scores": rows, "stop_at": stops,
                                   "objective": hist[:, 0].tolist(), "rel_decrease": hist[:, 1].tolist(),
                                   "dH": hist[:, 2].tolist()}
    path = RESULTS / f"nmf_start_{name}.json"
    path.write_text(json.dumps(res, indent=1) + "\n")
    print(f"wrote {path}")


def report():
    for path in sorted(RESULTS.glob("nmf_start_*.json")):
        r = json.loads(path.read_text())
        sweeps = sorted({int(n) for s in r["seeds"].values() for n in s["scores"]})
        print(f"\n{r['dataset']} ({r['cells']} cells x {r['peaks']} peaks)\n")
        print("| seed | k | " + " | ".join(f"{n} sweeps ARI / AMI" for n in sweeps)
              + " | sweeps to a decrease below " + ", ".join(f"{t:g}" for t in TOLS) + " |")
        print("|---|---|" + "---|" * len(sweeps) + "---|")
        for seed, s in r["seeds"].items():
            cells = [f"{s['scores'][str(n)]['ari']:.3f} / {s['scores'][str(n)]['ami']:.3f}"
                     for n in sweeps]
            stops = ", ".join(str(s["stop_at"][str(t)]) for t in TOLS)
            print(f"| {seed} | {s['k']} | " + " | ".join(cells) + f" | {stops} |")
        means = [np.mean([s["scores"][str(n)]["ari"] for s in r["seeds"].values()]) for n in sweeps]
        amis = [np.mean([s["scores"][str(n)]["ami"] for s in r["seeds"].values()]) for n in sweeps]
        print("| mean | | " + " | ".join(f"{a:.3f} / {b:.3f}" for a, b in zip(means, amis)) + " | |")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--sweeps", type=int, nargs="+", default=list(SWEEPS))
    ap.add_argument("--report", action="store_true")
    args = ap.parse_args(argv)
    if args.report:
        return report()
    run(args.dataset, args.seeds, sorted(args.sweeps))


if __name__ == "__main__":
    main()
