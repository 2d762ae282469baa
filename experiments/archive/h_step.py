"""H step: backtracking (paper) vs the exact quartic line minimiser, on real data.

For each dataset the start (NMF, Jaccard Z0, mask R) is built once with
``sccase_jax.problem.prepare`` and both solvers run from it with the same settings; the jitted
solver is compiled first, then timed on a second call.  Reported per run: iterations,
stopping status, final F, wall time (and per iteration), and the iterations / time each
needed to get within ``--target`` (relative) of the lower of the two final F values.

Usage, from the repository root (data from ``$SCCASE_DATA``, ``experiments.common``)::

    python -m experiments.archive.h_step [--max-iter 100] [--out h_step.json]

Data: Granja et al. 2019 bone marrow scATAC (``granja2019_bm600``, ``granja2019_D6T1_2k``),
not the paper's datasets.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax
import numpy as np

from experiments.common import load
from sccase_jax.params import SolverConfig
from sccase_jax.preprocessing import preprocess
from sccase_jax.problem import prepare
from sccase_jax.solver import run

DATASETS = {"granja2019_bm600": 6, "granja2019_D6T1_2k": 16}  # name -> number of cell types


def timed(data, f0, hp, cfg):
    t0 = time.perf_counter()
    jax.block_until_ready(run(data, f0, hp, cfg))
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    res = jax.block_until_ready(run(data, f0, hp, cfg))
    return res, time.perf_counter() - t0, compile_s


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", nargs="*", default=list(DATASETS))
    ap.add_argument("--max-iter", type=int, default=100)
    ap.add_argument("--tol", type=float, default=1e-6)
    ap.add_argument("--lam", type=float, default=1e6)
    ap.add_argument("--target", type=float, default=1e-4)
    ap.add_argument("--x64", action="store_true", help="compute in float64")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.x64:
        jax.config.update("jax_enable_x64", True)

    rows = []
    for name in args.datasets:
        adata = load(name)
        # The paper's preprocessing: peak filter (>= 1 % of cells), Eq. 1 TF-IDF.
        X, _, _ = preprocess(adata.X.T, min_cells_frac=0.01, tfidf_variant="paper")
        k = DATASETS.get(name, 10) + 1  # the released code's k + 1 rule
        prob = prepare(X, k, lam=args.lam, seed=0)
        runs = {}
        for h_step in ("backtrack", "exact"):
            cfg = SolverConfig(max_iter=args.max_iter, tol=args.tol, h_step=h_step)
            res, secs, compile_s = timed(prob.data, prob.factors, prob.hp, cfg)
            n = int(res.n_iter)
            runs[h_step] = (res, secs, compile_s, np.asarray(res.loss, np.float64)[:n])
        best = min(float(r[3][-1]) for r in runs.values())
        for h_step, (res, secs, compile_s, hist) in runs.items():
            n = len(hist)
            hit = np.nonzero(hist <= best + args.target * abs(best))[0]
            it_target = int(hit[0]) + 1 if hit.size else None
            row = dict(
                dataset=name, cells=X.shape[1], peaks=X.shape[0], k=k, h_step=h_step,
                dtype=str(prob.hp.lam.dtype), n_iter=n, status=int(res.status),
                initial_F=float(res.initial_loss), final_F=float(hist[-1]),
                seconds=round(secs, 3), compile_s=round(compile_s, 2),
                s_per_iter=round(secs / max(n, 1), 4), iters_to_target=it_target,
                s_to_target=None if it_target is None else round(secs / n * it_target, 3),
            )
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
