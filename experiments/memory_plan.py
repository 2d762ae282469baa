"""XLA's buffer plan of the whole jitted fit, in units of one n x n float32 array.

Compiles ``solver.run_donated`` (nothing is run or timed) on the synthetic data of
``benchmark.py`` and prints ``compiled.memory_analysis()`` as ``experiments/benchmark.py``
reports it: ``temps`` (the working memory of the while-loop fit) and ``solver`` =
arguments + temps + outputs - donated, without X and without G (the input in Gram form;
not formed with ``--gram sparse``).

    python -m experiments.memory_plan                       # n = 1000 and 2000, defaults
    python -m experiments.memory_plan 4000 --config rescale_h=True --config guard=False
    python -m experiments.memory_plan 1000 --gram sparse    # X kept as BCOO, G never formed

Each ``--config key=value`` adds a row per size with that ``SolverConfig`` field changed.
"""

from __future__ import annotations

import argparse
import ast

from experiments.common import synthetic_counts


def plan(n: int, config: dict, gram: str = "dense") -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from sccase_jax.params import SolverConfig
    from sccase_jax.preprocessing import preprocess
    from sccase_jax.problem import prepare
    from sccase_jax.solver import run_donated

    C, _ = synthetic_counts(n, 10 * n)
    X, _, _ = preprocess(C.T.tocsr().astype(np.float64), min_cells_frac=0.01,
                         tfidf_variant="paper")
    prob = prepare(X, 9, gram=gram, dtype=jnp.float32, nmf_iter=5)
    ma = (
        run_donated.lower(prob.data, prob.factors, prob.hp, config=SolverConfig(**config))
        .compile()
        .memory_analysis()
    )
    nbytes = lambda a: sum(x.nbytes for x in jax.tree.leaves(a)) if a is not None else 0  # noqa: E731
    u = 4.0 * X.shape[1] ** 2
    total = (
        ma.argument_size_in_bytes + ma.temp_size_in_bytes + ma.output_size_in_bytes
        - ma.alias_size_in_bytes
    )
    return dict(
        cells=X.shape[1],
        X=nbytes(prob.data.X) / u,
        R=nbytes(prob.data.R) / u,
        temps=ma.temp_size_in_bytes / u,
        solver=(total - nbytes(prob.data.X) - nbytes(prob.data.G)) / u,
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sizes", nargs="*", type=int, default=[1000, 2000])
    ap.add_argument("--config", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--gram", choices=("dense", "sparse"), default="dense",
                    help="products through the formed G (default) or through sparse X")
    args = ap.parse_args()
    configs = [{}] + [
        {k: ast.literal_eval(v)} for k, v in (c.split("=", 1) for c in args.config)
    ]
    print("| cells | config | X | R | temps | solver without X and G |")
    print("|---|---|---|---|---|---|")
    for n in args.sizes:
        for cfg in configs:
            p = plan(n, cfg, args.gram)
            name = ", ".join(f"{k}={v}" for k, v in cfg.items()) or "defaults"
            name += ", gram=sparse" if args.gram == "sparse" else ""
            print(f"| {p['cells']} | {name} | {p['X']:.2f} | {p['R']:.2f} | "
                  f"{p['temps']:.2f} | {p['solver']:.2f} |")


if __name__ == "__main__":
    main()
