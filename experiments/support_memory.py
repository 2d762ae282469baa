"""XLA's memory plan of the jitted support-restricted fit: bytes per cell on a device.

Usage, from the repository root::

    python -m experiments.support_memory --cells 10000 40000 --support 30 100

Compiles the solver over terms (``sccase_jax.solver.over_terms.run``) on the support layout (float32, k = 10, X ``BCOO`` with 200 stored
entries per cell over 10,000 peaks: the Granja D6T1 density) for each size and support
and prints the plan's argument and temporary bytes (``compiled.memory_analysis()``), per
cell.  Arguments are the data (X, the support, its mask, the local Grams L) and the start;
temporaries are everything the fit allocates besides.  The plan is the CPU backend's; a
GPU's differs in detail, not in what scales with n.  Results in
``experiments/results/support_memory.json``.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from experiments.common import RESULTS


def plan(n: int, d: int, k: int = 10, m: int = 10_000, per_cell: int = 200) -> dict:
    import jax.numpy as jnp
    from jax.experimental import sparse as jsparse

    from sccase_jax.layout import SupportLayout
    from sccase_jax.params import Factors, Hyperparams, SolverConfig
    from sccase_jax.solver.over_terms import run
    from sccase_jax.terms import Objective, TermData, sccase_terms

    nnz = n * per_cell
    rng = np.random.default_rng(0)
    ind = np.stack([rng.integers(0, m, nnz), np.repeat(np.arange(n), per_cell)], 1)
    X = jsparse.BCOO((jnp.ones(nnz, jnp.float32), jnp.asarray(ind, jnp.int32)), shape=(m, n))
    idx = jnp.asarray(rng.integers(0, n, (n, d)), jnp.int32)
    layout = SupportLayout(idx, jnp.ones((n, d), bool), jnp.zeros((n, d, d), jnp.float32),
                           jnp.asarray(0.0, jnp.float32))
    data = TermData(X, P=jnp.zeros((m, k)), M=jnp.zeros(k))
    f = Factors(jnp.zeros((m, k)), jnp.zeros((k, n)), jnp.zeros((n, d)))
    objective = Objective(sccase_terms(Hyperparams.create()))
    ma = run.lower(objective, data, layout, f, SolverConfig()).compile().memory_analysis()
    arg, temp = ma.argument_size_in_bytes, ma.temp_size_in_bytes
    return dict(cells=n, support=d, k=k, nnz_per_cell=per_cell, argument_bytes=arg,
                temp_bytes=temp, argument_per_cell=round(arg / n), temp_per_cell=round(temp / n),
                total_per_cell=round((arg + temp) / n))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", type=int, nargs="+", default=[10_000, 40_000])
    ap.add_argument("--support", type=int, nargs="+", default=[30, 100])
    args = ap.parse_args()
    rows = [plan(n, d) for d in args.support for n in args.cells]
    for r in rows:
        print(json.dumps(r), flush=True)
    (RESULTS / "support_memory.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
