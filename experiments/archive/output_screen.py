"""Screen of output weightings built from one fitted Z (issue 5: D6T1 against raw L2 TF-IDF).

    python -m experiments.archive.output_screen granja2019_D6T1_2k est 0,1,2 blend,top300,rel0.3
    python -m experiments.archive.output_screen sim_corces2016 14 0,1,2 blend0.7

Arguments: dataset (a name ``experiments.common.load`` takes), comma-separated k values (``est`` = the default
K estimate + 1; ``est@lam1e4`` = the same with ``lam=1e4``, likewise for a number),
enhancement seeds, variants.  Each (k, seed) fit of ``enhance`` (package
defaults otherwise) is cached in ``$SCREEN_CACHE`` (default ``/tmp/sccase_screen``); every
variant is an n x n weight matrix B and the enhanced matrix is ``X B`` (X the L2 TF-IDF),
scored like ``quality.py`` (PCA(50) -> UMAP kNN graph -> Leiden searched to the number of
types, mean of Leiden seeds 0-2).  Variants, all with ``Zc`` = columns summing to 1:

- ``blend[w]``: the default output ``(1 - w) I + w Zc`` (w = 0.8 when omitted);
- ``cos``: Zc of the cosine similarity of the columns of H instead of Z (w = 0.8);
- ``sq``: ``Zc Zc`` (two averaging steps); ``sym``: ``D^-1/2 Z D^-1/2``; ``rowc``: rows of
  Z scaled to sum 1 before the columns;
- ``topN`` / ``topk`` / ``top2k`` / ``toph``: each column of Z keeps its N largest entries
  (N = n / k, 2 n / k, n / 2k for the last three), then the 0.8 blend (``top300w0.7``: the
  blend weight 0.7);
- ``relT``: each column keeps the entries >= T times its largest one, then the 0.8 blend;
- ``powP``: the entries of Z raised to the power P (sharper weights, none dropped), then
  the 0.8 blend;
- ``cen[c]``: each column of Z minus c times its mean (c = 1 when omitted), negatives set to 0 (a continuous cut at the
  mean); ``amean``: each column keeps its entries >= its mean (a hard cut there);
  ``topbgN``: the N largest entries kept and the others replaced by their mean (the mass
  of the small weights kept, their detail dropped); each then the 0.8 blend.

Recorded in ``docs/results_raw/output_screen.txt``; summarised in docs/results.md (items
9-14) and docs/notebook/2026-11-results-history.md.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import scipy.sparse as sp


def colnorm(Z):
    Z = np.maximum(np.asarray(Z, np.float64), 0)
    c = Z.sum(0)
    return Z / np.where(c > 0, c, 1)


def weights(v: str, Z, H):
    """The n x n weight matrix of variant ``v`` (Z n x n, H cells x k)."""
    from sccase_jax.output import output_weights

    n, k = H.shape
    eye = np.eye(n)
    if v.startswith("blend"):
        return output_weights(Z, "blend", float(v[5:] or 0.8))
    if v == "cos":
        Hn = H / np.maximum(np.linalg.norm(H, axis=1, keepdims=True), 1e-12)
        return 0.2 * eye + 0.8 * colnorm(Hn @ Hn.T)
    if v == "sq":
        Zc = colnorm(Z)
        return 0.2 * eye + 0.8 * (Zc @ Zc)
    if v == "sym":
        Zp = np.maximum(Z, 0)
        d = np.sqrt(np.where(Zp.sum(0) > 0, Zp.sum(0), 1))
        return 0.2 * eye + 0.8 * Zp / d[:, None] / d[None, :]
    if v == "rowc":
        Zp = np.maximum(Z, 0)
        r = Zp.sum(1)
        return 0.2 * eye + 0.8 * colnorm(Zp / np.where(r > 0, r, 1)[:, None])
    if v.startswith("topbg"):
        N = max(1, min(int(v[5:]), n - 1))
        Zp = np.maximum(Z, 0)
        thr = -np.partition(-Zp, N - 1, axis=0)[N - 1]
        keep = Zp >= thr[None, :]
        rest = np.where(keep, 0, Zp)
        bg = rest.sum(0, keepdims=True) / np.maximum((~keep).sum(0, keepdims=True), 1)
        return output_weights(np.where(keep, Zp, bg), "blend", 0.8)
    if v.startswith("top"):
        v, _, w = v.partition("w")
        N = {"topk": n // k, "top2k": 2 * n // k, "toph": n // (2 * k)}.get(v) or int(v[3:])
        return output_weights(Z, "blend", float(w or 0.8), neighbors=max(1, min(N, n - 1)))
    if v.startswith("pow"):
        return output_weights(np.maximum(Z, 0) ** float(v[3:]), "blend", 0.8)
    if v.startswith("rel"):
        Zp = np.maximum(Z, 0)
        return output_weights(np.where(Zp >= float(v[3:]) * Zp.max(0, keepdims=True), Zp, 0),
                              "blend", 0.8)
    if v.startswith("cen"):
        Zp = np.maximum(Z, 0)
        c = float(v[3:] or 1.0)
        return output_weights(np.maximum(Zp - c * Zp.mean(0, keepdims=True), 0), "blend", 0.8)
    if v == "amean":
        Zp = np.maximum(Z, 0)
        return output_weights(np.where(Zp >= Zp.mean(0, keepdims=True), Zp, 0), "blend", 0.8)
    raise ValueError(f"unknown variant {v!r}")


def main(argv):
    from experiments.common import load
    from experiments.quality import score
    from sccase_jax.output import enhanced_matrix
    from sccase_jax.preprocessing import tfidf
    from sccase_jax.tl import enhance

    name, ks, seeds, variants = argv[0], argv[1].split(","), argv[2].split(","), argv[3].split(",")
    cache = os.environ.get("SCREEN_CACHE", "/tmp/sccase_screen")
    os.makedirs(cache, exist_ok=True)
    a = load(name)
    a.X = sp.csr_matrix(a.X)
    res = {}
    for kk in ks:
        for s in map(int, seeds):
            f = os.path.join(cache, f"{name}_{kk}_{s}.npz")
            if not os.path.exists(f):
                kpart, _, lam = kk.partition("@lam")
                kw = {} if kpart == "est" else {"n_components": int(kpart)}
                if lam:
                    kw["lam"] = float(lam)
                out = enhance(a, seed=s, store_z="full", **kw)
                np.savez(f, Z=np.asarray(out.obsp["sccase_Z"], np.float32), H=out.obsm["X_sccase"],
                         obs=out.obs_names.to_numpy().astype(str),
                         var=out.var_names.to_numpy().astype(str))
            d = np.load(f)
            b = a[d["obs"], d["var"]]
            lab = b.obs["cell_type"].astype(str).to_numpy()
            X = tfidf(sp.csr_matrix(b.X).T, "l2")
            for v in variants:
                E = enhanced_matrix(X, np.asarray(weights(v, d["Z"], d["H"]), np.float32))
                r, _ = score(E, lab, None)
                print(f"{name} k={kk} seed={s} k_fit={d['H'].shape[1]} {v:10s} ARI {r['ari']:.3f} "
                      f"AMI {r['ami']:.3f} reached={r['reached']}", flush=True)
                res.setdefault(f"{kk} {v}", []).append((r["ari"], r["ami"]))
    for key, v in res.items():
        v = np.array(v)
        print(f"MEAN {name} {key:16s} ARI {v[:, 0].mean():.3f} AMI {v[:, 1].mean():.3f} n={len(v)}")


if __name__ == "__main__":
    main(sys.argv[1:])
