"""Per-iteration time of the three Z steps on the same data, in one process.

``SolverConfig(z_step=...)``: ``"gradient"`` (the paper's step, two n x n x n products),
``"free"`` (one product, the cache updated) and ``"auto"`` (the default: the paper's step
while the moves are large, then free).  Each fit runs a fixed number of iterations
(``tol = 0``) from the same start; the three compiled fits and a reference ``G @ G`` are
timed in turn, best of ``--reps``, so that the machine's load affects all alike.

    python -m experiments.archive.z_step_ab real2k synth1k synth2k --iters 30 --reps 3

``real2k``: Granja D6T1 2k with the package's preprocessing (L2 TF-IDF, no peak filter,
k = 6); ``synthN``: ``common.synthetic_counts`` at N cells and 10 N peaks (paper
preprocessing, k = 9; ``experiments.common.problem``).  Prints one line per data set;
output in experiments/results/z_step_ab.txt.
"""

from __future__ import annotations

import argparse
import time

from experiments.common import problem


def measure(name, iters, reps):
    import jax

    from sccase_jax.params import SolverConfig
    from sccase_jax.solver import run

    prob = problem(name, peaks_per_cell=None if name == "real2k" else 10)
    fits = {}
    for zs in ("gradient", "free", "auto"):
        cfg = SolverConfig(max_iter=iters, tol=0.0, z_step=zs)
        fits[zs] = run.lower(prob.data, prob.factors, prob.hp, config=cfg).compile()
    G = prob.data.G
    mm = jax.jit(lambda A: G @ A).lower(G).compile()
    best = dict.fromkeys([*fits, "matmul"], float("inf"))
    loss = {}
    for _ in range(reps):
        for zs, f in fits.items():
            t0 = time.perf_counter()
            out = f(prob.data, prob.factors, prob.hp)
            out.loss.block_until_ready()
            best[zs] = min(best[zs], (time.perf_counter() - t0) / iters)
            loss[zs] = float(out.loss[-1])
        t0 = time.perf_counter()
        mm(G).block_until_ready()
        best["matmul"] = min(best["matmul"], time.perf_counter() - t0)
    n = G.shape[0]
    cells = " | ".join(f"{best[z]:.3g}" for z in fits)
    ratios = " | ".join(f"{best[z] / best['matmul']:.2f}" for z in fits)
    print(f"| {name} ({n} cells, {iters} it.) | {cells} | {best['matmul']:.3g} | {ratios} | "
          f"{best['gradient'] / best['auto']:.2f}x | "
          f"{max(abs(loss[z] / loss['gradient'] - 1) for z in fits):.1e} |", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", nargs="+")
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args()
    print("| data | gradient s/it | free s/it | auto s/it | matmul s | gradient / matmul | "
          "free / matmul | auto / matmul | gradient / auto | final F rel. diff |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in a.data:
        measure(name, a.iters, a.reps)


if __name__ == "__main__":
    main()
