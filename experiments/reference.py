"""scCASER with references on Granja 2019 donor D6T1 (2,055 cells, 16 types).

Compares, by the paper's clustering protocol (PCA(50) -> kNN graph -> Leiden searched to the
number of cell types, seeds 0-2; ARI/AMI/FMI, label silhouette under 1 - Pearson):

- raw counts (Eq. 1 TF-IDF, and L2 TF-IDF as the package's default preprocessing),
- scCASE and scCASER with K from the package's rule (``n_components=None``),
- scCASE (at most 20 iterations for every fit; k = 16 + 1 = 17, the released rule, and k = 21 for a like-for-like k),
- scCASER with the pseudo-bulk reference of donor D5T1 (k = round(1.3 * 16) = 21, the
  released rule; k1 = 16 by default), for alpha in {1, 100},
- scCASER with a self-reference (Leiden clusters of the target, 16 clusters),
- the Corces 2016 bulk signature (only a few dozen peaks overlap): refused with the default
  threshold, then run with ``min_peak_match=0`` to show what a poor reference gives.

Every fit uses the package defaults (L2 TF-IDF, no peak filter, the blended output) except
the iteration cap.  Run from the repository root: ``python -m experiments.reference``.  Writes
``docs/reference_results.json`` and ``docs/reference_results.md``.  Takes ~10 min on 2 cores.
These are Granja et al. 2019 data, not the paper's datasets.
"""

from __future__ import annotations

import json
import os
import time
import warnings

import numpy as np
import scipy.sparse as sp

from experiments.common import CORCES_BULK, D5T1_PSEUDOBULK, D6T1_2K, DOCS, load
from sccase_jax import enhance
from sccase_jax.evaluation.clustering import evaluate_clustering
from sccase_jax.reference import self_reference
from sccase_jax.validate import InputError

N_TYPES = 16
# The same cap for every method keeps the run under 15 min on 2 cores; X Z is scored
# scale-free, and the fits that stop earlier are marked "converged" in the table.
MAX_ITER = 20


def scores(M, labels, transform):
    ev = evaluate_clustering(M, labels, transform=transform)
    return {k: round(float(ev[k]), 4) for k in ("ari", "ami", "fmi", "ari_sd", "silhouette")} | {
        "reached": bool(ev["reached"])}


def run(rows, name, target, **kw):
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # the package defaults (blended output, L2 TF-IDF, no peak filter) but the cap
        out = enhance(target, max_iter=MAX_ITER, **kw)
    info = out.uns["sccase"]
    row = dict(method=name, k=int(info["params"]["n_components"]), n_iter=int(info["n_iter"]),
               status=str(info["status"]), fit_s=round(time.perf_counter() - t0, 1))
    if "reference" in info:
        r = info["reference"]
        row.update(k_ref=int(r["k_ref"]), alpha=float(r["alpha"]), matched=int(r["n_matched"]),
                   target_peaks=int(r["n_target_peaks"]))
        W, P_cols = out.varm["sccase_W"], int(r["k_ref"])
        row["W1_share"] = round(float(np.linalg.norm(W[:, :P_cols]) / np.linalg.norm(W)), 3)
    row["warnings"] = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    row.update(scores(out.layers["sccase"], np.asarray(out.obs["cell_type"]).astype(str), None))
    rows.append(row)
    print(json.dumps({k: v for k, v in row.items() if k != "warnings"}), flush=True)
    return out


def main():
    t_all = time.perf_counter()
    target = load(D6T1_2K)
    pb = load(D5T1_PSEUDOBULK)
    bulk = load(CORCES_BULK)
    labels = np.asarray(target.obs["cell_type"]).astype(str)
    assert len(np.unique(labels)) == N_TYPES
    rows: list[dict] = []

    from sccase_jax.preprocessing import tfidf

    l2 = tfidf(sp.csr_matrix(target.X).T, "l2").T.tocsr()
    for name, M, transform in (("raw TF-IDF (Eq. 1)", target.X, "tfidf"), ("raw L2 TF-IDF", l2, None)):
        raw = dict(method=name, k=None, fit_s=0.0) | scores(M, labels, transform)
        rows.append(raw)
        print(json.dumps(raw), flush=True)

    # K by the package's rule (n_components=None): the estimate + 1 without a reference;
    # with one, the scCASER rule on max(estimate, number of profiles).
    for seed in (0, 1, 2):  # enhancement seeds: these two rows are the package's defaults
        run(rows, f"scCASE, K estimated (seed {seed})", target, seed=seed)
        run(rows, f"scCASER pseudo-bulk D5T1, K by the rule (seed {seed})", target, reference=pb,
            seed=seed)
    run(rows, "scCASE", target, n_components=N_TYPES + 1)
    run(rows, "scCASE", target, n_components=21)
    for alpha in (1.0, 100.0):
        run(rows, "scCASER pseudo-bulk D5T1", target, n_components=21, reference=pb,
            alpha=alpha)

    t0 = time.perf_counter()
    sref = self_reference(target.X, var=target.var, n_clusters=N_TYPES, seed=0)
    self_s = round(time.perf_counter() - t0, 1)
    print(f"self-reference: {sref.n_obs} clusters in {self_s} s", flush=True)
    run(rows, "scCASER self-reference", target, n_components=21, reference=sref)

    # The Corces bulk signature: refused by default, then forced.
    corces = {}
    try:
        enhance(target, n_components=21, reference=bulk, max_iter=1)
        corces["default"] = "accepted"
    except InputError as exc:
        corces["default"] = f"refused: {exc}"
    print("corces default:", corces["default"], flush=True)
    out = run(rows, "scCASER Corces bulk (forced)", target, n_components=21,
              reference=bulk, min_peak_match=0.0)
    corces["forced_warnings"] = rows[-1]["warnings"]
    corces["reference"] = {k: (v.tolist() if hasattr(v, "tolist") else v)
                           for k, v in out.uns["sccase"]["reference"].items() if k != "profiles"}

    result = dict(data="Granja et al. 2019 bone marrow, donor D6T1 (2,055 cells x 8,742 peaks, 16 "
                       "types); reference: pseudo-bulk of donor D5T1; not the paper's datasets",
                  rows=rows, corces=corces, self_reference_s=self_s,
                  total_s=round(time.perf_counter() - t_all, 1))
    os.makedirs(DOCS, exist_ok=True)
    with open(os.path.join(DOCS, "reference_results.json"), "w") as f:
        json.dump(result, f, indent=1)
    lines = ["| method | k | k1 | alpha | iters (status) | ARI | AMI | FMI | silhouette | fit s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r.get('k') or '-'} | {r.get('k_ref', '-')} | {r.get('alpha', '-')} | "
            f"{r.get('n_iter', '-')} ({r.get('status', '-')}) | {r['ari']:.3f} ± {r['ari_sd']:.3f} | {r['ami']:.3f} | "
            f"{r['fmi']:.3f} | {r['silhouette']:.3f} | {r['fit_s']} |")
    lines += ["", f"Corces bulk with the default threshold: {corces['default']}", "",
              f"Forced (min_peak_match=0) warning: {corces['forced_warnings']}",
              "", f"Total time {result['total_s']} s."]
    with open(os.path.join(DOCS, "reference_results.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
