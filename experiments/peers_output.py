"""Why the whole-donor ARI fell, measured: output rules built from one fit, side by side.

One ``enhance`` fit per dataset and seed (package defaults; ``store_z`` keeps each cell's
1,000 largest weights of Z), then enhanced matrices built from that fit's embedding H by
different rules, each scored by ``evaluate_clustering`` (PCA(50) -> 15-NN UMAP graph ->
Leiden searched to the number of types, Leiden seeds 0-2) and by the label-free
neighbour support (:func:`sccase_jax.diagnostics.neighbour_support`).  At the default lam
``Z = max(H^T H, 0)`` to 1e-5, so a rule written on H is a rule on Z.

Rules (``--rules``, each ``NAME:N``):

* ``dot:N``: each cell's N largest ``h_i . h_j`` (= Z), weighted by them; ``dot:300`` is
  the output before the neighbourhood grew with the cells, ``dot:auto`` the default;
* ``cos:N``: the N largest cosines of H, weighted by them (no norm: tests hubness, i.e.
  whether dot products favour high-norm cells);
* ``z:N``: each cell's N largest weights of the fitted Z as stored (at most 1,000), for
  fits where Z need not equal ``max(H^T H, 0)`` (scCASER's lam 1e5, ``--reference``);
* ``dotref:N`` / ``dotfree:N`` (scCASER fits, ``--reference``): ``dot:N`` on the rows of H
  of the reference block (the first k1) / of the free block only;
* ``rawknn:N``: the N nearest cells in PCA(50) of the L2 TF-IDF itself, equal weights (the
  data's own neighbours, no fit);
* ``raw``: the L2 TF-IDF itself; ``raweq1``: Eq. 1 TF-IDF of the counts; ``snap``:
  SnapATAC2 2.9 spectral embedding (its defaults) clustered as an embedding.

All blends are ``0.2 X + 0.8 X Zc`` as the default.  Data: Granja 2019 (not the paper's).

    python -m experiments.peers_output --dataset granja2019_D6T1_10k --seeds 0 1 2 \
        --rules raw raweq1 snap dot:300 dot:1000 dot:1700 cos:300 rawknn:30
    python -m experiments.peers_output --dataset granja2019_D6T1_10k_sub2000 --seeds 0 \
        --rules raw dot:300 dot:30 cos:300 cos:100 cos:30 rawknn:30

writes ``experiments/results/peers_output_<dataset>.json`` (rows appended per call).
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings

import numpy as np
import scipy.sparse as sp

from experiments import common

BLEND = 0.8


def top_weights(S_cols, n: int, N: int, block: int = 512) -> sp.csc_matrix:
    """Each column's N largest entries of the n x n score given by ``S_cols(j0, j1)``."""
    N = min(N, n)
    rows, vals = [], []
    for j in range(0, n, block):
        S = S_cols(j, min(j + block, n))
        idx = np.argpartition(-S, N - 1, axis=0)[:N]
        rows.append(idx.T.ravel())
        vals.append(np.take_along_axis(S, idx, axis=0).T.ravel())
    return sp.csc_matrix((np.concatenate(vals), np.concatenate(rows), np.arange(0, n * N + 1, N)),
                         shape=(n, n))


def rule_weights(kind: str, N: int, H, raw_emb=None) -> sp.csc_matrix:
    """The neighbour weights (n x n, before the blend) of one rule."""
    n = H.shape[1]
    if kind == "dot":
        return top_weights(lambda a, b: np.maximum(H.T @ H[:, a:b], 0), n, N)
    if kind == "cos":
        Hn = H / np.maximum(np.linalg.norm(H, axis=0, keepdims=True), 1e-12)
        return top_weights(lambda a, b: Hn.T @ Hn[:, a:b], n, N)
    if kind == "rawknn":
        E = raw_emb.T / np.maximum(np.linalg.norm(raw_emb.T, axis=0, keepdims=True), 1e-12)
        W = top_weights(lambda a, b: E.T @ E[:, a:b], n, N)
        W.data[:] = 1.0
        return W
    raise ValueError(kind)


def own_type_share(W, lab) -> dict:
    """Label-aware check of a rule (not used by any rule): for each cell, the share of its
    neighbour weight (a column of W) on cells of its own type, averaged over the cells of
    each type; plus the effective number of cells averaged (1 / sum p^2, p the column's
    weights scaled to sum 1), mean over cells."""
    W = sp.csc_matrix(W)
    s = np.asarray(W.sum(axis=0)).ravel()
    codes, lab_i = np.unique(lab, return_inverse=True)
    same = lab_i[W.indices] == np.repeat(lab_i, np.diff(W.indptr))
    own = np.add.reduceat(np.where(same, W.data, 0.0), W.indptr[:-1]) / np.where(s > 0, s, 1)
    p2 = np.add.reduceat(W.data ** 2, W.indptr[:-1]) / np.where(s > 0, s, 1) ** 2
    sizes = np.bincount(lab_i)
    return {"own_share": float(own.mean()),
            "own_share_by_type": {str(codes[t]): [int(sizes[t]), float(own[lab_i == t].mean())]
                                  for t in range(len(codes))},
            "effective_cells": float(np.mean(1 / np.maximum(p2, 1e-300)))}


def blended(X, W) -> np.ndarray:
    """``0.8 X Zc + 0.2 X`` (cells x peaks) for neighbour weights W."""
    s = np.asarray(W.sum(axis=0)).ravel()
    B = W @ sp.diags(BLEND / np.where(s > 0, s, 1)) + sp.diags(np.where(s > 0, 1 - BLEND, 1.0))
    return np.asarray((X @ sp.csc_matrix(B)).T.toarray(), np.float32)


def stored_weights(Zs, N: int) -> sp.csc_matrix:
    """Each column's N largest entries of the stored (sparse, cut) Z."""
    Z = sp.csc_matrix(Zs, dtype=np.float64, copy=True)
    for j in range(Z.shape[1]):
        a, b = Z.indptr[j], Z.indptr[j + 1]
        if b - a > N:
            vals = Z.data[a:b]
            vals[np.argsort(-vals, kind="stable")[N:]] = 0
    Z.eliminate_zeros()
    return Z


def run(name: str, seeds, rules, log=print, reference: bool = False, kw=None) -> list[dict]:
    from experiments.peers import evaluate_embedding, load, m_snapatac2, reference_for
    from sccase_jax import enhance, output
    from sccase_jax.diagnostics import neighbour_support
    from sccase_jax.evaluation.clustering import evaluate_clustering, pca_embedding
    from sccase_jax.preprocessing import tfidf

    a = load(name)
    rows = []
    for s in seeds:
        t0 = time.perf_counter()
        ref = reference_for(name) if reference else None
        out = enhance(a, seed=s, store_z=min(1000, a.n_obs), reference=ref, **(kw or {}))
        fit_s = time.perf_counter() - t0
        b = a[out.obs_names, out.var_names]
        X = tfidf(sp.csr_matrix(b.X).T, "l2").tocsr()
        H = np.asarray(out.obsm["X_sccase"], np.float64).T
        lab = b.obs["cell_type"].astype(str).to_numpy()
        raw_emb = None
        for spec in rules:
            t1 = time.perf_counter()
            kind, _, arg = spec.partition(":")
            row = {"dataset": name, "seed": s, "rule": spec, "k": int(H.shape[0]), "fit_s": fit_s,
                   "reference": bool(reference), "enhance_kw": dict(kw or {})}
            if kind == "raweq1":
                r = evaluate_clustering(b.X, lab, transform="tfidf")
            elif kind == "raw":
                r = evaluate_clustering(X.T.tocsr(), lab, transform=None)
            elif kind == "snap":
                emb = m_snapatac2(b.X, s, {"obs": b.obs, "var": b.var})["embedding"]
                r = evaluate_embedding(emb, lab, (0, 1, 2))
            else:
                n = H.shape[1]
                N = (output.resolve_neighbors("auto", "blend", n) if arg == "auto"
                     else n if arg == "all" else int(arg))
                if kind == "rawknn" and raw_emb is None:
                    raw_emb = pca_embedding(X.T.tocsr(), 50, transform=None)
                if kind in ("dotref", "dotfree"):
                    k1 = int(out.uns["sccase"]["reference"]["k_ref"])
                    W = rule_weights("dot", N, H[:k1] if kind == "dotref" else H[k1:])
                else:
                    W = (stored_weights(out.obsp["sccase_Z"], N) if kind == "z"
                         else rule_weights(kind, N, H, raw_emb))
                row["support"] = neighbour_support(X, W, seed=s)["support"]
                row["neighbors"] = N
                row.update(own_type_share(W, lab))
                r = evaluate_clustering(blended(X, W), lab, transform=None)
            row.update(ari=r["ari"], ami=r["ami"], reached=bool(r["reached"]),
                       eval_s=time.perf_counter() - t1)
            rows.append(row)
            log(f"{name} seed={s} {spec:12s} ARI {row['ari']:.3f} AMI {row['ami']:.3f} "
                f"reached={row['reached']}" + (f" support {row['support']:.3f}" if "support" in row else "")
                + (f" own {row['own_share']:.3f} eff {row['effective_cells']:.0f}" if "own_share" in row else ""))
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", required=True)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--rules", nargs="+", default=["raw", "dot:300", "dot:auto", "cos:300"])
    p.add_argument("--reference", action="store_true",
                   help="fit scCASER with the D5T1 pseudo-bulk (experiments.peers.reference_for)")
    p.add_argument("--kw", nargs="*", default=[], metavar="NAME=VALUE",
                   help="further enhance options for the fit (values read as JSON), e.g. alpha=5")
    p.add_argument("--out")
    args = p.parse_args(argv)
    kw = {k: json.loads(v) for k, _, v in (x.partition("=") for x in args.kw)}
    warnings.simplefilter("ignore")
    rows = run(args.dataset, args.seeds, args.rules, log=lambda m: print(m, flush=True),
               reference=args.reference, kw=kw)
    out = args.out or str(common.RESULTS / f"peers_output_{args.dataset}.json")
    prev = json.load(open(out)) if os.path.exists(out) else []
    with open(out, "w") as fh:
        json.dump(prev + rows, fh, indent=1)


if __name__ == "__main__":
    main()
