"""Steady-state cost of one solver iteration against its unavoidable n x n x n product.

``benchmark.py`` averages whole fits, whose first (rough) iterations take the paper's
two-product Z step; this script times the iteration the default solver runs once the moves
are small.  It fits ``--warm`` iterations, then measures from that
state, best of ``--reps``, two ways:

- **in a fit** (the figure that matters): ``--loop N`` more iterations inside one jitted
  ``solver.run`` (the time of a run of 1 + N iterations minus that of a run of 1; the
  first iteration of a run takes the paper's step, the others the free step), against N
  products ``G @ A`` in one ``lax.fori_loop`` (G scaled by its largest eigenvalue so the
  iterates neither overflow nor decay), or one ``G @ G`` if that was faster.  Inside one
  execution every n x n buffer is reused from one iteration to the next;
- **one update**: the jitted ``solver.update`` alone (``rough`` cleared, so
  ``z_step="auto"`` takes the free step) against one ``G @ G``.  Each call's fresh
  n x n output and temporary buffers are new memory to the operating system from about
  4,000 cells on (glibc serves allocations above its mmap threshold, at most 32 MB, with
  fresh pages): at 4,000 cells a plain pass ``Z + 1`` took 31 ms as a call of its own and
  9 ms a pass inside a loop, so this figure overstates the iteration there.

With ``--floor`` it also times, interleaved with the above, the skeleton iteration of
``iteration_floor.py`` on the same G, X, mask and start (the product, the thin products
and the fewest n x n passes any implementation of the iteration makes) in the same way
(a loop of 1 + N minus a loop of 1): the last columns give the floor of the in-fit ratio on
this machine.  With
``--profile`` it also traces three more updates with ``jax.profiler`` and lists the
compiled operations that took the most time (names from XLA's HLO, with the JAX operation
they come from).

    python -m experiments.iteration_profile real2k synth2k synth4k
    python -m experiments.iteration_profile real2k --profile --top 25
    python -m experiments.iteration_profile real2k synth4k --floor --reps 5

Data (``experiments.common.problem``): ``real2k`` is Granja D6T1 2k with the package's
preprocessing, k = 6; ``synth1k`` ... ``synth8k`` the synthetic counts of ``benchmark.py``
at its sizes (``common.SYNTH``: 8,000 x 40,000 before the peak filter at 8k), k = 9.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import tempfile
import time

from experiments.common import problem


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


def _timed(f, *args):
    import jax

    t0 = time.perf_counter()
    jax.block_until_ready(f(*args))
    return time.perf_counter() - t0


def _floor_columns(best, loop, mm):
    """Skeleton iteration in a loop, its ratio to the product, its cost besides the product
    and the part of that cost that is the two passes over X (differences of loops)."""
    it = {v: (best[v, 1 + loop] - best[v, 1]) / loop for v in ("sk", "sk_noprod", "sk_nox")}
    return (f" {it['sk']:.3g} | {it['sk'] / mm:.2f} | {it['sk_noprod']:.3g} | "
            f"{it['sk'] - it['sk_nox']:.3g} |")


def measure(name, warm, reps, profile, top, loop, floor=False):
    import jax
    import jax.numpy as jnp
    from jax import lax

    from sccase_jax.params import SolverConfig
    from sccase_jax.solver import init_state, matmul_precision, run, update

    prob = problem(name)
    out = run(prob.data, prob.factors, prob.hp, config=SolverConfig(max_iter=warm, tol=0.0))
    f0 = out.factors
    cfg = SolverConfig(max_iter=warm + 1, tol=0.0)
    one, more = SolverConfig(max_iter=1, tol=0.0), SolverConfig(max_iter=1 + loop, tol=0.0)
    G = prob.data.G
    # Largest eigenvalue of G by a few power steps, so that N products stay of order one.
    v = jnp.ones((G.shape[0],), G.dtype)
    for _ in range(20):
        v = G @ v
        v = v / jnp.linalg.norm(v)
    Gs = G / jnp.vdot(v, G @ v)
    with matmul_precision(cfg):  # the products' precision as in a fit (true float32 by default)
        state = init_state(prob.data, f0, prob.hp, cfg)
        state = state._replace(rough=jnp.asarray(False))
        step = jax.jit(lambda s: update(s, prob.data, prob.hp, cfg)).lower(state).compile()
        mm = jax.jit(lambda A: G @ A).lower(G).compile()
        mm_loop = jax.jit(
            lambda A: lax.fori_loop(0, loop, lambda i, B: Gs @ B, A)
        ).lower(Gs).compile()
    run_one = run.lower(prob.data, f0, prob.hp, config=one).compile()
    run_more = run.lower(prob.data, f0, prob.hp, config=more).compile()
    best = dict(it=float("inf"), mm=float("inf"), one=float("inf"), more=float("inf"),
                loop=float("inf"))
    # The skeleton (iteration_floor.py) whole, without its product, without its X passes.
    variants = {"sk": {}, "sk_noprod": dict(product=False), "sk_nox": dict(x_passes=False)}
    sk = {}
    if floor:
        from experiments.iteration_floor import skeleton

        sk_args = (G, prob.data.X, prob.data.R, f0.Z, state.GS, f0.W, f0.H)
        with matmul_precision(cfg):
            for v, kw in variants.items():
                for it in (1, 1 + loop):
                    sk[v, it] = skeleton.lower(*sk_args, iters=it, **kw).compile()
                    best[v, it] = float("inf")
    for _ in range(reps):
        for key, f in sk.items():
            best[key] = min(best[key], _timed(f, *sk_args))
        best["one"] = min(best["one"], _timed(run_one, prob.data, f0, prob.hp))
        best["more"] = min(best["more"], _timed(run_more, prob.data, f0, prob.hp))
        best["loop"] = min(best["loop"], _timed(mm_loop, Gs))
        best["it"] = min(best["it"], _timed(step, state))
        best["mm"] = min(best["mm"], _timed(mm, G))
    n = G.shape[0]
    k = prob.factors.H.shape[0]
    fit_it = (best["more"] - best["one"]) / loop
    # The product's time: the faster of the in-loop and the single measurement (this
    # machine's noise made either the slower one at times), so the ratio is not flattered.
    fit_mm = min(best["loop"] / loop, best["mm"])
    print(f"| {name} ({n} cells, k = {k}) | {fit_it:.3g} | {fit_mm:.3g} | "
          f"{fit_it / fit_mm:.2f} | {best['it']:.3g} | {best['mm']:.3g} | "
          f"{best['it'] / best['mm']:.2f} |" + (_floor_columns(best, loop, fit_mm) if floor else ""),
          flush=True)
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
    ap.add_argument("--loop", type=int, default=10,
                    help="iterations (and products) timed inside one execution")
    ap.add_argument("--profile", action="store_true", help="also list the costliest operations")
    ap.add_argument("--floor", action="store_true",
                    help="also time iteration_floor.py's skeleton iteration on the same data")
    ap.add_argument("--top", type=int, default=20)
    a = ap.parse_args()
    print("| data | in a fit: iteration s | product s | ratio | one update s | one product s "
          "| ratio |" + (" skeleton iteration s | skeleton / product | skeleton besides the "
                         "product s | of which the passes over X s |" if a.floor else ""))
    print("|---|---|---|---|---|---|---|" + ("---|---|---|---|" if a.floor else ""))
    for name in a.data:
        measure(name, a.warm, a.reps, a.profile, a.top, a.loop, a.floor)


if __name__ == "__main__":
    main()
