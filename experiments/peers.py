"""scCASE / scCASER against the enhancers and embeddings users run instead (issue 22).

Usage (one dataset per call; run it with an environment that has sccase_jax installed and,
for the peers, ``snapatac2``, ``scopen`` and ``magic-impute``; a peer that does not import
or crashes is recorded as a failure, never dropped silently)::

    python -m experiments.peers --dataset granja2019_D6T1_2k --seeds 0 1 2 \
        --out experiments/results/peers_granja2019_D6T1_2k.json
    python -m experiments.peers --report experiments/results/peers_*.json   # markdown tables

Datasets: every ``.h5ad`` under ``$SCCASE_DATA`` (default ``../shared/data`` beside the
repository) with ``obs['cell_type']``, plus ``sim_corces2016`` (cells simulated from the
Corces 2016 sorted bulk profiles by ``sccase_jax.datasets.simulate_from_bulk``, the same
settings as ``experiments/quality.py``).  These are Granja 2019 bone marrow and small
classics, **not the paper's datasets**.

Protocol (the same for every method, docs/peers.md):

* One set of cells and peaks per dataset: the peaks with at least one read (``enhance``'s
  default filter), all cells.  Every method gets exactly these counts.
* Method seed ``s`` (each of ``--seeds``) seeds the method (NMF start and mask of scCASE,
  SVD / spectral / MAGIC / scOpen random states) **and** the clustering: Leiden seeds
  ``3s, 3s+1, 3s+2``.  A deterministic method (raw TF-IDF) therefore still shows the
  clustering's own seed-to-seed spread, and every method's spread is measured the same way.
* Matrix outputs (raw TF-IDF, kNN/MAGIC smoothing, scOpen, scCASE, scCASER):
  ``sccase_jax.clustering.evaluate_clustering`` (PCA(50) -> scanpy 15-NN UMAP graph ->
  Leiden searched to the number of types, mean of the three Leiden seeds; silhouette of
  the labels on PCA(50) under 1 - Pearson).
* Embedding-only outputs (LSI, SnapATAC2 spectral): the same function's steps after the
  PCA, on the embedding itself (:func:`evaluate_embedding`: the embedding replaces
  PCA(50); same neighbour graph, Leiden search, seeds, scores and silhouette).
* Hidden-count recovery (matrix methods): a ``--hide-frac`` (10 %) of the nonzero counts
  hidden with seed ``s`` (``sccase_jax.recovery.hide_counts``), the method re-run on the
  rest, hidden entries ranked among the zeros (``recovery_scores``: auROC/auPRC per cell,
  mean over cells, and pooled).  Scored on the peaks still non-empty after hiding.
* Time: wall clock of the method on the full data (not the evaluation).  Memory: the peak
  resident set size of the process while the method ran minus its size just before
  (sampled every 10 ms; native and JAX buffers included).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import sys
import threading
import time
import traceback
import warnings

import numpy as np
import scipy.sparse as sp

from experiments import common

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = str(common.DATA)  # $SCCASE_DATA, else shared/data beside the checkout
REFERENCE = "granja2019_D5T1_pseudobulk_ref.h5ad"
# Cells simulated from sorted bulk profiles: the settings of experiments/quality.py.
SIMULATED = {"sim_corces2016": dict(n_cells=100, depth=100.0, depth_sd=0.5, noise=0.7, seed=0)}
LABEL_NOTES = {
    "signac_atac_small": "labels are Seurat clusters of the same cells (not cell types): circular",
    "granja2019_bm600": "108 of its 600 cells are donor D5T1, the reference's donor: scCASER is optimistic",
    "granja2019_bm600_D5T1": "the reference's own donor (D5T1): no scCASER row",
}


# ---------------------------------------------------------------------------- measuring
class PeakRSS:
    """Peak resident set size (bytes) of this process while the block runs, minus before."""

    def __init__(self, interval: float = 0.01):
        self.interval = interval

    @staticmethod
    def rss() -> int:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return 0

    def _poll(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss())
            time.sleep(self.interval)

    def __enter__(self):
        self.start = self.rss()
        self.peak = self.start
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._poll, daemon=True)
        self._t.start()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.t0
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self.rss())
        self.mb = (self.peak - self.start) / 2**20
        return False


# ---------------------------------------------------------------------------- data
def load(name: str):
    import anndata as ad

    if name in SIMULATED:
        from sccase_jax.datasets import simulate_from_bulk

        bulk = ad.read_h5ad(os.path.join(DATA, "corces2016_bulk_signature.h5ad"))
        a = simulate_from_bulk(bulk, **SIMULATED[name])
    elif name in common.DERIVED:  # subsamples and donor subsets of the shared files
        a = common.load(name)
    else:
        a = ad.read_h5ad(os.path.join(DATA, f"{name}.h5ad"))
    a.X = sp.csr_matrix(a.X, dtype=np.float32)
    keep = np.asarray((a.X > 0).sum(axis=0)).ravel() > 0
    a = a[:, keep].copy()
    if "open" in a.layers:
        a.layers["open"] = sp.csr_matrix(a.layers["open"])
    return a


def reference_for(name: str):
    """The D5T1 pseudo-bulk for the Granja data (same peak set), else None."""
    import anndata as ad

    if name.startswith("granja2019_") and "D5T1" not in name:
        return ad.read_h5ad(os.path.join(DATA, REFERENCE))
    return None


# ---------------------------------------------------------------------------- methods
def l2_tfidf(C):
    """cells x peaks counts -> cells x peaks L2 TF-IDF (the package's default), CSR."""
    from sccase_jax.preprocessing import tfidf

    return tfidf(sp.csr_matrix(C).T, "l2").T.tocsr()


def m_raw_eq1(C, seed, ctx):
    """Raw counts, Eq. 1 TF-IDF (applied by evaluate_clustering)."""
    return {"matrix": C, "transform": "tfidf", "recovery": "tfidf_eq1"}


def m_raw_l2(C, seed, ctx):
    return {"matrix": l2_tfidf(C)}


def m_lsi(C, seed, ctx):
    """Signac-style LSI: log1p(TF * IDF * 1e4), truncated SVD (50), components 2-30
    (the first follows depth), each z-scored across cells (Signac's defaults)."""
    from sklearn.decomposition import TruncatedSVD

    C = sp.csr_matrix(C, dtype=np.float64)
    tf = sp.diags(1.0 / np.maximum(np.asarray(C.sum(axis=1)).ravel(), 1)) @ C
    idf = C.shape[0] / np.maximum(np.asarray((C > 0).sum(axis=0)).ravel(), 1)
    M = (tf @ sp.diags(idf)).tocsr()
    M.data = np.log1p(M.data * 1e4)
    k = min(50, min(M.shape) - 1)
    emb = TruncatedSVD(k, algorithm="randomized", n_iter=7, random_state=seed).fit_transform(M)
    emb = emb[:, 1:min(30, k)]
    emb = (emb - emb.mean(0)) / np.maximum(emb.std(0), 1e-12)
    return {"embedding": emb}


def m_lsi_l2(C, seed, ctx):
    """LSI as ArchR / SnapATAC-era pipelines and ``sccase_jax.reference.self_reference``
    use it: the same log TF-IDF and SVD, components 2-50 scaled by their singular values
    (U S, not z-scored), each cell's row scaled to unit L2 norm."""
    from sklearn.decomposition import TruncatedSVD

    C = sp.csr_matrix(C, dtype=np.float64)
    tf = sp.diags(1.0 / np.maximum(np.asarray(C.sum(axis=1)).ravel(), 1)) @ C
    idf = C.shape[0] / np.maximum(np.asarray((C > 0).sum(axis=0)).ravel(), 1)
    M = (tf @ sp.diags(idf)).tocsr()
    M.data = np.log1p(M.data * 1e4)
    k = min(50, min(M.shape) - 1)
    emb = TruncatedSVD(k, algorithm="randomized", n_iter=7, random_state=seed).fit_transform(M)[:, 1:]
    return {"embedding": emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)}


def m_lda(C, seed, ctx):
    """cisTopic-like topic model, clearly a stand-in: scikit-learn's LDA (batch variational
    Bayes, 30 iterations) on the binarised counts with cisTopic's default priors (alpha =
    50 / K capped at scikit-learn's bound 1, beta = 0.1) and K = 30 topics; the cell embedding is each cell's topic
    distribution (cisTopic's Gibbs/WarpLDA samplers are R / Java tools, not installed here).
    A first run with scikit-learn's own defaults (online, 10 passes, priors 1 / K) gave
    near-random clusterings (bm600 ARI 0.05) and is not reported as the peer."""
    from sklearn.decomposition import LatentDirichletAllocation

    B = sp.csr_matrix(C, dtype=np.float64)
    B.data[:] = 1.0
    k = min(30, min(B.shape) - 1)
    lda = LatentDirichletAllocation(k, doc_topic_prior=min(50.0 / k, 1.0), topic_word_prior=0.1,
                                    learning_method="batch", max_iter=30, random_state=seed,
                                    n_jobs=1)
    theta = lda.fit_transform(B)
    return {"embedding": theta / theta.sum(1, keepdims=True), "params": {"k": k}}


def m_knn(C, seed, ctx):
    """Each cell's L2 TF-IDF profile replaced by the mean of its 15 nearest cells (itself
    included) in PCA(50) space (sccase_jax.recovery.knn_average)."""
    from sccase_jax.evaluation.recovery import knn_average

    return {"matrix": knn_average(l2_tfidf(C), 15, seed=seed)}


def m_magic(C, seed, ctx):
    """MAGIC (magic-impute package) on the L2 TF-IDF: its defaults (knn=5, decay=1,
    t='auto', PCA 100), exact solver, dense output."""
    import magic

    X = l2_tfidf(C)
    op = magic.MAGIC(random_state=seed, verbose=0, n_jobs=1, solver="exact")
    return {"matrix": np.asarray(op.fit_transform(X), np.float32), "params": {"t": str(op.t)}}


def _scopen(C, seed, ctx):
    """scOpen 1.0.1's own pipeline (scopen.Main): binarise, its TF-IDF (scikit-learn's,
    L2, idf - 1), its NMF (coordinate descent, alpha = 1, nndsvd) at its default rank 30
    (``--estimate_rank`` off, the CLI default), ``random_state`` = the method seed.
    Cached per (seed, shape) so the matrix and the embedding rows share one fit."""
    import contextlib
    import io

    key = ("scopen", seed, C.shape, C.nnz)
    if ctx.get("_cache_key") == key:
        return ctx["_cache"]
    import scopen.MF
    from scopen.Main import run_nmf, tf_idf_transform

    if not getattr(scopen.MF.check_array, "_peers_shim", False):
        # scOpen 1.0.1 calls check_array(force_all_finite=...), a keyword scikit-learn 1.8
        # removed (renamed ensure_all_finite): translate it, nothing else changes.
        orig = scopen.MF.check_array

        def check_array(*a, **kw):
            if "force_all_finite" in kw:
                kw["ensure_all_finite"] = kw.pop("force_all_finite")
            return orig(*a, **kw)

        check_array._peers_shim = True
        scopen.MF.check_array = check_array

    B = sp.csr_matrix(C, dtype=np.float64).T.tocsr()  # peaks x cells
    B.data[:] = 1.0
    with contextlib.redirect_stdout(io.StringIO()):
        T = tf_idf_transform(B)
        w, h, err = run_nmf((T, min(30, min(B.shape) - 1), 1.0, 500, 0, seed, "nndsvd"))
    out = (np.asarray(w), np.asarray(h))
    ctx["_cache_key"], ctx["_cache"] = key, out
    return out


def m_scopen(C, seed, ctx):
    """scOpen imputed matrix W H (cells x peaks), as its CLI writes it."""
    w, h = _scopen(C, seed, ctx)
    return {"matrix": np.asarray((w @ h).T, np.float32), "params": {"k": int(h.shape[0])}}


def m_scopen_emb(C, seed, ctx):
    """scOpen's cell embedding H (its ``_barcodes.txt``), clustered as an embedding."""
    w, h = _scopen(C, seed, ctx)
    return {"embedding": np.asarray(h.T, np.float64), "params": {"k": int(h.shape[0])}}


def m_snapatac2(C, seed, ctx):
    """SnapATAC2 spectral embedding (snapatac2 wheel): select_features (its defaults),
    tl.spectral (30 components, cosine, its defaults)."""
    import anndata as ad
    import snapatac2 as snap

    a = ad.AnnData(sp.csr_matrix(C, dtype=np.float32), obs=ctx["obs"].copy(), var=ctx["var"].copy())
    snap.pp.select_features(a, n_features=min(500_000, a.n_vars), verbose=False)
    snap.tl.spectral(a, n_comps=min(30, a.n_obs - 2), random_state=seed)
    return {"embedding": np.asarray(a.obsm["X_spectral"], np.float64)}


def _enhance(C, seed, ctx, **kw):
    import anndata as ad

    from sccase_jax import enhance

    a = ad.AnnData(sp.csr_matrix(C, dtype=np.float32), obs=ctx["obs"].copy(), var=ctx["var"].copy())
    out = enhance(a, seed=seed, **kw)
    if out.n_obs != a.n_obs or out.n_vars != a.n_vars:
        raise RuntimeError(f"enhance kept {out.shape} of {a.shape}: not the shared cells/peaks")
    info = out.uns["sccase"]
    params = {"k": int(out.obsm["X_sccase"].shape[1]), "n_iter": int(info["n_iter"]),
              "neighbors": info["params"].get("neighbors"),
              "z_support": str(info["params"].get("z_support", "dense"))}
    if isinstance(info.get("support"), dict):
        params["support"] = round(float(info["support"]["support"]), 3)
    if "reference" in info:
        params.update(k_ref=int(info["reference"]["k_ref"]), alpha=float(info["reference"]["alpha"]),
                      frac_matched=float(info["reference"]["frac_matched"]))
    return {"matrix": out.layers["sccase"], "params": params, "fit": out}


def m_sccase(C, seed, ctx):
    """scCASE, package defaults (enhance(adata, seed=s))."""
    return _enhance(C, seed, ctx)


def m_sccase_300(C, seed, ctx):
    """scCASE with the output before the neighbourhood grew with the cells: each cell's 300
    largest weights at every size (``neighbors=300``; the same as the default below 3,000
    cells)."""
    if C.shape[0] <= 3000:
        return {"skip": "the same as the default at this size"}
    return _enhance(C, seed, ctx, neighbors=300)


def m_sccaser(C, seed, ctx):
    """scCASER, package defaults with the D5T1 pseudo-bulk reference."""
    if ctx.get("reference") is None:
        return {"skip": "no reference for this dataset"}
    return _enhance(C, seed, ctx, reference=ctx["reference"])


METHODS = {
    "raw TF-IDF (Eq. 1)": m_raw_eq1,
    "raw L2 TF-IDF": m_raw_l2,
    "LSI (Signac-style)": m_lsi,
    "LSI (U S, rows L2)": m_lsi_l2,
    "LDA topics (cisTopic-like)": m_lda,
    "kNN average (15)": m_knn,
    "MAGIC": m_magic,
    "scOpen (imputed W H)": m_scopen,
    "scOpen (embedding H)": m_scopen_emb,
    "SnapATAC2 spectral": m_snapatac2,
    "scCASE (default)": m_sccase,
    "scCASE (neighbors=300)": m_sccase_300,
    "scCASER (default, D5T1 ref)": m_sccaser,
}
# Methods added by other experiment scripts (candidates for a new default) register here.
EXTRA_METHODS: dict = {}


# ---------------------------------------------------------------------------- scoring
def evaluate_embedding(emb, labels, seeds, n_neighbors: int = 15):
    """evaluate_clustering's steps after its PCA, on an embedding (cells x dims)."""
    from sccase_jax.evaluation.clustering import cluster_to_k, neighbor_graph
    from sccase_jax.evaluation.metrics import clustering_scores, label_silhouette

    labels = np.asarray(labels).astype(str)
    k = len(np.unique(labels))
    g = neighbor_graph(np.asarray(emb, np.float32), n_neighbors)
    per = []
    for s in seeds:
        cr = cluster_to_k(g, k, seed=int(s))
        sc = clustering_scores(labels, cr.labels)
        sc.update(n_clusters=cr.n_clusters, reached=cr.reached, seed=int(s))
        per.append(sc)
    out = {m: float(np.mean([p[m] for p in per])) for m in ("ari", "ami", "fmi")}
    out.update({f"{m}_sd": float(np.std([p[m] for p in per])) for m in ("ari", "ami", "fmi")})
    out["reached"] = all(p["reached"] for p in per)
    out["silhouette"] = label_silhouette(np.asarray(emb, np.float64), labels, sample_size=3000)
    return out


def evaluate_matrix(M, labels, seeds, transform=None):
    from sccase_jax.evaluation.clustering import evaluate_clustering

    r = evaluate_clustering(M, labels, transform=transform, seeds=seeds)
    r.pop("per_seed")
    r.pop("embedding")
    return r


def score_output(res, labels, seeds):
    if "embedding" in res:
        return evaluate_embedding(res["embedding"], labels, seeds)
    return evaluate_matrix(res["matrix"], labels, seeds, res.get("transform"))


def recovery_pred(res, observed):
    """The matrix a method ranks hidden entries with (cells x peaks)."""
    if res.get("recovery") == "tfidf_eq1":
        from sccase_jax.preprocessing import tfidf

        return tfidf(sp.csr_matrix(observed).T, "paper").T.tocsr()
    return res["matrix"]


# ---------------------------------------------------------------------------- driver
def run_method(name, fn, C, seed, ctx):
    with warnings.catch_warnings(record=True) as caught, PeakRSS() as meter:
        warnings.simplefilter("always")
        res = fn(C, seed, ctx)
    res["time_s"] = meter.seconds
    res["mem_mb"] = meter.mb
    res["warnings"] = sorted({f"{w.category.__name__}: {str(w.message)[:200]}" for w in caught
                              if not issubclass(w.category, (DeprecationWarning, FutureWarning))})[:5]
    return res


def run_dataset(name, seeds, methods, hide_frac=0.1, recovery=True, log=print):
    from sccase_jax.evaluation.metrics import imbalance_index, signal_scores
    from sccase_jax.evaluation.recovery import hide_counts, recovery_scores

    a = load(name)
    labels = a.obs["cell_type"].astype(str).to_numpy()
    C = sp.csr_matrix(a.X)
    ctx = {"obs": a.obs, "var": a.var, "reference": reference_for(name)}
    res = {"dataset": name, "cells": a.n_obs, "peaks": a.n_vars, "n_types": len(set(labels)),
           "imbalance": imbalance_index(labels), "seeds": list(seeds), "rows": [], "failures": [],
           "note": LABEL_NOTES.get(name, ""), "data_dir": os.path.abspath(DATA)}
    has_truth = "open" in a.layers
    for s in seeds:
        lseeds = (3 * s, 3 * s + 1, 3 * s + 2)
        if recovery:
            observed, hidden = hide_counts(C, hide_frac, seed=s)
            pk = np.asarray((observed > 0).sum(axis=0)).ravel() > 0
            obs_k, hid_k = observed[:, pk], hidden[:, pk]
            ctx_rec = dict(ctx, var=a.var.iloc[np.flatnonzero(pk)])
        for mname, fn in methods.items():
            row = {"method": mname, "seed": s, "leiden_seeds": list(lseeds)}
            try:
                out = run_method(mname, fn, C, s, ctx)
            except Exception as exc:  # a peer that fails is reported, not hidden
                res["failures"].append({"method": mname, "seed": s, "stage": "fit",
                                        "error": f"{type(exc).__name__}: {exc}",
                                        "traceback": traceback.format_exc()[-2000:]})
                log(f"{name} {mname} seed={s} FAILED: {type(exc).__name__}: {exc}")
                continue
            if "skip" in out:
                log(f"{name} {mname}: skipped ({out['skip']})")
                continue
            t0 = time.perf_counter()
            row.update(score_output(out, labels, lseeds))
            row["eval_s"] = time.perf_counter() - t0
            row.update(time_s=out["time_s"], mem_mb=out["mem_mb"], params=out.get("params", {}),
                       warnings=out["warnings"],
                       output="embedding" if "embedding" in out else "matrix")
            if has_truth and "matrix" in out and out.get("transform") is None:
                M = out["matrix"]
                row["truth"] = signal_scores(np.asarray(M.toarray() if sp.issparse(M) else M, np.float32),
                                             a.layers["open"].toarray())
            del out
            if recovery and row["output"] == "matrix":
                try:
                    rout = run_method(mname, fn, obs_k, s, ctx_rec)
                    row["recovery"] = recovery_scores(recovery_pred(rout, obs_k), obs_k, hid_k)
                    del rout
                except Exception as exc:
                    res["failures"].append({"method": mname, "seed": s, "stage": "recovery",
                                            "error": f"{type(exc).__name__}: {exc}",
                                            "traceback": traceback.format_exc()[-2000:]})
            res["rows"].append(row)
            rec = row.get("recovery")
            log(f"{name} {mname:30s} seed={s} ARI {row['ari']:.3f} AMI {row['ami']:.3f} "
                f"FMI {row['fmi']:.3f} sil {row['silhouette']:.3f} reached={row['reached']} "
                f"t={row['time_s']:.1f}s mem={row['mem_mb']:.0f}MB"
                + (f" rec auROC {rec['auroc_cell']:.3f} auPRC {rec['auprc_cell']:.4f}" if rec else "")
                + (f" {row['params']}" if row["params"] else ""))
    return res


# ---------------------------------------------------------------------------- report
def _ms(vals, nd=3):
    vals = [v for v in vals if v is not None and np.isfinite(v)]
    if not vals:
        return "-"
    return f"{np.mean(vals):.{nd}f} ± {np.std(vals):.{nd}f}" if len(vals) > 1 else f"{vals[0]:.{nd}f}"


def report(paths) -> str:
    lines = []
    for p in paths:
        res = json.load(open(p))
        if "dataset" not in res:  # e.g. peers_sccaser_*.json: its own --report
            continue
        lines.append(f"### {res['dataset']} ({res['cells']} cells x {res['peaks']} peaks, "
                     f"{res['n_types']} types, imbalance I = {res['imbalance']:.3f})\n")
        if res.get("note"):
            lines.append(f"Note: {res['note']}.\n")
        lines.append(f"Method seeds {res['seeds']} (Leiden seeds 3s..3s+2 each); mean ± sd over "
                     f"method seeds; run {res.get('total_s', 0):.0f} s.\n")
        lines.append("| method | ARI | AMI | FMI | silhouette | k reached | recovery auROC | "
                     "recovery auPRC | time (s) | mem (MB, max) |")
        lines.append("|---|---|---|---|---|---|---|---|---|---|")
        seen = list(dict.fromkeys(r["method"] for r in res["rows"]))
        order = [m for m in METHODS if m in seen] + [m for m in seen if m not in METHODS]
        for m in order:
            rs = [r for r in res["rows"] if r["method"] == m]
            rec = [r.get("recovery") for r in rs]
            lines.append(
                f"| {m} | {_ms([r['ari'] for r in rs])} | {_ms([r['ami'] for r in rs])} | "
                f"{_ms([r['fmi'] for r in rs])} | {_ms([r['silhouette'] for r in rs])} | "
                f"{sum(bool(r['reached']) for r in rs)}/{len(rs)} | "
                f"{_ms([x['auroc_cell'] for x in rec if x])} | {_ms([x['auprc_cell'] for x in rec if x], 4)} | "
                f"{np.mean([r['time_s'] for r in rs]):.1f} | {np.max([r['mem_mb'] for r in rs]):.0f} |")
        if any("truth" in r for r in res["rows"]):
            lines.append("\nAgainst the simulation's truth (`layers['open']`), auROC per cell / per peak:\n")
            lines.append("| method | auROC cell | auROC peak | auPRC cell | auPRC peak |")
            lines.append("|---|---|---|---|---|")
            for m in order:
                rs = [r["truth"] for r in res["rows"] if r["method"] == m and "truth" in r]
                if rs:
                    lines.append(f"| {m} | " + " | ".join(_ms([x[k] for x in rs]) for k in
                                 ("auroc_cell", "auroc_peak", "auprc_cell", "auprc_peak")) + " |")
        fails = {}
        for f in res["failures"]:
            fails.setdefault((f["method"], f["stage"]), f["error"])
        if fails:
            lines.append("\nFailures:\n")
            for (m, st), e in fails.items():
                lines.append(f"- {m} ({st}): `{e[:300]}`")
        lines.append("")
    return "\n".join(lines)


FLOOR = ("raw TF-IDF (Eq. 1)", "raw L2 TF-IDF", "SnapATAC2 spectral")


def summary(paths) -> str:
    """One row per dataset: the floor (both raw TF-IDFs, SnapATAC2), scCASE's default and
    scCASER, ARI / AMI mean ± sd over method seeds, and the default's margin over the best
    floor row per metric in units of the larger of the two seed sds."""
    head = ("| dataset | cells | types | seeds | raw Eq. 1 | raw L2 | SnapATAC2 | **scCASE default** | "
            "scCASER (D5T1 ref) | margin ARI / AMI (sds) |")
    lines = [head, "|" + "---|" * 10]
    for p in paths:
        res = json.load(open(p))
        if "dataset" not in res:
            continue
        by = {}
        for r in res["rows"]:
            by.setdefault(r["method"], []).append(r)

        def cell(m):
            rs = by.get(m)
            if not rs:
                return "-"
            return f"{_ms([r['ari'] for r in rs])} / {_ms([r['ami'] for r in rs])}"

        margins = []
        d = by.get("scCASE (default)")
        for metric in ("ari", "ami"):
            if not d:
                margins.append("-")
                continue
            floor = [(np.mean([r[metric] for r in by[m]]), np.std([r[metric] for r in by[m]]))
                     for m in FLOOR if m in by]
            best, best_sd = max(floor)
            mine, mine_sd = np.mean([r[metric] for r in d]), np.std([r[metric] for r in d])
            sd = max(best_sd, mine_sd, 1e-3)
            margins.append(f"{mine - best:+.3f} ({(mine - best) / sd:+.1f})")
        lines.append(f"| {res['dataset']} | {res['cells']} | {res['n_types']} | {len(res['seeds'])} | "
                     f"{cell(FLOOR[0])} | {cell(FLOOR[1])} | {cell(FLOOR[2])} | {cell('scCASE (default)')} | "
                     f"{cell('scCASER (default, D5T1 ref)')} | {' / '.join(margins)} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--methods", nargs="*", help="subset of method names (default: all)")
    p.add_argument("--extra", nargs="*", default=[], help="candidate methods from experiments/peers_quality.py")
    p.add_argument("--hide-frac", type=float, default=0.1)
    p.add_argument("--no-recovery", action="store_true")
    p.add_argument("--out")
    p.add_argument("--merge", action="store_true",
                   help="replace only the rows/failures of the methods and seeds run in an existing --out "
                        "(new seeds are added)")
    p.add_argument("--report", nargs="*", help="JSON files to summarise as markdown")
    p.add_argument("--summary", nargs="*", help="JSON files: one row per dataset against the floor")
    args = p.parse_args(argv)
    if args.summary is not None:
        print(summary(sorted(sum((glob.glob(x) for x in args.summary), []))))
        return
    if args.report is not None:
        print(report(sorted(sum((glob.glob(x) for x in args.report), []))))
        return
    methods = dict(METHODS)
    if args.extra:
        from experiments import peers_quality  # registers its methods

        # peers_quality imports this file as the module ``experiments.peers``, a second copy
        # beside ``__main__``: its registry is the one filled.
        extra = peers_quality.peers.EXTRA_METHODS
        methods.update({k: v for k, v in extra.items() if k in args.extra or "all" in args.extra})
        missing = set(args.extra) - set(extra) - {"all"}
        if missing:
            raise SystemExit(f"unknown candidate(s): {sorted(missing)}; known: {sorted(extra)}")
    if args.methods:
        methods = {k: v for k, v in methods.items() if k in args.methods}
    t0 = time.perf_counter()
    res = run_dataset(args.dataset, args.seeds, methods, args.hide_frac, not args.no_recovery,
                      log=lambda s: print(s, flush=True))
    res["total_s"] = time.perf_counter() - t0
    res["machine"] = f"{platform.machine()}, {os.cpu_count()} CPUs"
    res["python"] = sys.version.split()[0]
    out = args.out or os.path.join(HERE, "results", f"peers_{args.dataset}.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    if args.merge and os.path.exists(out):
        prev = json.load(open(out))
        ran = set(methods)
        done = {(m, s) for m in ran for s in args.seeds}
        res["rows"] = [r for r in prev["rows"] if (r["method"], r["seed"]) not in done] + res["rows"]
        res["failures"] = [f for f in prev["failures"]
                           if (f["method"], f["seed"]) not in done] + res["failures"]
        res["seeds"] = sorted(set(prev["seeds"]) | set(args.seeds))
        res["total_s"] = prev.get("total_s", 0) + res["total_s"]
        res["merged"] = prev.get("merged", []) + [sorted(ran)]
    with open(out, "w") as fh:
        json.dump(res, fh, indent=1, default=lambda o: o.item() if hasattr(o, "item") else str(o))
    print(f"total {res['total_s']:.0f} s -> {out}", flush=True)


if __name__ == "__main__":
    main()
