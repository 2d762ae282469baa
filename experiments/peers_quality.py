"""Candidate scCASE objectives and settings for issue 22, item 3, measured in peers.py.

Registers methods into ``peers.EXTRA_METHODS`` (run them with
``python -m experiments.peers.py --dataset NAME --extra all`` or by name).  Everything here is
built from the package's public pieces (``register_objective`` + ``fit_variant`` with
optax, ``sweep``, ``enhance``'s output rule) without changing the package; the package
changes each one would need are in docs/peers.md.

Candidates
----------
``poisson``: the count-likelihood scCASE variant.  The squared data term is replaced by the
Poisson log-likelihood of the binarised counts B (peaks x cells) under the rate
``d_j (W H)_ij`` (``d_j`` = cell j's open peaks over the mean: a size factor, so H carries
composition, not depth); Z is tied to the cosine similarity of the cells' H columns,
``lam ||Z - Hn^T Hn||^2`` (``Hn``: columns of H scaled to unit norm), and ridge terms on W
and H.  Fitted by projected Adam through ``fit_variant`` (``jax.grad``).  X S is not formed,
so a step costs O(m n k + n^2 k).  The output is the package's default rule on this Z (the
blend 0.8 of each cell's L2 TF-IDF profile with its Z-weighted average over its 300
largest weights).
``poisson+graph``: the same plus ``mu tr(H L H^T)`` with L the Laplacian of the fixed
symmetric 15-NN graph of the cells' PCA(50) of the L2 TF-IDF (graph-regularised NMF).
``..., K sweep``: K chosen by ``sccase_jax.sweep`` (vmapped over K, the variant's member
solver) with a label-free criterion: the knee of the final Poisson deviance against K
(scOpen's rank rule, Kneedle).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from experiments import peers

EPS = 1e-8


def _objective(name, L=None):
    """A fresh Objective (its own jit trace) for this dataset's graph Laplacian L."""
    import jax.numpy as jnp

    from sccase_jax.objectives import get_objective, register_objective

    Lj = None if L is None else jnp.asarray(L, jnp.float32)

    def loss(X, Z, R, W, H, hp):
        d = jnp.sum(X, axis=0)
        d = d / jnp.mean(d)
        rate = (W @ H) * d[None, :]
        nll = jnp.sum(rate) - jnp.sum(X * jnp.log(rate + EPS))
        Hn = H / (jnp.linalg.norm(H, axis=0, keepdims=True) + EPS)
        sim = jnp.sum((Z - Hn.T @ Hn) ** 2)
        out = nll + hp["lam"] * sim + hp["gamma1"] * jnp.vdot(W, W) + hp["gamma2"] * jnp.vdot(H, H)
        if Lj is not None:
            out = out + hp["mu"] * jnp.sum((H @ Lj) * H)
        return out

    register_objective(name, lam=1.0, gamma1=1.0, gamma2=1.0, mu=0.0)(loss)
    return get_objective(name)


def knn_laplacian(C, n_neighbors=15, seed=0):
    """Laplacian (n x n, dense) of the symmetric 15-NN graph on PCA(50) of the L2 TF-IDF."""
    from sklearn.neighbors import kneighbors_graph

    from sccase_jax.evaluation.clustering import pca_embedding

    emb = pca_embedding(peers.l2_tfidf(C), 50, transform=None, seed=seed)
    A = kneighbors_graph(emb, min(n_neighbors, emb.shape[0] - 1), include_self=False)
    A = ((A + A.T) > 0).astype(np.float32).toarray()
    return np.diag(A.sum(1)) - A


def _fit_poisson(C, seed, k, *, lam=1.0, mu=0.0, lr=3e-3, max_iter=400, graph=False):
    import optax

    from sccase_jax.fitting import fit_variant

    B = sp.csr_matrix(C, dtype=np.float32).T.tocsr()  # peaks x cells
    B.data[:] = 1.0
    L = knn_laplacian(C, seed=seed) if graph else None
    obj = _objective(f"poisson_sccase_{id(L)}_{seed}_{k}", L)
    Bd = B.toarray()
    # The package's start (NMF of B, seed), but Z0 = the cosine similarity of H0, the
    # minimiser of the tie: from the Jaccard Z0 (entries ~1/n) the tie first pushes every
    # pair of cells towards orthogonal H columns and wipes the structure out (measured:
    # bm600 ARI 0.05-0.13 after 200 Adam steps at lr 1e-3 / 1e-2).
    from sccase_jax.params import Factors
    from sccase_jax.problem import prepare

    f0 = prepare(Bd, k, lam=lam, seed=seed, x_format="dense").factors
    init = Factors(np.asarray(f0.W), np.asarray(f0.H), cosine_z(f0.H))
    res = fit_variant(Bd, k, objective=obj, optimizer=optax.adam(lr), lam=lam,
                      hyper={"mu": mu}, seed=seed, tol=0.0, max_iter=max_iter, init=init)
    return res


def cosine_z(H):
    H = np.asarray(H, np.float64)
    Hn = H / np.maximum(np.linalg.norm(H, axis=0, keepdims=True), EPS)
    return np.maximum(Hn.T @ Hn, 0).astype(np.float32)


def blend_output(C, Z, neighbors=300, blend=0.8):
    from sccase_jax.output import enhanced_matrix, output_weights

    X = peers.l2_tfidf(C).T.tocsr()  # peaks x cells
    return enhanced_matrix(X, output_weights(np.asarray(Z, np.float32), "blend", blend, neighbors))


def k_default(C, seed):
    from sccase_jax.estimate import estimate_n_components

    return int(estimate_n_components(peers.l2_tfidf(C).T.tocsr(), seed=seed)) + 1


def m_poisson(C, seed, ctx, graph=False, k=None):
    k = k or k_default(C, seed)
    res = _fit_poisson(C, seed, k, mu=1.0 if graph else 0.0, graph=graph)
    Z = np.asarray(res.Z, np.float32)
    gap = float(np.linalg.norm(Z - cosine_z(res.H)) / np.linalg.norm(cosine_z(res.H)))
    return {"matrix": blend_output(C, Z), "params": {"k": k, "n_iter": int(res.n_iter),
                                                       "z_gap": gap, "final_F": float(res.loss[-1])}}


def m_sccase_k(C, seed, ctx, k):
    return peers._enhance(C, seed, ctx, n_components=k)


peers.EXTRA_METHODS.update({
    "cand: Poisson scCASE (optax)": lambda C, s, ctx: m_poisson(C, s, ctx),
    "cand: Poisson scCASE + kNN graph": lambda C, s, ctx: m_poisson(C, s, ctx, graph=True),
    "cand: Poisson scCASE K=types+1": lambda C, s, ctx: m_poisson(
        C, s, ctx, k=len(set(ctx["obs"]["cell_type"].astype(str))) + 1),
})


# ----------------------------------------------------------------------------- K by sweep
SWEEP_KS = (6, 9, 12, 17)


def internal_score(E, seed=0):
    """Label-free: silhouette (1 - Pearson, on PCA(50)) of the Leiden clustering at
    resolution 1 of the output's own 15-NN graph: how well the output separates the
    clusters it itself makes."""
    from sccase_jax.evaluation.clustering import neighbor_graph, partition, pca_embedding
    from sccase_jax.evaluation.metrics import label_silhouette

    emb = pca_embedding(E, 50, transform=None, seed=seed)
    lab = partition(neighbor_graph(emb, 15), 1.0, seed=seed)
    if len(np.unique(lab)) < 2:
        return -1.0, 1
    return float(label_silhouette(emb, lab.astype(str), sample_size=3000)), int(len(np.unique(lab)))


def m_sweep_k(C, seed, ctx, ks=SWEEP_KS, max_iter=10):
    """K from {6, 9, 12, 17} by one vmapped sweep (lam 1e6, 10 iterations: results.md found
    10 and 30 alike), scored by :func:`internal_score` on each member's default output;
    the chosen K is then refitted by ``enhance`` with the package defaults."""
    from sccase_jax import sweep

    X = peers.l2_tfidf(C).T.tocsr()
    res = sweep(X, lams=[1e6], ks=list(ks), seed=seed, max_iter=max_iter)
    scores = {}
    for j, k in enumerate(ks):
        m = res.member(0, j)
        scores[int(k)] = internal_score(blend_output(C, m.Z), seed)
    best = max(scores, key=lambda k: scores[k][0])
    out = peers._enhance(C, seed, ctx, n_components=best)
    out["params"].update(chosen_k=best, internal={str(k): v for k, v in scores.items()})
    return out


peers.EXTRA_METHODS["cand: scCASE, K by sweep + silhouette"] = m_sweep_k


# ----------------------------------------------------------------------------- lam
peers.EXTRA_METHODS["cand: scCASE lam 1e2"] = lambda C, s, ctx: peers._enhance(C, s, ctx, lam=1e2)
peers.EXTRA_METHODS["cand: scCASE lam 1e4"] = lambda C, s, ctx: peers._enhance(C, s, ctx, lam=1e4)


# ----------------------------------------------------------------------------- two passes
def m_two_pass(C, seed, ctx, resolution=1.0):
    """Label-free self-reference from scCASE's own output: pass 1 = the default; Leiden at
    ``resolution`` on the 15-NN graph of PCA(50) of its output; the counts summed per
    cluster become the reference of pass 2 (scCASER with the package's reference
    defaults).  Unlike ``reference.self_reference`` (clusters of the raw TF-IDF), the
    clusters come from the enhanced matrix."""
    from sccase_jax.evaluation.clustering import neighbor_graph, partition, pca_embedding
    from sccase_jax.reference import pseudobulk_reference

    first = peers._enhance(C, seed, ctx)
    emb = pca_embedding(first["matrix"], 50, transform=None, seed=seed)
    lab = partition(neighbor_graph(emb, 15), resolution, seed=seed).astype(str)
    ref = pseudobulk_reference(sp.csr_matrix(C), lab, var=ctx["var"])
    out = peers._enhance(C, seed, ctx, reference=ref)
    out["params"]["self_ref_clusters"] = int(len(np.unique(lab)))
    return out


peers.EXTRA_METHODS["cand: scCASE two-pass self-reference"] = m_two_pass


# scCASER at all cells of a donor: the reference's weight and the fit's length.  The default
# stops after 2 iterations (x_tol), so W's reference block stays near its start P whatever
# alpha is; these ask whether letting the fit run, or a pull that grows with the cells
# (the data term is a sum over cells, the pull is not), changes that.
def _sccaser(C, seed, ctx, **kw):
    if ctx.get("reference") is None:
        return {"skip": "no reference for this dataset"}
    return peers._enhance(C, seed, ctx, reference=ctx["reference"], **kw)


peers.EXTRA_METHODS.update({
    "cand: scCASER 30 iterations": lambda C, s, ctx: _sccaser(C, s, ctx, x_tol=0.0, max_iter=30),
    "cand: scCASER alpha n/2000": lambda C, s, ctx: _sccaser(C, s, ctx, alpha=C.shape[0] / 2000.0),
    "cand: scCASER alpha 0.1": lambda C, s, ctx: _sccaser(C, s, ctx, alpha=0.1),
})


# Is K the cause of scCASER's lower ARI on a whole donor?  scCASE at scCASER's K (21) and at
# one column per profile plus one (17); scCASER at 17 (the smallest K that keeps every
# profile: k1 = 16), 25 and 31, and with the reference compressed to the data's K (7, k1 6);
# and the stronger pull run to 30 iterations.
peers.EXTRA_METHODS.update({
    **{f"cand: scCASE K={k}": (lambda C, s, ctx, k=k: peers._enhance(C, s, ctx, n_components=k))
       for k in (21, 17)},
    **{f"cand: scCASER K={k}": (lambda C, s, ctx, k=k: _sccaser(C, s, ctx, n_components=k))
       for k in (17, 25, 31)},
    "cand: scCASER K=7 k_ref=6": lambda C, s, ctx: _sccaser(C, s, ctx, n_components=7, k_ref=6),
    "cand: scCASER alpha n/2000, 30 iterations": lambda C, s, ctx: _sccaser(
        C, s, ctx, alpha=C.shape[0] / 2000.0, x_tol=0.0, max_iter=30),
})
