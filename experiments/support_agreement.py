"""The support-restricted fit (``z_support="knn"``) against the dense fit, support swept.

Usage, from the repository root::

    python -m experiments.support_agreement                       # D6T1 2k
    python -m experiments.support_agreement --dataset granja2019_D6T1_10k --supports 30 100
    python -m experiments.support_agreement --report              # the markdown tables

Per run: ``enhance(adata, k, seed=0)`` with the package defaults, dense (``z_support=
"dense"``) or restricted to each cell's ``d`` candidate neighbours (cosine kNN on the NMF
embedding: the largest h_i . h_j, and for some ``d`` the cosine and the Jaccard kNN).  Reported: F at the end (paper Eq. 2; the
restricted fit's F is the same objective with Z zero off the support), iterations, time,
the relative distance of H from the dense fit's H, and the clustering scores (ARI, AMI;
Leiden searched to the number of types, seeds 0-2) of the enhanced layer and of the
embedding H^T.  Results in ``experiments/results/support_agreement_<dataset>.json``.
Data: Granja et al. 2019 bone marrow, donor D6T1 (not the paper's data).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from experiments.common import D6T1_2K, RESULTS, load

SUPPORTS = (10, 30, 100, 300)


def _scores(M, labels, transform, n_pcs):
    from sccase_jax.evaluation.clustering import evaluate_clustering

    r = evaluate_clustering(M, labels, transform=transform, n_pcs=n_pcs, seeds=(0, 1, 2))
    return {m: round(r[m], 4) for m in ("ari", "ami")}


def one_run(adata, k, labels, z_support, d=None, knn_from="embedding", H_ref=None,
            off="drop"):
    import sccase_jax

    kw = dict(z_support=z_support) if d is None else dict(
        z_support=z_support, n_neighbors=d, knn_from=knn_from, off_support=off)
    t0 = time.perf_counter()
    out = sccase_jax.enhance(adata, k, seed=0, **kw)
    wall = time.perf_counter() - t0
    rec = out.uns["sccase"]
    H = np.asarray(out.obsm["X_sccase"]).T
    row = dict(support="dense" if d is None else f"{knn_from} {d}, {off}", d=d,
               knn_from=knn_from, off_support=off,
               F=float(rec["loss"][-1]), F0=float(rec["initial_loss"]), n_iter=int(rec["n_iter"]),
               F_eq2=float(rec["params"].get("eq2_loss", rec["loss"][-1])),
               status=str(rec["status"]), time_s=round(wall, 1),
               layer=_scores(out.layers["sccase"], labels, "tfidf", 50),
               embedding=_scores(H.T, labels, None, min(k - 1, 50)))
    if H_ref is not None:
        row["H_rel_diff"] = float(np.linalg.norm(H - H_ref) / np.linalg.norm(H_ref))
    return row, H


def run(dataset: str, k: int, supports, jaccard, exact) -> dict:
    adata = load(dataset)
    labels = adata.obs["cell_type"].astype(str).to_numpy()
    rows = []
    dense, H_dense = one_run(adata, k, labels, "dense")
    rows.append(dense)
    print(json.dumps(dense), flush=True)
    runs = [(d, "embedding", "drop") for d in supports]
    runs += [(d, src, "drop") for d in supports if d in jaccard for src in ("cosine", "jaccard")]
    runs += [(d, "embedding", "exact") for d in supports if d in exact]
    for d, src, off in runs:
        row, _ = one_run(adata, k, labels, "knn", d, src, H_dense, off)
        rows.append(row)
        print(json.dumps(row), flush=True)
    return dict(dataset=dataset, n_cells=adata.n_obs, n_peaks=adata.n_vars, k=k, rows=rows)


def report(path) -> str:
    r = json.loads(path.read_text())
    lines = [f"{r['dataset']}: {r['n_cells']} cells x {r['n_peaks']} peaks, k = {r['k']}", "",
             "| support | F fitted | F (Eq. 2) | iterations | time (s) | ||H - H_dense|| / "
             "||H_dense|| | layer ARI | layer AMI | H ARI | H AMI |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for row in r["rows"]:
        diff = f"{row['H_rel_diff']:.1e}" if "H_rel_diff" in row else "-"
        lines.append(f"| {row['support']} | {row['F']:.5g} | {row['F_eq2']:.5g} | "
                     f"{row['n_iter']} | {row['time_s']} | "
                     f"{diff} | {row['layer']['ari']:.3f} | {row['layer']['ami']:.3f} | "
                     f"{row['embedding']['ari']:.3f} | {row['embedding']['ami']:.3f} |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default=D6T1_2K)
    ap.add_argument("--k", type=int, default=6, help="components (6: the K estimate + 1 at 2k)")
    ap.add_argument("--supports", type=int, nargs="+", default=list(SUPPORTS))
    ap.add_argument("--jaccard", type=int, nargs="*", default=[30],
                    help="support sizes also run with the Jaccard kNN support")
    ap.add_argument("--exact", type=int, nargs="*", default=[30, 300],
                    help="support sizes also run with off_support='exact'")
    ap.add_argument("--report", action="store_true")
    args = ap.parse_args()
    path = RESULTS / f"support_agreement_{args.dataset}.json"
    if args.report:
        for p in sorted(RESULTS.glob("support_agreement_*.json")):
            print(report(p), "\n")
        return
    res = run(args.dataset, args.k, args.supports, set(args.jaccard), set(args.exact))
    path.write_text(json.dumps(res, indent=1))
    print(report(path))


if __name__ == "__main__":
    main()
