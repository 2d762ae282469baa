"""scCASER with the batch term and the depth term on the knn support, at over 14,000 cells.

One whole ``enhance`` in a fresh process (wall time from spawn to exit, peak RSS of that
process): ``reference`` = the D5T1 pseudo-bulk (16 profiles of another donor),
``batch_key="batch", batch_method="term"``, ``correct_depth=True``, ``z_support="auto"``
(the support above 5,000 cells: 30 candidates a cell), k given (21, the README's scCASER
example), every other option at its default.  Then the clustering of the enhanced layer
(computed on demand from the stored weights: PCA 50 through products, Leiden searched to
the 16 types, seed 0) and of H^T, and the batch scores of the layer's PCA.

Data: all 10,335 cells of donor D6T1 (batch "D6T1") plus a seeded random 4,000 of them again
with each read kept with probability 0.5 (binomial thinning, seed 0; batch "thinned"):
14,335 cells x 10,000 peaks.  The second batch is a shallower technical copy of cells of the
first, not another donor (the shared data hold one donor's single cells); its cells keep
their labels.

    python -m experiments.support_terms_scale [--thinned 4000] [--max-iter 30]
    python -m experiments.support_terms_scale --variant plain   # scCASE alone, for comparison

``--variant plain`` runs the same ``enhance`` without the reference, the batch term and the
depth term (the same solver over terms, scCASE's terms alone).  Result:
``experiments/results/support_terms_scale.json`` (one row per variant; a rerun replaces it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np
import scipy.sparse as sp

from experiments.common import D5T1_PSEUDOBULK, D6T1_10K, RESULTS, ROOT, load

PATH = RESULTS / "support_terms_scale.json"

CHILD = """
import sys, time, json
import anndata as ad
import sccase_jax
t0 = time.perf_counter()
a = ad.read_h5ad(sys.argv[1])
ref = ad.read_h5ad(sys.argv[2])
kw = json.loads(sys.argv[4])
terms = kw.pop("terms")
out = sccase_jax.enhance(a, reference=ref if terms else None, **kw)
fit_s = time.perf_counter() - t0
out.write_h5ad(sys.argv[3])
u = out.uns["sccase"]
print(json.dumps(dict(seconds=time.perf_counter() - t0, enhance_s=fit_s, n_iter=int(u["n_iter"]),
                      status=str(u["status"]), k=int(u["params"]["n_components"]),
                      k_ref=int(u["params"].get("k_ref") or 0), z_support=u["params"]["z_support"],
                      gram=u["params"]["gram"], loss=float(u["loss"][-1]),
                      initial_loss=float(u["initial_loss"]), layer=u["layer"])))
"""


def dataset(thinned: int, keep: float = 0.5):
    import anndata as ad

    a = load(D6T1_10K)
    a.X = sp.csr_matrix(a.X)
    rng = np.random.default_rng(0)
    pick = np.sort(rng.choice(a.n_obs, thinned, replace=False))
    B = a.X[pick].copy()
    B.data = rng.binomial(B.data.astype(np.int64), keep).astype(np.float32)
    B.eliminate_zeros()
    b = ad.AnnData(B, obs=a.obs.iloc[pick].copy(), var=a.var.copy())
    b.obs_names = [f"{s}_thinned" for s in b.obs_names]
    a.obs["batch"], b.obs["batch"] = "D6T1", "thinned"
    c = ad.concat([a, b], merge="same")
    c.obs["batch"] = c.obs["batch"].astype("category")
    return c


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--thinned", type=int, default=4000)
    ap.add_argument("--max-iter", type=int, default=30)
    ap.add_argument("--k", type=int, default=21)
    ap.add_argument("--variant", choices=("terms", "plain"), default="terms")
    ap.add_argument("--log", default=os.path.join(tempfile.gettempdir(), "support_terms_scale.log"),
                    help="the run's progress lines (stderr), as they come")
    args = ap.parse_args(argv)
    import anndata as ad

    from sccase_jax import tl
    from sccase_jax.evaluation.batch import batch_scores
    from sccase_jax.evaluation.clustering import evaluate_clustering

    a = dataset(args.thinned)
    labels = a.obs["cell_type"].astype(str).to_numpy()
    terms = args.variant == "terms"
    kw = dict(n_components=args.k, z_support="auto", seed=0, max_iter=args.max_iter,
              progress=True)
    if terms:
        kw.update(batch_key="batch", batch_method="term", correct_depth=True)
    with tempfile.TemporaryDirectory() as tmp:
        src, ref, out = (os.path.join(tmp, f) for f in ("in.h5ad", "ref.h5ad", "out.h5ad"))
        a.write_h5ad(src)
        load(D5T1_PSEUDOBULK).write_h5ad(ref)
        env = dict(os.environ, SCCASE_JAX_CACHE="off")
        t = time.perf_counter()
        with open(args.log, "w") as log:
            p = subprocess.Popen([sys.executable, "-c", CHILD, src, ref, out, json.dumps(dict(kw, terms=terms))],
                                 cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=log)
            stdout, _ = p.communicate()
        wall = time.perf_counter() - t
        with open(args.log) as log:
            stderr = log.read()
        if p.returncode:
            raise RuntimeError(stderr[-3000:])
        row = json.loads(stdout.decode().strip().splitlines()[-1])
        row["log"] = [s for s in stderr.splitlines() if s.strip()][-40:]
        e = ad.read_h5ad(out)
        t = time.perf_counter()
        layer = evaluate_clustering(tl.enhanced_matrix(e), labels, transform=None, seeds=(0,))
        h = evaluate_clustering(np.asarray(e.obsm["X_sccase"]), labels, transform=None,
                                n_pcs=min(50, args.k - 1), seeds=(0,))
        bs = batch_scores(layer["embedding"], e.obs["batch"].to_numpy(), labels)
        score_s = time.perf_counter() - t
    import resource

    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20  # the child's, GB
    row.update(variant=args.variant, cells=int(a.n_obs), peaks=int(a.n_vars), thinned=args.thinned,
               options={k: v for k, v in kw.items() if k != "progress"},
               reference=D5T1_PSEUDOBULK if terms else None, wall_s=wall, peak_rss_gb=rss,
               layer_ari=layer["ari"], layer_ami=layer["ami"], h_ari=h["ari"], h_ami=h["ami"],
               batch={k: float(v) for k, v in bs.items()}, score_s=score_s,
               machine=dict(cpus=os.cpu_count(), platform=platform.platform(),
                            note="2-core CPU shared with another engineer's benchmarks"))
    rows = json.loads(PATH.read_text()) if PATH.exists() else []
    rows = [r for r in rows if r.get("variant") != args.variant] + [row]
    PATH.write_text(json.dumps(rows, indent=1) + "\n")
    print(json.dumps({k: v for k, v in row.items() if k != "log"}, indent=1))


if __name__ == "__main__":
    main()
