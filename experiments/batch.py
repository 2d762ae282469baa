"""Batch correction: Harmony on the embedding, the batch term, none, the release's re-weighting.

Two settings, both on Granja 2019 bone marrow (600 cells, 6 types; not the paper's data):

* ``simulated``: the counts split at random into two batches by
  :func:`sccase_jax.datasets.simulate_batches` (batch 1 keeps 40 % of the reads, and every
  peak has its own efficiency per batch, log-normal with mean 1 and sd 0.6 on the log
  scale); the unbatched data's clustering is the target ("ARI vs unbatched").
* ``real``: the file's two donors (obs ``Group``: 108 cells of D5T1, 492 of D6T1).
* ``--donor-effect``: two donors of 1,000 cells with a real donor's effect, made from D6T1
  cells and the D5T1 pseudo-bulk (:func:`donor_effect_pair`; ``--effect-scale`` multiplies
  its log ratio); writes ``experiments/results/batch_donor_effect[_x<scale>].json``.

Rows, each fit with the package defaults (K estimated, the default output) and
enhancement seeds ``--seeds`` (mean over them): raw L2 TF-IDF; scCASE without correction;
``enhance(..., batch_key=...)`` (Harmony on the fit's embedding, the default
``batch_method``); the batch term with ``batch_weight`` beta (``batch_method="term"``);
the release's post-hoc re-weighting of the uncorrected fit's Z (``Z[i, j] *= b / (a + b)``,
a / b the mean of column j over i's batch / the other batches; the default output from it).
Scores (mean of Leiden seeds 0-2, clustered to the number of types on PCA(50) of each
matrix): cell-type ARI / AMI, ARI against the unbatched clustering of the same seed
(simulated), batch ASW, iLISI, graph connectivity, cell-type ASW and the share of each
cell's 15 nearest neighbours from the other batch (:mod:`sccase_jax.evaluation.batch`).

``python -m experiments.batch [--betas 1 3]``; writes ``experiments/results/batch.json``
(``--sim-seed 1 --no-real --out experiments/results/batch_sim1.json``: another draw of the
simulated batches).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from experiments.common import BM600, RESULTS, load

SEEDS = (0, 1, 2)  # Leiden seeds
METRICS = ("ari", "ami", "ari_vs_unbatched", "batch_asw", "ilisi", "graph_connectivity",
           "celltype_asw", "other_batch_fraction", "between_batch_share")


def release_reweight(Z: np.ndarray, batch: np.ndarray) -> np.ndarray:
    """The release's post-hoc correction (sccase 0.2.5 main.py), vectorised: for each cell
    j and batch c, ``a`` = mean of Z[:, j] over the cells of c, ``b`` over the others; the
    rows of c in column j are multiplied by ``b / (a + b)``."""
    Z = np.asarray(Z, np.float64)
    out = Z.copy()
    for c in np.unique(batch):
        inside = batch == c
        a = Z[inside].mean(axis=0)
        b = Z[~inside].mean(axis=0)
        out[inside] *= b / np.where(a + b > 0, a + b, 1.0)
    return out


def between_share(Z, batch) -> float:
    """||A Z||^2 / ||Z||^2: the share of Z in the between-batch variance of its columns."""
    Z = np.asarray(Z, np.float64)
    centred = np.zeros_like(Z)
    for c in np.unique(batch):
        inside = batch == c
        centred[inside] = Z[inside].mean(axis=0)
    centred -= Z.mean(axis=0)
    return float((centred**2).sum() / (Z**2).sum())


def donor_effect_pair(a, ref, n_per_donor=1000, *, seed=0, pseudo=10.0, scale=1.0):
    """Two "donors" of ``n_per_donor`` distinct cells of one real donor, the second given a
    real donor's effect: ``(batched, unbatched, info)``.

    ``a``: the donor's labelled counts (cells x peaks, ``obs["cell_type"]``); ``ref``: the
    other donor's pseudo-bulk on the same peaks (one profile per type, ``obs["n_cells"]``).
    Donor A is a random sample of ``a``; donor B other cells of ``a`` drawn with the other
    donor's type composition (capped at the cells left).  The donor effect per peak is the
    ratio of the other donor's pseudo-bulk to this donor's, this donor's types reweighted to
    the other's composition first (so the ratio is not the composition), with ``pseudo``
    reads added to both and the median ratio set to 1; times the ratio of their mean reads
    per cell.  It is imposed by thinning: B keeps each read of peak p with probability
    ``min(1, r_p)``, A with ``min(1, 1 / r_p)`` (each donor loses reads where it is the
    higher), so B / A = r_p.  ``scale`` multiplies the log ratio (a stronger or weaker
    effect of the same shape).  Cells left without reads are dropped from both versions.
    """
    import anndata as ad
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    C = sp.csr_matrix(a.X, dtype=np.float64)
    types = a.obs["cell_type"].astype(str).to_numpy()
    names = ref.obs["cell_type"].astype(str).to_numpy()
    n_other = np.asarray(ref.obs["n_cells"], np.float64)
    R = np.asarray(ref.X.toarray() if sp.issparse(ref.X) else ref.X, np.float64)  # types x peaks
    own = np.vstack([np.asarray(C[types == t].sum(axis=0)).ravel() for t in names])
    n_own = np.array([(types == t).sum() for t in names], np.float64)
    mix = (n_other / n_own) @ own  # this donor with the other's composition
    other = R.sum(axis=0)
    mix *= other.sum() / mix.sum()
    r = (other + pseudo) / (mix + pseudo)
    r = np.exp(scale * np.log(r / np.median(r)))
    depth = (R.sum() / n_other.sum()) / (C.sum() / C.shape[0])
    keep_b = np.minimum(1.0, r * depth)
    keep_a = np.minimum(1.0, 1.0 / (r * depth))
    A = rng.choice(C.shape[0], n_per_donor, replace=False)
    left = np.setdiff1d(np.arange(C.shape[0]), A)
    want = np.round(n_per_donor * n_other / n_other.sum()).astype(int)
    B = np.concatenate([rng.permutation(left[types[left] == t])[:w] for t, w in zip(names, want)])
    cells = np.concatenate([A, B])
    sub = C[cells].tocoo()
    in_b = np.arange(cells.size) >= A.size
    prob = np.where(in_b[sub.row], keep_b[sub.col], keep_a[sub.col])
    kept = rng.binomial(np.round(sub.data).astype(np.int64), prob)
    X = sp.csr_matrix((kept.astype(np.float32), (sub.row, sub.col)), shape=sub.shape)
    X.eliminate_zeros()
    ok = np.asarray(X.sum(axis=1)).ravel() > 0
    obs = a.obs.iloc[cells].copy()
    obs["donor"] = np.where(in_b, "B (other donor's effect)", "A (as is)")
    obs.index = [f"{i}_{d[0]}" for i, d in zip(obs.index, obs["donor"])]
    batched = ad.AnnData(X[ok], obs=obs[ok], var=a.var.copy())
    unbatched = ad.AnnData(sp.csr_matrix(C[cells][ok], dtype=np.float32), obs=obs[ok], var=a.var.copy())
    info = {"cells_a": int(ok[:A.size].sum()), "cells_b": int(ok[A.size:].sum()),
            "log_ratio_sd": float(np.std(np.log(r))), "depth_ratio": float(depth),
            "reads_kept_a": float(X[:A.size].sum() / C[A].sum()),
            "reads_kept_b": float(X[A.size:].sum() / C[B].sum()), "pseudo": pseudo, "seed": seed,
            "scale": scale}
    return batched, unbatched, info


def scores(E, labels, batch, *, reference=None, transform=None) -> tuple[dict, list]:
    from sccase_jax.evaluation.batch import batch_scores
    from sccase_jax.evaluation.clustering import cluster_to_k, neighbor_graph, pca_embedding
    from sccase_jax.evaluation.metrics import clustering_scores

    emb = pca_embedding(E, 50, transform=transform, tfidf_variant="l2")
    g = neighbor_graph(emb)
    k = np.unique(labels).size
    per, clusters = [], []
    for s in SEEDS:
        cr = cluster_to_k(g, k, seed=s)
        clusters.append(cr.labels)
        row = clustering_scores(labels, cr.labels)
        if reference is not None:
            row["ari_vs_unbatched"] = clustering_scores(reference[len(clusters) - 1], cr.labels)["ari"]
        per.append(row)
    out = {m: float(np.mean([p[m] for p in per])) for m in per[0] if m in ("ari", "ami", "ari_vs_unbatched")}
    out.update(batch_scores(emb, batch, labels))
    return out, clusters


def enhanced_from_z(a, Z):
    """The default output recomputed from a given Z (dense)."""
    import scipy.sparse as sp

    import sccase_jax
    from sccase_jax import output

    X = sccase_jax.preprocess(sp.csr_matrix(a.X, dtype=np.float64).T)[0]
    B = output.output_weights(np.asarray(Z, np.float32), "blend", 0.8, neighbors="auto")
    return np.asarray(output.enhanced_matrix(X, B))


def _mean_rows(per_seed: list[dict]) -> dict:
    """Mean over enhancement seeds of each score (and the per-seed ARI)."""
    out = {m: float(np.mean([r[m] for r in per_seed])) for m in per_seed[0] if m in METRICS or m == "fit_s"}
    out["ari_per_seed"] = [r["ari"] for r in per_seed]
    out["other_batch_fraction_per_seed"] = [r["other_batch_fraction"] for r in per_seed]
    return out


def one_setting(a, batch_key, betas, enh_seeds, reference=None):
    import sccase_jax

    labels = a.obs["cell_type"].astype(str).to_numpy()
    batch = a.obs[batch_key].astype(str).to_numpy()
    r, _ = scores(a.X, labels, batch, reference=reference, transform="tfidf")
    rows = {"raw (L2 TF-IDF)": _mean_rows([r])}
    per: dict[str, list] = {}

    def add(name, E, seconds=None, share=None):
        row, _ = scores(E, labels, batch, reference=reference)
        if seconds is not None:
            row["fit_s"] = seconds
        if share is not None:
            row["between_batch_share"] = share
        per.setdefault(name, []).append(row)

    for s in enh_seeds:
        kw = dict(seed=s, store_z="full")
        t0 = time.perf_counter()
        plain = sccase_jax.enhance(a, **kw)
        Z = np.asarray(plain.obsp["sccase_Z"].toarray() if hasattr(plain.obsp["sccase_Z"], "toarray")
                       else plain.obsp["sccase_Z"])
        add("scCASE, no correction", plain.layers["sccase"], time.perf_counter() - t0,
            between_share(Z, batch))
        t0 = time.perf_counter()
        hm = sccase_jax.enhance(a, batch_key=batch_key, **kw)
        add("Harmony on the embedding (batch_key, default)", hm.layers["sccase"],
            time.perf_counter() - t0)
        Zr = release_reweight(Z, batch)
        add("release re-weighting of Z", enhanced_from_z(a, Zr), share=between_share(Zr, batch))
        for beta in betas:
            t0 = time.perf_counter()
            out = sccase_jax.enhance(a, batch_key=batch_key, batch_method="term",
                                     batch_weight=beta, **kw)
            Zt = out.obsp["sccase_Z"]
            Zt = np.asarray(Zt.toarray() if hasattr(Zt, "toarray") else Zt)
            add(f"batch term, beta = {beta:g}", out.layers["sccase"], time.perf_counter() - t0,
                between_share(Zt, batch))
    rows.update({name: _mean_rows(v) for name, v in per.items()})
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--betas", type=float, nargs="+", default=[1.0, 3.0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="enhancement seeds")
    ap.add_argument("--out", default=str(RESULTS / "batch.json"))
    ap.add_argument("--sim-seed", type=int, default=0, help="seed of the batch simulator")
    ap.add_argument("--no-real", action="store_true", help="only the simulated setting")
    ap.add_argument("--donor-effect", action="store_true",
                    help="only the two-donor set with a real donor's effect (donor_effect_pair)")
    ap.add_argument("--effect-scale", type=float, default=1.0,
                    help="--donor-effect: multiply the donor effect's log ratio by this")
    args = ap.parse_args()
    import sccase_jax
    from sccase_jax.datasets import simulate_batches

    if args.donor_effect:
        return donor_effect_main(args)
    a = load(BM600)
    sim = simulate_batches(a, 2, depth=(1.0, 0.4), efficiency_sd=0.6, seed=args.sim_seed)
    # cells left without reads by the thinning are dropped from both (the same cells)
    keep = np.asarray(sim.X.sum(axis=1)).ravel() > 0
    sim, a_kept = sim[keep].copy(), a[keep].copy()
    labels = a_kept.obs["cell_type"].astype(str).to_numpy()
    unbatched = sccase_jax.enhance(a_kept, seed=0)
    base, reference = scores(unbatched.layers["sccase"], labels, np.zeros(a_kept.n_obs))
    record = {"dataset": BM600, "seeds": SEEDS, "enhancement_seeds": args.seeds,
              "simulated_cells": int(keep.sum()), "simulator_seed": args.sim_seed,
              "unbatched": {m: base[m] for m in ("ari", "ami", "celltype_asw")},
              "simulated": one_setting(sim, "batch", args.betas, args.seeds, reference=reference),
              "real": {} if args.no_real else one_setting(a, "Group", args.betas, args.seeds)}
    print("unbatched", record["unbatched"])
    for setting in ("simulated", "real"):
        print(setting)
        for name, r in record[setting].items():
            print(f"  {name:46s} " + " ".join(f"{m} {r[m]:.3f}" for m in METRICS if m in r)
                  + f" ARI per seed {np.round(r['ari_per_seed'], 3).tolist()}")
    with open(args.out, "w") as fh:
        json.dump(record, fh, indent=1)


def within_type_other_share(labels, batch) -> float:
    """The share of other-batch neighbours if every cell's neighbours were drawn at random
    from the other cells of its own type: the most a correction can mix without mixing
    types."""
    total = 0.0
    for t in np.unique(labels):
        inside = labels == t
        n_t = inside.sum()
        if n_t < 2:
            continue
        for b in np.unique(batch[inside]):
            n_b = (batch[inside] == b).sum()
            total += n_b * (n_t - n_b) / (n_t - 1)
    return total / labels.size


def donor_effect_main(args):
    import sccase_jax

    a = load("granja2019_D6T1_10k")
    ref = load("granja2019_D5T1_pseudobulk_ref")
    batched, unbatched, info = donor_effect_pair(a, ref, seed=args.sim_seed, scale=args.effect_scale)
    labels = batched.obs["cell_type"].astype(str).to_numpy()
    donor = batched.obs["donor"].astype(str).to_numpy()
    info["within_type_other_share"] = within_type_other_share(labels, donor)
    info["random_other_share"] = within_type_other_share(np.zeros(labels.size), donor)
    base, reference = scores(sccase_jax.enhance(unbatched, seed=0).layers["sccase"], labels,
                             np.zeros(unbatched.n_obs))
    record = {"dataset": "granja2019_D6T1_10k + granja2019_D5T1_pseudobulk_ref", "seeds": SEEDS,
              "enhancement_seeds": args.seeds, "pair": info,
              "unbatched": {m: base[m] for m in ("ari", "ami", "celltype_asw")},
              "donor_effect": one_setting(batched, "donor", args.betas, args.seeds, reference=reference)}
    print("pair", info)
    print("unbatched", record["unbatched"])
    for name, r in record["donor_effect"].items():
        print(f"  {name:46s} " + " ".join(f"{m} {r[m]:.3f}" for m in METRICS if m in r)
              + f" ARI per seed {np.round(r['ari_per_seed'], 3).tolist()}")
    default = f"batch_donor_effect{'' if args.effect_scale == 1 else f'_x{args.effect_scale:g}'}.json"
    out = args.out if args.out != str(RESULTS / "batch.json") else str(RESULTS / default)
    with open(out, "w") as fh:
        json.dump(record, fh, indent=1)


if __name__ == "__main__":
    main()
