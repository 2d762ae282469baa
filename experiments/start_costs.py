"""What the stages before the iterations cost, each way they can be computed.

On the preprocessed X (L2 TF-IDF, peaks x cells) of each dataset, best of ``--repeats``
after a warm-up call, in this process:

- ``G = X^T X`` and the Jaccard intersections: scipy sparse products on the host
  (``start.gram_matrix``, ``start.jaccard_similarity``), or dense products on the device
  (``start.gram_matrix_device``, ``start.jaccard_similarity_device``, X dense there);
- the thin products of the NMF and the iterations, ``X A`` (n x k) and ``W^T X`` (m x k),
  with X dense or ``BCOO`` on the device, and scipy's on the host;
- one HALS sweep of the NMF start (the time of 20 sweeps / 20), dense or ``BCOO`` X;
- the PCA of the k estimate: scikit-learn's ARPACK PCA of the cells, or the top
  eigenvectors of the centred cell Gram matrix (from G).

    python -m experiments.start_costs real2k realistic:2000:10000 realistic:2000:120000

``realistic:CELLS:PEAKS`` are the semi-synthetic counts of ``experiments.realistic``
(seed 0, 4,000 open peaks a cell at 120,000 peaks; the 10,000-peak one is the same cells on
a random tenth of the peaks).  Results: ``experiments/results/start_costs.json``.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import scipy.sparse as sp

from experiments.common import REAL, RESULTS, load

K = 10


def counts(spec: str):
    """Cells x peaks counts of a named dataset or a ``realistic:CELLS:PEAKS`` spec."""
    if spec.startswith("realistic:"):
        from experiments.realistic import realistic_counts

        _, n, m = spec.split(":")
        n, m = int(n), int(m)
        if m < 120_000:  # the same cells on a random subset of the 120,000 peaks
            a = realistic_counts(n, 120_000, 4000.0, seed=0)
            idx = np.sort(np.random.default_rng(1).choice(a.n_vars, m, replace=False))
            return sp.csr_matrix(a.X[:, idx])
        return sp.csr_matrix(realistic_counts(n, m, 4000.0, seed=0).X)
    return sp.csr_matrix(load(REAL.get(spec, spec)).X)


def best(fn, repeats):
    import jax

    jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
    return min(times)


def measure(spec: str, repeats: int) -> dict:
    import jax
    import jax.numpy as jnp

    from sccase_jax.evaluation.clustering import pca_embedding
    from sccase_jax.ops import wt_x, x_matmul
    from sccase_jax.preprocessing import preprocess
    from sccase_jax.problem import device_matrix
    from sccase_jax.start import (
        gram_matrix,
        gram_matrix_device,
        jaccard_similarity,
        jaccard_similarity_device,
        nmf,
    )

    X, _, _ = preprocess(counts(spec).T.tocsr())
    m, n = X.shape
    row = dict(data=spec, peaks=m, cells=n, nnz=int(X.nnz), density=X.nnz / (m * n),
               pairs=int(np.sum(np.diff(X.tocsr().indptr).astype(np.float64) ** 2)))
    print(f"{spec}: {m} x {n}, nnz {X.nnz}, density {row['density']:.4f}, "
          f"sum of squared peak counts {row['pairs']:.3g}", flush=True)
    rng = np.random.default_rng(0)
    A = jnp.asarray(rng.random((n, K)), jnp.float32)
    W = jnp.asarray(rng.random((m, K)), jnp.float32)
    key = jax.random.PRNGKey(0)
    r = {}
    r["G host (scipy)"] = best(lambda: gram_matrix(X), repeats)
    r["Jaccard host (scipy)"] = best(lambda: jaccard_similarity(X), repeats)
    Xs = device_matrix(X, np.float32, "sparse")
    if m * n <= 400_000_000:
        Xd = device_matrix(X, np.float32, "dense")
        r["G device (dense X)"] = best(lambda: gram_matrix_device(Xd), repeats)
        r["Jaccard device (dense X)"] = best(lambda: jaccard_similarity_device(Xd), repeats)
        r["X A dense"] = best(lambda: jax.jit(x_matmul)(Xd, A), repeats)
        r["W^T X dense"] = best(lambda: jax.jit(wt_x)(Xd, W), repeats)
        r["NMF sweep dense"] = best(lambda: nmf(Xd, K, key, 20, trace=True)[1], 1) / 20
        del Xd
    r["X A BCOO"] = best(lambda: jax.jit(x_matmul)(Xs, A), repeats)
    r["W^T X BCOO"] = best(lambda: jax.jit(wt_x)(Xs, W), repeats)
    r["NMF sweep BCOO"] = best(lambda: nmf(Xs, K, key, 20, trace=True)[1], 1) / 20
    Xc, Xt, An, Wn = X.tocsr().astype(np.float32), X.T.tocsr().astype(np.float32), np.asarray(A), np.asarray(W)
    r["X A scipy"] = best(lambda: Xc @ An, repeats)
    r["W^T X scipy"] = best(lambda: Xt @ Wn, repeats)
    M = X.T.tocsr()
    r["PCA 20 ARPACK"] = best(lambda: pca_embedding(M, 20, transform=None), repeats)
    G = gram_matrix(X, np.float64)
    r["PCA 20 from G"] = best(lambda: _pca_from_gram(G, 20), repeats)
    row["seconds"] = r
    for k_, v in r.items():
        print(f"  {k_:28s} {v:8.3f} s", flush=True)
    return row


def _pca_from_gram(G, n_pcs):
    from sccase_jax.estimate import pca_from_gram

    return pca_from_gram(G, n_pcs)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", nargs="+")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args(argv)
    rows = [measure(s, args.repeats) for s in args.data]
    path = RESULTS / "start_costs.json"
    old = json.loads(path.read_text()) if path.exists() else []
    keep = [o for o in old if o["data"] not in {r["data"] for r in rows}]
    path.write_text(json.dumps(keep + rows, indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
