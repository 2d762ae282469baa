"""Scale of the support-restricted fit on this machine: 2k to 100k cells.

Usage, from the repository root::

    python -m experiments.support_scale --cells 2000 10000 30000 100000
    python -m experiments.support_scale --report

Each size runs in a fresh subprocess (its peak RSS is the process's own, from
``resource.getrusage``).  Data: the Granja 2019 D6T1 10k counts (10,335 cells x 10,000
peaks); sizes up to 10,335 take the first cells, larger ones replicate every cell with
seeded binomial read down-sampling (each replicate keeps each read with probability 0.8,
seed = the replicate's number), written to an ``.h5ad`` in ``$TMPDIR`` and read back in
backed mode, in row chunks, so the raw matrix is never dense.  The fit is
``sccase_jax.fit(X, k, z_support="knn")`` on the package's preprocessing (L2 TF-IDF), with
``tol`` 1e-6 and the iteration cap of ``--max-iter``; reported: the stages' times, seconds
per iteration (median over the iterations after the first, which compiles), iterations,
status, peak RSS.  Results in ``experiments/results/support_scale.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

from experiments.common import D6T1_10K, RESULTS, data_path

OUT = RESULTS / "support_scale.json"
CHUNK = 10_000  # cells read at a time from the backed file


def replicated_file(n: int, keep: float = 0.8) -> str:
    """An .h5ad of ``n`` cells: the D6T1 10k cells, then binomially down-sampled copies."""
    import anndata as ad
    import scipy.sparse as sp

    path = os.path.join(tempfile.gettempdir(), f"sccase_scale_{n}.h5ad")
    if os.path.exists(path):
        return path
    base = ad.read_h5ad(data_path(D6T1_10K), backed="r")
    C = sp.csr_matrix(base.X[:], dtype=np.float32)
    parts, have, rep = [], 0, 0
    while have < n:
        take = min(n - have, C.shape[0])
        B = C[:take].copy()
        if rep:
            rng = np.random.default_rng(rep)
            B.data = rng.binomial(B.data.astype(np.int64), keep).astype(np.float32)
            B.eliminate_zeros()
        parts.append(B)
        have += take
        rep += 1
    X = sp.vstack(parts).tocsr()
    ad.AnnData(X=X, var=base.var.copy()).write_h5ad(path)
    return path


def read_counts(path: str):
    """Cells x peaks CSR from a backed .h5ad, ``CHUNK`` rows at a time (never dense)."""
    import anndata as ad
    import scipy.sparse as sp

    a = ad.read_h5ad(path, backed="r")
    blocks = [sp.csr_matrix(a.X[i : i + CHUNK]) for i in range(0, a.n_obs, CHUNK)]
    return sp.vstack(blocks).tocsr()


def measure(n: int, k: int, d: int, max_iter: int) -> dict:
    """One size, in this process."""
    import jax

    jax.config.update("jax_platforms", "cpu")
    import sccase_jax
    from sccase_jax import progress
    from sccase_jax.options import Options
    from sccase_jax.solver.over_terms import run_reporting
    from sccase_jax.support.fit import prepare_support

    t0 = time.perf_counter()
    path = replicated_file(n) if n > 10_335 else str(data_path(D6T1_10K))
    C = read_counts(path)[:n]
    t_read = time.perf_counter() - t0
    X, _, _ = sccase_jax.preprocess(C.T.tocsr())
    t1 = time.perf_counter()
    opts = Options(progress=True, tol=1e-6, max_iter=max_iter).resolved()
    prob = prepare_support(X, k, opts, n_neighbors=d)
    t_start = time.perf_counter() - t1
    from sccase_jax.fitting import solver_config

    config = solver_config(opts)._replace(progress=False)
    stamps = [time.perf_counter()]
    reporter = progress.Reporter(config.max_iter)

    def report(state):
        stamps.append(time.perf_counter())
        reporter(state)

    res = run_reporting(*prob, config, report).fetch()
    per_iter = np.diff(stamps)
    return dict(cells=n, peaks=int(X.shape[0]), nnz=int(X.nnz), k=k, support=d,
                read_s=round(t_read, 1), start_s=round(t_start, 1),
                first_iter_s=round(float(per_iter[0]), 2) if per_iter.size else None,
                s_per_iter=round(float(np.median(per_iter[1:])), 3) if per_iter.size > 1 else None,
                n_iter=res.n_iter, status=str(res.status), F=res.final_loss,
                fit_s=round(stamps[-1] - stamps[0], 1), total_s=round(time.perf_counter() - t0, 1),
                peak_rss_gb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2))


def report() -> str:
    rows = json.loads(OUT.read_text())
    lines = ["| cells | peaks | nnz(X) | support | peak RSS (GB) | s / iteration | iterations "
             "| status | start (s) | fit (s) | total (s) |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["cells"], r["support"])):
        lines.append(f"| {r['cells']:,} | {r['peaks']:,} | {r['nnz']:,} | {r['support']} | "
                     f"{r['peak_rss_gb']} | {r['s_per_iter']} | {r['n_iter']} | {r['status']} | "
                     f"{r['start_s']} | {r['fit_s']} | {r['total_s']} |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", type=int, nargs="+", default=[2000, 10000, 30000, 100000])
    ap.add_argument("--k", type=int, default=6)
    ap.add_argument("--support", type=int, default=30)
    ap.add_argument("--max-iter", type=int, default=200)
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--report", action="store_true")
    args = ap.parse_args()
    if args.report:
        print(report())
        return
    if args.one:
        print(json.dumps(measure(args.cells[0], args.k, args.support, args.max_iter)))
        return
    rows = json.loads(OUT.read_text()) if OUT.exists() else []
    for n in args.cells:
        cmd = [sys.executable, "-m", "experiments.support_scale", "--one", "--cells", str(n),
               "--k", str(args.k), "--support", str(args.support), "--max-iter", str(args.max_iter)]
        out = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=True)
        row = json.loads(out.stdout.strip().splitlines()[-1])
        rows = [r for r in rows if (r["cells"], r["support"]) != (n, args.support)] + [row]
        OUT.write_text(json.dumps(rows, indent=1))
        print(json.dumps(row), flush=True)
    print(report())


if __name__ == "__main__":
    main()
