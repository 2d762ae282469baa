"""Steady-state cost of one solver iteration against its unavoidable n x n x n product.

``z_step_ab.py`` and ``benchmark.py`` average whole fits, whose first (rough) iterations
take the paper's two-product Z step; this script times the iteration the default solver
runs once the moves are small.  It fits ``--warm`` iterations, then times the jitted
``solver.update`` from that state (``rough`` cleared, so ``z_step="auto"`` takes the free
step) and a reference ``G @ G`` in turn, best of ``--reps``, and prints their ratio.  With
``--profile`` it also traces three more updates with ``jax.profiler`` and lists the
compiled operations that took the most time (names from XLA's HLO, with the JAX operation
they come from), which is how the thin-product and gap passes of ``sccase_jax.ops`` were
found.

    python experiments/iteration_profile.py real2k synth2k synth4k
    python experiments/iteration_profile.py real2k --profile --top 25

Data: ``real2k`` as in ``z_step_ab.py`` (Granja D6T1 2k, package preprocessing, k = 6);
``synth1k`` ... ``synth8k`` with the cells x peaks of ``benchmark.py`` (``benchmark.SYNTH``:
8,000 x 40,000 before the peak filter at 8k, where ``z_step_ab.py`` takes 10 n peaks).
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))


def _top_ops(trace_dir, hlo, calls, top):
    files = glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True)
    events = json.load(gzip.open(max(files, key=os.path.getmtime)))["traceEvents"]
    # Compiled operations only: not the executor, thread-pool and Python events, nor the
    # control-flow ops (cond, while), whose time includes the operations inside them.
    skip = ("Execute", "Slinky", "Pjit", "Common")
    total = collections.Counter()
    count = collections.Counter()
    for e in events:
        name = e.get("name", "")
        if (e.get("ph") != "X" or any(s in name for s in skip)
                or name.startswith(("cond", "while", "$"))):
            continue
        total[name] += e.get("dur", 0)
        count[name] += 1
    rows = []
    for name, us in total.most_common(top):
        m = re.search(r"%" + re.escape(name) + r" = (\S+) [^\n]*?op_name=\"([^\"]*)\"", hlo)
        shape, op = (m.group(1), m.group(2)) if m else ("?", "?")
        rows.append(f"  {us / calls / 1e3:8.2f} ms  x{count[name] / calls:4.1f}  {name:30s} "
                    f"{shape[:24]:24s} {op[:70]}")
    listed = sum(total.values()) / calls / 1e3
    return rows, listed


def problem(name):
    import numpy as np

    from benchmark import SYNTH, synthetic_counts
    from sccase_jax.api import prepare
    from sccase_jax.preprocessing import preprocess
    from z_step_ab import problem as ab_problem

    if name not in SYNTH:
        return ab_problem(name)
    C, _ = synthetic_counts(*SYNTH[name])
    X, _, _ = preprocess(C.T.tocsr().astype(np.float64))
    return prepare(X, 9, seed=0)


def measure(name, warm, reps, profile, top):
    import jax
    import jax.numpy as jnp

    from sccase_jax.params import SolverConfig
    from sccase_jax.solver import init_state, matmul_precision, run, update

    prob = problem(name)
    out = run(prob.data, prob.factors, prob.hp, config=SolverConfig(max_iter=warm, tol=0.0))
    cfg = SolverConfig(max_iter=warm + 1, tol=0.0)
    G = prob.data.G
    with matmul_precision(cfg):  # the products' precision as in a fit (true float32 by default)
        state = init_state(prob.data, out.factors, prob.hp, cfg)
        state = state._replace(rough=jnp.asarray(False))
        step = jax.jit(lambda s: update(s, prob.data, prob.hp, cfg)).lower(state).compile()
        mm = jax.jit(lambda A: G @ A).lower(G).compile()
    best_it = best_mm = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(step(state))
        best_it = min(best_it, time.perf_counter() - t0)
        t0 = time.perf_counter()
        mm(G).block_until_ready()
        best_mm = min(best_mm, time.perf_counter() - t0)
    n = G.shape[0]
    k = prob.factors.H.shape[0]
    print(f"| {name} ({n} cells, k = {k}) | {best_it:.3g} | {best_mm:.3g} | "
          f"{best_it / best_mm:.2f} | {best_it - best_mm:.3g} |", flush=True)
    if profile:
        with tempfile.TemporaryDirectory() as d:
            jax.profiler.start_trace(d, create_perfetto_trace=True)
            for _ in range(3):
                jax.block_until_ready(step(state))
            jax.profiler.stop_trace()
            rows, listed = _top_ops(d, step.as_text(), 3, top)
        print(f"  per update, operations in the trace: {listed:.1f} ms", flush=True)
        print("\n".join(rows), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", nargs="+")
    ap.add_argument("--warm", type=int, default=15, help="iterations fitted before timing")
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--profile", action="store_true", help="also list the costliest operations")
    ap.add_argument("--top", type=int, default=20)
    a = ap.parse_args()
    print("| data | update s | matmul s | update / matmul | update - matmul s |")
    print("|---|---|---|---|---|")
    for name in a.data:
        measure(name, a.warm, a.reps, a.profile, a.top)


if __name__ == "__main__":
    main()
