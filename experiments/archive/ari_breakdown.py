"""Where D6T1's ARI is won and lost: the scores on groups of types (issue 5, results.md item 13).

For ``granja2019_D6T1_2k`` (16 labelled types), raw TF-IDF (L2 and Eq. 1) and the enhanced
matrix (the blend over all cells and the default, ``neighbors=300``; enhancement seeds 0-2, K estimated) are
clustered as in ``quality.py`` (PCA(50) -> UMAP 15-NN graph -> Leiden searched to 16
clusters, Leiden seeds 0-2), and each clustering is scored

- against the 16 labels (the issue's target, as in docs/results.md);
- against coarse labels: the four naive/memory T-cell types (CD8.N, CD4.N1, CD4.N2, CD4.M)
  as one, and the two CD14 monocyte types as one;
- within the T-cell types (ARI of the labels of those cells against their clusters);
- on the other cells (ARI and AMI on the cells outside those four T-cell types);
- per type, the share of its cells in the cluster that holds most of them (1 = kept whole).

    python -m experiments.archive.ari_breakdown   # output: docs/results_raw/ari_breakdown.txt
"""
import warnings

import numpy as np
import scipy.sparse as sp
from sklearn.metrics import adjusted_mutual_info_score as ami
from sklearn.metrics import adjusted_rand_score as ari

from experiments.common import D6T1_2K, load
from experiments.quality import fit_for_outputs
from sccase_jax.evaluation.clustering import cluster_to_k, neighbor_graph, pca_embedding
from sccase_jax.output import enhanced_matrix, output_weights

T_CELLS = {"19_CD8.N", "20_CD4.N1", "21_CD4.N2", "22_CD4.M"}
MONO = {"11_CD14.Mono.1", "12_CD14.Mono.2"}
COLUMNS = ("ARI", "AMI", "coarse ARI", "coarse AMI", "within-T ARI", "other ARI", "other AMI")


def scores(emb, lab):
    coarse = np.array(["T" if t in T_CELLS else "Mono" if t in MONO else t for t in lab])
    in_t = np.isin(lab, list(T_CELLS))
    graph = neighbor_graph(emb, 15)
    k = len(set(lab))
    out, whole = [], []
    for s in (0, 1, 2):
        cl = np.asarray(cluster_to_k(graph, k, seed=s).labels)
        out.append((ari(lab, cl), ami(lab, cl), ari(coarse, cl), ami(coarse, cl),
                    ari(lab[in_t], cl[in_t]), ari(lab[~in_t], cl[~in_t]), ami(lab[~in_t], cl[~in_t])))
        whole.append({t: np.unique(cl[lab == t], return_counts=True)[1].max() / np.sum(lab == t)
                      for t in sorted(set(lab))})
    return out, whole


def main():
    warnings.simplefilter("ignore")
    a = load(D6T1_2K)
    a.X = sp.csr_matrix(a.X)
    lab = a.obs["cell_type"].astype(str).to_numpy()
    res, whole = {}, {}
    for v in ("paper", "l2"):
        res[f"raw {v} TF-IDF"], whole[f"raw {v} TF-IDF"] = scores(
            pca_embedding(a.X, 50, transform="tfidf", tfidf_variant=v), lab)
    for s in (0, 1, 2):
        out, X, Z, labs = fit_for_outputs(a, s)
        for nm, N in (("blend, all cells", None), ("default (neighbors=300)", 300)):
            E = enhanced_matrix(X, np.asarray(output_weights(Z, "blend", 0.8, neighbors=N), np.float32))
            sc, wh = scores(pca_embedding(E, 50, transform=None), labs)
            res.setdefault(nm, []).extend(sc)
            whole.setdefault(nm, []).extend(wh)
        print(f"enhancement seed {s} done (k = {out.obsm['X_sccase'].shape[1]})", flush=True)
    print("mean over enhancement seeds 0-2 (enhanced) and Leiden seeds 0-2")
    print("| matrix | " + " | ".join(COLUMNS) + " |")
    print("|---" * (len(COLUMNS) + 1) + "|")
    for nm, v in res.items():
        print(f"| {nm} | " + " | ".join(f"{x:.3f}" for x in np.mean(v, axis=0)) + " |")
    print("\nshare of a type's cells in its largest cluster (same clusterings), and its size")
    names = list(whole)
    print("| type | cells | " + " | ".join(names) + " |")
    print("|---" * (len(names) + 2) + "|")
    sizes = dict(zip(*np.unique(lab, return_counts=True)))
    for t in sorted(sizes):
        print(f"| {t} | {sizes[t]} | " + " | ".join(f"{np.mean([w[t] for w in whole[nm]]):.2f}" for nm in names) + " |")


if __name__ == "__main__":
    main()
