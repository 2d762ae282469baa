"""When has a fit's answer settled?  Per-iteration change of what the output is built from,
and the clustering of the default output after t iterations.

For each dataset and enhancement seed: the default preprocessing (L2 TF-IDF) and k (the
estimate + 1), then the default dense solver run iteration by iteration on the host
(the same jitted ``update`` as a fit), recording after each iteration

- F and ``|dF| / |F|`` (the paper's rule),
- ``||dW|| / ||W||``, ``||dH|| / ||H||`` and ``||dZ|| / ||Z||`` (the relative change of the iterate),
- ``||dB|| / ||B||`` of the default output weights B (each cell's 300 largest weights of Z,
  columns scaled, blended 0.2 / 0.8 with the cell itself) against the previous iteration,
  and ``||B_t - B_last|| / ||B_last||`` against the last one;

and the clustering of the default enhanced layer (Leiden searched to the number of types on
PCA 50, Leiden seeds 0, 1, 2) at the iterations in ``--at``.  With ``--support D`` the same
for the fit with Z restricted to D candidates per cell (``z_support="knn"``).

    python -m experiments.stopping --dataset granja2019_D6T1_2k --seeds 0 1 2
    python -m experiments.stopping --summary       # the table in docs/model.md, "Stopping"
    python -m experiments.stopping --report        # every iteration

Results: ``experiments/results/stopping_<dataset>[_support<D>].json``.  Data: Granja 2019
bone marrow, chromVAR's example and cells simulated from Corces 2016 sorted bulk profiles;
not the paper's datasets.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from experiments.common import RESULTS, load

AT = (1, 2, 3, 4, 5, 10, 30)


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


def _weights(Z, support_idx=None):
    """The default output weights B (sparse) of a dense Z or of ELL values on a support."""
    import scipy.sparse as sp

    from sccase_jax.layout import to_sparse
    from sccase_jax.output import keep_largest, sparse_weights, weights

    if support_idx is not None:
        return sparse_weights(to_sparse(Z, support_idx), "blend", 0.8, 300)
    Z = np.array(Z, np.float32)
    return sp.csc_matrix(weights(keep_largest(Z, 300), "blend", 0.8, inplace=True))


def _spnorm_rel(A, B):
    D = (A - B)
    return float(np.sqrt(D.multiply(D).sum()) / max(np.sqrt(B.multiply(B).sum()), 1e-300))


def iterates(X, k, seed, max_iter, support=None):
    """The default solver's iterates after each iteration, one at a time (host arrays):
    ``(idx, generator of dicts)``; only the current iterate is held."""
    import jax

    from sccase_jax.options import Options
    from sccase_jax.params import SolverConfig

    config = SolverConfig(max_iter=max_iter, tol=0.0)
    opts = Options(seed=seed).resolved()
    if support is None:
        from sccase_jax.problem import prepare
        from sccase_jax.solver.alternating import _start, update

        prob = prepare(X, k, opts)
        step = jax.jit(update, static_argnames=("config",))
        state = jax.jit(_start, static_argnames=("config",))(prob.data, prob.factors, prob.hp, config)
        data, hp, idx = prob.data, prob.hp, None
    else:
        from sccase_jax.solver.over_terms import _start, update
        from sccase_jax.support.fit import prepare_support

        prob = prepare_support(X, k, opts.replace(n_neighbors=support), support)
        objective, layout = prob.objective, prob.layout
        state = jax.jit(_start, static_argnames=("config",))(objective, prob.data, layout,
                                                             prob.factors, config)
        terms_step = jax.jit(update, static_argnames=("config",))

        def step(s, data, hp, config):
            return terms_step(s, objective, data, layout, config)

        data, hp, idx = prob.data, None, np.asarray(layout.idx)

    def gen(state):
        yield dict(F=float(state.loss), W=np.asarray(state.W), H=np.asarray(state.H),
                   Z=np.asarray(state.Z))
        for _ in range(max_iter):
            t = time.perf_counter()
            state = step(state, data, hp, config)
            jax.block_until_ready(state.loss)
            yield dict(F=float(state.loss), W=np.asarray(state.W), H=np.asarray(state.H),
                       Z=np.asarray(state.Z), s=time.perf_counter() - t)

    return idx, gen(state)


def run(name, seeds, at, support=None):
    import scipy.sparse as sp

    from experiments.quality import score
    from sccase_jax.estimate import estimate_n_components
    from sccase_jax.output import enhanced_matrix
    from sccase_jax.preprocessing import preprocess

    a = load(name)
    labels_all = a.obs["cell_type"].astype(str).to_numpy()
    X, peaks, cells = preprocess(sp.csr_matrix(a.X, dtype=np.float64).T.tocsr())
    labels = labels_all[cells]
    res = {"dataset": name, "cells": int(X.shape[1]), "peaks": int(X.shape[0]),
           "support": support, "at": list(at), "seeds": {}}
    raw, _ = score(X.T.tocsr(), labels, None)
    res["raw_l2"] = {m: raw[m] for m in ("ari", "ami")}
    last = max(at)
    for seed in seeds:
        k = int(estimate_n_components(X, seed=seed)) + 1
        idx, its = iterates(X, k, seed, last, support)
        prev = next(its)
        B_prev = _weights(prev["Z"], idx)
        kept, rows = {}, []
        for t, cur in enumerate(its, start=1):
            B = _weights(cur["Z"], idx)
            rows.append(dict(
                t=t, F=cur["F"], dF=abs(cur["F"] - prev["F"]) / abs(prev["F"]), s=cur["s"],
                dW=_rel(cur["W"], prev["W"]), dH=_rel(cur["H"], prev["H"]),
                dZ=_rel(cur["Z"], prev["Z"]), dB=_spnorm_rel(B, B_prev)))
            if t in at:
                kept[t] = B
            prev, B_prev = cur, B
        for row in rows:
            row["dB_last"] = _spnorm_rel(kept[row["t"]], kept[last]) if row["t"] in kept else None
        scores = {}
        for t in at:
            E = enhanced_matrix(X, kept[t])
            sc, _ = score(E, labels, None)
            scores[str(t)] = {m: sc[m] for m in ("ari", "ami", "ari_sd", "ami_sd")}
            print(f"{name} seed {seed} k {k} t {t}: ARI {sc['ari']:.3f} AMI {sc['ami']:.3f}",
                  flush=True)
        res["seeds"][str(seed)] = {"k": k, "iterations": rows, "scores": scores}
    tag = f"_support{support}" if support else ""
    path = RESULTS / f"stopping_{name}{tag}.json"
    path.write_text(json.dumps(res, indent=1) + "\n")
    print(f"wrote {path}")
    return res


def summary(x_tol=1e-4):
    """One row per saved result: where the rule on the iterate stops (the first t with
    max(dH, dZ) < x_tol) and the clustering there against the last iteration, seed means."""
    print(f"| data | Z | seeds | stops at (x_tol {x_tol:g}) | ARI / AMI there | ARI / AMI at the last |")
    print("|---|---|---|---|---|---|")
    for path in sorted(RESULTS.glob("stopping_*.json")):
        r = json.loads(path.read_text())
        last = str(max(r["at"]))
        stops, here, end = [], [], []
        for s in r["seeds"].values():
            t = next((row["t"] for row in s["iterations"] if max(row["dH"], row["dZ"]) < x_tol), None)
            stops.append(t)
            if t is not None and str(t) in s["scores"]:
                here.append((s["scores"][str(t)]["ari"], s["scores"][str(t)]["ami"]))
            end.append((s["scores"][last]["ari"], s["scores"][last]["ami"]))
        mean = lambda v: "-" if not v else f"{np.mean([a for a, _ in v]):.3f} / {np.mean([b for _, b in v]):.3f}"  # noqa: E731
        z = f"support {r['support']}" if r.get("support") else "dense"
        print(f"| {r['dataset']} | {z} | {len(r['seeds'])} | {', '.join(map(str, stops))} | "
              f"{mean(here)} | {mean(end)} (t = {last}) |")


def report():
    """Markdown tables of every saved result."""
    lines = []
    for path in sorted(RESULTS.glob("stopping_*.json")):
        r = json.loads(path.read_text())
        sup = f", Z on {r['support']} candidates" if r.get("support") else ", dense Z"
        lines.append(f"\n{r['dataset']} ({r['cells']} cells x {r['peaks']} peaks{sup}); raw L2 "
                     f"TF-IDF ARI {r['raw_l2']['ari']:.3f} / AMI {r['raw_l2']['ami']:.3f}\n")
        lines.append("| seed | k | t | rel. dF | dW | dH | dZ | dB | B_t vs last | ARI | AMI |")
        lines.append("|---|---|---|---|---|---|---|---|---|---|---|")
        for seed, s in r["seeds"].items():
            for row in s["iterations"]:
                t = row["t"]
                sc = s["scores"].get(str(t))
                if sc is None and t not in (6, 7, 8):
                    continue
                cells = (f"{sc['ari']:.3f} | {sc['ami']:.3f}" if sc else " | ")
                last = "-" if row["dB_last"] is None else f"{row['dB_last']:.1e}"
                lines.append(f"| {seed} | {s['k']} | {t} | {row['dF']:.1e} | {row['dW']:.1e} | {row['dH']:.1e} | "
                             f"{row['dZ']:.1e} | {row['dB']:.1e} | {last} | {cells} |")
    print("\n".join(lines))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--at", type=int, nargs="+", default=list(AT))
    ap.add_argument("--support", type=int, default=None)
    ap.add_argument("--report", action="store_true")
    ap.add_argument("--summary", action="store_true")
    args = ap.parse_args(argv)
    if args.summary:
        return summary()
    if args.report:
        return report()
    run(args.dataset, args.seeds, sorted(args.at), args.support)


if __name__ == "__main__":
    main()
