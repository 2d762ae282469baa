"""The estimate of the number of cell types: its answers and its time on every shared dataset.

``estimate_n_components`` (``sccase_jax.estimate``) on the default preprocessing (L2 TF-IDF,
empty peaks dropped) of each dataset, seeds 0, 1, 2: the estimate, each estimator's answer
(k-means knee, Davies-Bouldin, Leiden silhouette) and the seconds it took, wall and CPU time
of the process (best of ``--repeats``, in this process, after one warm-up call).  ``--impl FILE`` times another
implementation of the same function instead (a module file defining
``estimate_n_components``, e.g. an earlier version: ``git show REV:sccase_jax/estimate.py
> /tmp/old_estimate.py``), so two versions can be compared side by side on one machine.

    python -m experiments.k_estimate --tag new
    python -m experiments.k_estimate --impl /tmp/old_estimate.py --tag old
    python -m experiments.k_estimate --report old new
    python -m experiments.k_estimate --datasets realistic_2k_120k --gram --tag new_gram

Results: ``experiments/results/k_estimate_<tag>.json``.  Data: Granja 2019 bone marrow,
chromVAR's and Signac's small examples, cells simulated from Corces 2016 bulk profiles, and
the semi-synthetic 2,000 x 120,000 counts of ``experiments.realistic``; not the paper's data.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import time

import numpy as np
import scipy.sparse as sp

from experiments.common import BM600, CHROMVAR, D6T1_2K, D6T1_10K, RESULTS, load

DATASETS = (BM600, D6T1_2K, D6T1_10K, CHROMVAR, "signac_atac_small", "sim_corces2016",
            "realistic_2k_120k")


def dataset(name: str):
    if name == "realistic_2k_120k":
        from experiments.realistic import realistic_counts

        return realistic_counts(2000, 120_000, 4000.0, seed=0)
    return load(name)


def implementation(path: str | None):
    if path is None:
        from sccase_jax import estimate

        return estimate.estimate_n_components
    spec = importlib.util.spec_from_file_location("estimate_impl", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.estimate_n_components


def run(names, seeds, impl, repeats, tag, gram=False):
    from sccase_jax.preprocessing import preprocess

    est = implementation(impl)
    rows = []
    for name in names:
        a = dataset(name)
        X, _, _ = preprocess(sp.csr_matrix(a.X, dtype=np.float64).T.tocsr())
        kw = {}
        if gram:  # the cells' Gram matrix, as a run on the dense layout forms it for the fit
            from sccase_jax.start import gram_matrix

            kw["gram"] = gram_matrix(X)
        est(X, seed=0, **kw)  # warm-up: imports, numba, first calls
        for seed in seeds:
            times, cpu = [], []
            for _ in range(repeats):
                t, c = time.perf_counter(), time.process_time()
                r = est(X, seed=seed, details=True, **kw)
                times.append(time.perf_counter() - t)
                cpu.append(time.process_time() - c)
            row = dict(dataset=name, cells=int(X.shape[1]), peaks=int(X.shape[0]), seed=seed,
                       k=int(r.k), knee=int(r.knee), davies_bouldin=int(r.davies_bouldin),
                       silhouette=int(r.silhouette), seconds=min(times), cpu_seconds=min(cpu))
            rows.append(row)
            print(json.dumps(row), flush=True)
    path = RESULTS / f"k_estimate_{tag}.json"
    path.write_text(json.dumps(dict(impl=impl or "sccase_jax.estimate", rows=rows), indent=1) + "\n")
    print(f"wrote {path}")


def report(tags):
    runs = {t: json.loads((RESULTS / f"k_estimate_{t}.json").read_text())["rows"] for t in tags}
    key = lambda r: (r["dataset"], r["seed"])  # noqa: E731
    by = {t: {key(r): r for r in rows} for t, rows in runs.items()}
    head = " | ".join(f"{t}: k (knee, DB, silh.) | {t} s" for t in tags)
    print(f"| dataset | cells x peaks | seed | {head} |")
    print("|---|---|---|" + "---|---|" * len(tags))
    first = by[tags[0]]
    for k in first:
        r0 = first[k]
        cells = []
        for t in tags:
            r = by[t].get(k)
            cells.append("- | -" if r is None else
                         f"{r['k']} ({r['knee']}, {r['davies_bouldin']}, {r['silhouette']}) | {r['seconds']:.2f}")
        print(f"| {r0['dataset']} | {r0['cells']} x {r0['peaks']} | {r0['seed']} | " + " | ".join(cells) + " |")
    if len(tags) == 2:
        a, b = by[tags[0]], by[tags[1]]
        common = [k for k in a if k in b]
        same = sum(a[k]["k"] == b[k]["k"] for k in common)
        ratio = sum(a[k]["seconds"] for k in common) / sum(b[k]["seconds"] for k in common)
        print(f"\nsame estimate in {same} of {len(common)}; total time {tags[0]} / {tags[1]} = {ratio:.1f}x")
        if all("cpu_seconds" in r[k] for r in (a, b) for k in common):
            cpu = (sum(a[k]["cpu_seconds"] for k in common) / sum(b[k]["cpu_seconds"] for k in common))
            print(f"total CPU time {tags[0]} / {tags[1]} = {cpu:.1f}x")
            for name in sorted({k[0] for k in common}):
                ks = [k for k in common if k[0] == name]
                w = sum(a[k]["seconds"] for k in ks) / sum(b[k]["seconds"] for k in ks)
                c = sum(a[k]["cpu_seconds"] for k in ks) / sum(b[k]["cpu_seconds"] for k in ks)
                print(f"  {name}: wall {w:.1f}x, CPU {c:.1f}x")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", nargs="+", default=list(DATASETS))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--impl", default=None)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--tag", default="current")
    ap.add_argument("--report", nargs="+", default=None)
    ap.add_argument("--gram", action="store_true",
                    help="pass X^T X (formed before the clock starts), as enhance does on the "
                         "dense layout")
    args = ap.parse_args(argv)
    if args.report:
        return report(args.report)
    run(args.datasets, args.seeds, args.impl, args.repeats, args.tag, args.gram)


if __name__ == "__main__":
    main()
