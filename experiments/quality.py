"""Quality of scCASE on the shared real data: raw vs enhanced vs baselines.

Usage, from the repository root (one dataset per call keeps each run under ~15 minutes on
2 cores)::

    python -m experiments.quality --dataset granja2019_D6T1_2k --seeds 0 1 2
    python -m experiments.quality --dataset granja2019_bm600 --seeds 0 1 2
    python -m experiments.quality --dataset chromvar_example_counts --seeds 0 1 2
    python -m experiments.quality --dataset sim_corces2016 --seeds 0 1 2   # simulated
    python -m experiments.quality --dataset granja2019_D6T1_2k_types3pct   # paper: types >= 3 %
    python -m experiments.quality --report          # docs/results_tables.md from the saved JSONs

Per dataset and enhancement seed it fits scCASE with the package defaults
(``enhance(adata, seed=s)``: L2 TF-IDF, no peak filter, K estimated + 1, blended output
``0.2 X + 0.8 X Zc`` over each cell's 300 largest weights in Z), with the sccase-0.2.5 preset (``preset="release"``, same K), with the
paper's formulas (``PAPER_FORMULAS``: Eq. 1 TF-IDF, 1 % filter, X Z unscaled; same K) and
with the defaults at K = number of types + 1, and scores, by clustering (TF-IDF -> PCA(50)
-> UMAP kNN graph -> Leiden searched to the number of types, mean of Leiden seeds 0, 1, 2):
raw TF-IDF (all peaks, and the kept peaks), the enhanced matrices, output variants built
from the same fit (``variant_*``; by default ``X Z`` min-max scaled and the blend over all
cells), the NMF reconstruction W H, and a kNN average of the TF-IDF profiles.  Every seed
given is run and reported; nothing is dropped.  The recovery benchmark (10 % of nonzero
counts hidden) runs for the first seed; on simulated data every enhanced matrix is also
scored against the simulation's truth.

Data: Granja et al. 2019 bone marrow (donor D6T1), chromVAR's Buenrostro 2015 example and
cells simulated from Corces et al. 2016 sorted bulk profiles; not the paper's datasets.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np
import scipy.sparse as sp

from experiments.common import DOCS, load

FIG = os.path.join(DOCS, "figures")
RAW_JSON = os.path.join(DOCS, "results_raw")


# The paper's formulas throughout: Eq. 1 TF-IDF, its 1 % peak filter, X Z returned as is.
PAPER_FORMULAS = {"tfidf": "paper", "min_cells_frac": 0.01, "output": "xz", "scale_output": False}


def output_variant(X, Z, kind: str, beta: float = 0.5):
    """Enhanced matrices built from the fitted Z (cells x peaks; X is peaks x cells).

    ``xz_minmax``: ``X Z`` min-max scaled per peak then per cell (``output="xz"``).
    ``mix``: ``(1 - beta) X + beta X Zc``, Zc = Z with columns scaled to sum 1 over all
    cells.  ``blend_all``: ``mix`` with beta = 0.8, the default blend over all cells
    (``neighbors=None``; the default output averages each cell's 300 largest weights
    only).  ``colnorm``: ``X Zc``.
    """
    from sccase_jax.output import enhanced_matrix, minmax_scale, output_weights

    if kind == "xz_minmax":
        return minmax_scale(enhanced_matrix(X, Z))
    weights = {"colnorm": 1.0, "mix": beta, "blend_all": 0.8}
    if kind not in weights:
        raise ValueError(kind)
    return enhanced_matrix(X, output_weights(Z, "blend", weights[kind]))


def fit_for_outputs(a, seed: int, **kw):
    """``enhance(a, seed=seed, **kw)`` and what an output built from its Z needs.

    Returns ``(out, X, Z, labels)``: the enhanced AnnData, the L2 TF-IDF (peaks x cells)
    of its kept cells and peaks, Z as float32 and their ``cell_type`` labels as strings.
    """
    from sccase_jax.preprocessing import tfidf
    from sccase_jax.tl import enhance

    out = enhance(a, seed=seed, store_z="full", **kw)  # the whole Z: outputs are built from it
    b = a[out.obs_names, out.var_names]
    X = tfidf(sp.csr_matrix(b.X).T, "l2")
    Z = np.asarray(out.obsp["sccase_Z"], np.float32)
    return out, X, Z, b.obs["cell_type"].astype(str).to_numpy()


def score(M, labels, transform, seeds=(0, 1, 2)):
    from sccase_jax.evaluation.clustering import evaluate_clustering

    t = time.perf_counter()
    r = evaluate_clustering(M, labels, transform=transform, seeds=seeds)
    r.pop("per_seed")
    emb = r.pop("embedding")
    r["eval_s"] = time.perf_counter() - t
    return r, emb


def truth_scores(E, truth):
    """auROC / auPRC of an enhanced matrix against the simulation's open peaks."""
    from sccase_jax.evaluation.metrics import signal_scores

    return signal_scores(np.asarray(E.toarray() if sp.issparse(E) else E, np.float32), truth)


def run_dataset(name: str, seeds, variants, recovery: bool, figures: bool) -> dict:
    from sccase_jax.evaluation.metrics import imbalance_index
    from sccase_jax.evaluation.plotting import plot_embeddings, plot_loss
    from sccase_jax.evaluation.recovery import knn_average, run_recovery
    from sccase_jax.output import enhanced_matrix, minmax_scale
    from sccase_jax.preprocessing import tfidf
    from sccase_jax.tl import enhance

    a = load(name)
    a.X = sp.csr_matrix(a.X)
    labels = a.obs["cell_type"].astype(str).to_numpy()
    res = {"dataset": name, "cells": a.n_obs, "peaks": a.n_vars, "n_types": len(set(labels)),
           "imbalance": imbalance_index(labels), "rows": [], "seeds": list(seeds)}

    has_truth = "open" in a.layers
    if has_truth:
        res["truth"] = []

    def add_truth(method, seed, E, obs_names, var_names):
        if not has_truth:
            return
        v = truth_scores(E, a[obs_names, var_names].layers["open"])
        res["truth"].append({"method": method, "seed": seed, **v})
        print(f"{name} truth {method:34s} seed={seed} auROC cell {v['auroc_cell']:.3f} peak "
              f"{v['auroc_peak']:.3f} auPRC cell {v['auprc_cell']:.3f} peak {v['auprc_peak']:.3f}",
              flush=True)

    def add(method, seed, r, **extra):
        row = {"method": method, "seed": seed, **{k: v for k, v in r.items()}, **extra}
        res["rows"].append(row)
        print(f"{name} {method:34s} seed={seed} ARI {r['ari']:.3f} AMI {r['ami']:.3f} "
              f"FMI {r['fmi']:.3f} sil {r['silhouette']:.3f} reached={r['reached']} "
              + " ".join(f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}" for k, v in extra.items()),
              flush=True)

    for variant in ("paper", "l2"):
        r, emb_raw = score(a.X, labels, "tfidf")  if variant == "paper" else score(
            tfidf(a.X.T, "l2").T.tocsr(), labels, None)
        add(f"raw TF-IDF ({variant}), all peaks", None, r)
        if variant == "paper":
            emb_raw_paper = emb_raw
    for s in seeds:
        t0 = time.perf_counter()
        out = enhance(a, seed=s, store_z="full")  # output variants are built from the whole Z
        t_fit = time.perf_counter() - t0
        k = int(out.obsm["X_sccase"].shape[1])
        info = out.uns["sccase"]
        lab = out.obs["cell_type"].astype(str).to_numpy()
        X = tfidf(sp.csr_matrix(out.X).T, "l2")
        r, emb_def = score(out.X, lab, "tfidf")
        add("raw TF-IDF (paper), kept peaks", s, r, peaks=int(out.n_vars))
        r, emb_enh = score(out.layers["sccase"], lab, None)
        add("scCASE default", s, r, k=k, n_iter=int(info["n_iter"]), time_s=t_fit)
        if has_truth:
            if s == seeds[0]:
                add_truth("observed counts", None, out.X, out.obs_names, out.var_names)
                add_truth("raw TF-IDF (l2)", None, X.T, out.obs_names, out.var_names)
            add_truth("scCASE default", s, out.layers["sccase"], out.obs_names, out.var_names)
            XZ = enhanced_matrix(X, out.obsp["sccase_Z"])
            add_truth("scCASE default fit, X Z unscaled", s, XZ, out.obs_names, out.var_names)
            add_truth("scCASE default fit, X Z min-max", s, minmax_scale(XZ), out.obs_names,
                      out.var_names)
        t1 = time.perf_counter()
        W, H = out.varm["sccase_W"], out.obsm["X_sccase"]
        r, _ = score(H @ W.T, lab, None)
        add("NMF W H (default fit)", s, r, k=k)
        add_truth("NMF W H (default fit)", s, H @ W.T, out.obs_names, out.var_names)
        embs = {"raw TF-IDF": emb_def, f"scCASE default (k={k})": emb_enh}
        for v in variants:
            t1 = time.perf_counter()
            E = output_variant(X, out.obsp["sccase_Z"], v)
            r, emb_v = score(E, lab, None)
            add(f"variant {v} (default fit)", s, r, k=k, time_s=t_fit + time.perf_counter() - t1)
            embs[f"variant {v}"] = emb_v
            if v == "blend_all":
                add_truth(f"variant {v} (default fit)", s, E, out.obs_names, out.var_names)
        t1 = time.perf_counter()
        E = knn_average(X.T.tocsr(), 15, seed=s)
        r, _ = score(E, lab, None)
        add("kNN average (k=15)", s, r, time_s=time.perf_counter() - t1)
        add_truth("kNN average (k=15)", s, E, out.obs_names, out.var_names)
        t0 = time.perf_counter()
        rel = enhance(a, n_components=k, seed=s, preset="release")
        t_rel = time.perf_counter() - t0
        r, emb_rel = score(rel.layers["sccase"], rel.obs["cell_type"].astype(str).to_numpy(), None)
        add("scCASE release preset", s, r, k=k, n_iter=int(rel.uns["sccase"]["n_iter"]), time_s=t_rel)
        embs["release preset"] = emb_rel
        add_truth("scCASE release preset", s, rel.layers["sccase"], rel.obs_names, rel.var_names)
        t0 = time.perf_counter()
        pap = enhance(a, n_components=k, seed=s, **PAPER_FORMULAS)
        t_pap = time.perf_counter() - t0
        r, emb_pap = score(pap.layers["sccase"], pap.obs["cell_type"].astype(str).to_numpy(), None)
        add("scCASE paper formulas", s, r, k=k, n_iter=int(pap.uns["sccase"]["n_iter"]), time_s=t_pap)
        embs["paper formulas"] = emb_pap
        add_truth("scCASE paper formulas", s, pap.layers["sccase"], pap.obs_names, pap.var_names)
        k_true = len(set(labels)) + 1
        t0 = time.perf_counter()
        ora = enhance(a, n_components=k_true, seed=s)
        t_ora = time.perf_counter() - t0
        r, _ = score(ora.layers["sccase"], ora.obs["cell_type"].astype(str).to_numpy(), None)
        add("scCASE default, k = types + 1", s, r, k=k_true, n_iter=int(ora.uns["sccase"]["n_iter"]),
            time_s=t_ora)
        add_truth("scCASE default, k = types + 1", s, ora.layers["sccase"], ora.obs_names, ora.var_names)
        if figures and s == seeds[0]:
            os.makedirs(FIG, exist_ok=True)
            plot_embeddings(embs, lab, os.path.join(FIG, f"{name}_umap.png"), method="umap",
                            title=f"{name}: UMAP of PCA(50), coloured by cell type (seed {s})")
            plot_loss(info["loss"], os.path.join(FIG, f"{name}_loss.png"),
                      initial_loss=info["initial_loss"], title=f"{name}: scCASE objective (seed {s})")
    if recovery:
        t0 = time.perf_counter()
        rec = run_recovery(a, frac=0.1, seed=seeds[0], variants={
            "scCASE release preset": {"preset": "release"},
            "scCASE paper formulas": PAPER_FORMULAS,
            "scCASE blend, all cells": {"neighbors": None},
            "scCASE X Z min-max": {"output": "xz"},
            "scCASE X Z unscaled": {"output": "xz", "scale_output": False}})
        res["recovery"] = rec
        res["recovery_s"] = time.perf_counter() - t0
        for m, v in rec.items():
            if m != "_setup":
                print(f"{name} recovery {m:28s} auROC cell {v['auroc_cell']:.3f} auPRC cell "
                      f"{v['auprc_cell']:.4f} pooled {v['auroc_pooled']:.3f}/{v['auprc_pooled']:.4f}",
                      flush=True)
    del emb_raw_paper
    return res


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default=None)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--variants", nargs="*", default=["xz_minmax", "blend_all"])
    p.add_argument("--no-recovery", action="store_true")
    p.add_argument("--no-figures", action="store_true")
    p.add_argument("--report", action="store_true", help="write docs/results_tables.md from saved runs")
    args = p.parse_args(argv)
    if args.dataset:
        t0 = time.perf_counter()
        res = run_dataset(args.dataset, args.seeds, args.variants, not args.no_recovery,
                          not args.no_figures)
        res["total_s"] = time.perf_counter() - t0
        res["machine"] = f"{platform.machine()}, {os.cpu_count()} CPUs"
        os.makedirs(RAW_JSON, exist_ok=True)
        with open(os.path.join(RAW_JSON, f"{args.dataset}.json"), "w") as fh:
            json.dump(res, fh, indent=1, default=lambda o: o.item() if hasattr(o, "item") else str(o))
        print(f"total {res['total_s']:.0f} s", flush=True)
    if args.report:
        write_tables()


def write_tables():
    """Summary tables (mean over enhancement seeds) of every saved dataset run."""
    lines = []
    for fn in sorted(f for f in os.listdir(RAW_JSON) if f.endswith(".json")):
        res = json.load(open(os.path.join(RAW_JSON, fn)))
        lines.append(f"### {res['dataset']} ({res['cells']} cells x {res['peaks']} peaks, "
                     f"{res['n_types']} types, imbalance I = {res['imbalance']:.3f})\n")
        lines.append(f"Enhancement seeds {res['seeds']}; run time {res['total_s']:.0f} s in all.\n")
        lines.append("| method | ARI | AMI | FMI | silhouette | k reached | k | time (s) |")
        lines.append("|---|---|---|---|---|---|---|---|")
        order = []
        for r in res["rows"]:
            if r["method"] not in order:
                order.append(r["method"])
        for m in order:
            rs = [r for r in res["rows"] if r["method"] == m]
            mean = lambda key: np.mean([r[key] for r in rs])  # noqa: E731
            sd = lambda key: np.std([r[key] for r in rs])  # noqa: E731
            cell = lambda key: f"{mean(key):.3f}" + (f" ± {sd(key):.3f}" if len(rs) > 1 else "")  # noqa: E731
            ks = sorted({r.get("k") for r in rs if r.get("k")})
            ts = [r["time_s"] for r in rs if "time_s" in r]
            lines.append(f"| {m} | {cell('ari')} | {cell('ami')} | {cell('fmi')} | {cell('silhouette')} | "
                         f"{sum(bool(r['reached']) for r in rs)}/{len(rs)} | {','.join(map(str, ks)) or '-'} | "
                         f"{np.mean(ts):.0f} |" if ts else
                         f"| {m} | {cell('ari')} | {cell('ami')} | {cell('fmi')} | {cell('silhouette')} | "
                         f"{sum(bool(r['reached']) for r in rs)}/{len(rs)} | {','.join(map(str, ks)) or '-'} | - |")
        lines.append("")
        if "recovery" in res:
            su = res["recovery"]["_setup"]
            lines.append(f"Recovery (seed {su['seed']}, {su['frac']:.0%} of nonzero counts hidden: "
                         f"{su['hidden']} entries over {su['cells']} cells x {su['peaks']} kept peaks):\n")
            lines.append("| method | auROC (cell mean) | auPRC (cell mean) | auROC (pooled) | auPRC (pooled) |")
            lines.append("|---|---|---|---|---|")
            for m, v in res["recovery"].items():
                if m != "_setup":
                    lines.append(f"| {m} | {v['auroc_cell']:.3f} | {v['auprc_cell']:.4f} | "
                                 f"{v['auroc_pooled']:.3f} | {v['auprc_pooled']:.4f} |")
            base = next(v["base_rate"] for m, v in res["recovery"].items() if m != "_setup")
            lines.append(f"\n(base rate of positives among candidates: {base:.4f})\n")
        if res.get("truth"):
            lines.append("Against the simulation's truth (peaks enriched in the cell's type, "
                         "`layers['open']`), mean over enhancement seeds:\n")
            lines.append("| method | auROC (cell) | auROC (peak) | auPRC (cell) | auPRC (peak) |")
            lines.append("|---|---|---|---|---|")
            methods = list(dict.fromkeys(r["method"] for r in res["truth"]))
            for m in methods:
                rs = [r for r in res["truth"] if r["method"] == m]
                f = lambda key: f"{np.mean([r[key] for r in rs]):.3f}"  # noqa: E731
                lines.append(f"| {m} | {f('auroc_cell')} | {f('auroc_peak')} | {f('auprc_cell')} | "
                             f"{f('auprc_peak')} |")
            lines.append("")
    with open(os.path.join(DOCS, "results_tables.md"), "w") as fh:
        fh.write("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
