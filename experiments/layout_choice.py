"""Which layout of Z to use at which size: dense n x n, or each cell's d candidate neighbours.

For each dataset, layout and enhancement seed: ``enhance(adata, seed=s, z_support=...,
n_neighbors=d)`` with every other option at its default (k estimated, the stopping rule,
the blended output over each cell's 300 largest weights), run in a fresh process (wall
time from spawn to exit and peak RSS, the k estimate and the start included), then the
clustering of its enhanced layer (Leiden searched to the number of types on PCA 50,
Leiden seeds 0, 1, 2).

    python -m experiments.layout_choice --data granja2019_D6T1_2k granja2019_D6T1_10k \\
        --layouts dense knn:300 knn:100 --seeds 0 1 2
    python -m experiments.layout_choice --report

``granja2019_D6T1_10k:5000`` is a seeded random 5,000-cell subset of the 10k data.
Results: ``experiments/results/layout_choice.json`` (rows are added; a rerun of the same
row replaces it).  Data: Granja 2019 bone marrow (donor D6T1); not the paper's datasets.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from experiments.common import RESULTS, ROOT, load

PATH = RESULTS / "layout_choice.json"

CHILD = """
import sys, time, json
import anndata as ad
import sccase_jax
t0 = time.perf_counter()
a = ad.read_h5ad(sys.argv[1])
kw = json.loads(sys.argv[3])
out = sccase_jax.enhance(a, **kw)
out.write_h5ad(sys.argv[2])
print(json.dumps(dict(seconds=time.perf_counter() - t0, n_iter=int(out.uns["sccase"]["n_iter"]),
                      k=int(out.uns["sccase"]["params"]["n_components"]))))
"""


def dataset(spec: str):
    name, _, cells = spec.partition(":")
    a = load(name)
    if cells:
        rng = np.random.default_rng(0)
        a = a[np.sort(rng.choice(a.n_obs, int(cells), replace=False))].copy()
    return a


def run_one(path, layout: str, seed: int, tmp: str) -> dict:
    kind, _, d = layout.partition(":")
    kw = dict(seed=seed, z_support=kind)
    if d:
        kw["n_neighbors"] = int(d)
    out = os.path.join(tmp, "out.h5ad")
    env = dict(os.environ, SCCASE_JAX_CACHE="off")
    env.pop("XLA_FLAGS", None)
    t = time.perf_counter()
    p = subprocess.Popen([sys.executable, "-c", CHILD, str(path), out, json.dumps(kw)], cwd=ROOT,
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t
    stdout, stderr = p.stdout.read().decode(), p.stderr.read().decode()
    if os.waitstatus_to_exitcode(status):
        raise RuntimeError(f"{layout} seed {seed} failed:\n{stderr[-3000:]}")
    row = json.loads(stdout.strip().splitlines()[-1])
    row.update(wall_s=wall, peak_rss_gb=usage.ru_maxrss / 2**20)
    return row, out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", nargs="+", default=[])
    ap.add_argument("--layouts", nargs="+", default=["dense", "knn:300"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--report", action="store_true")
    ap.add_argument("--out", default=None, help="results JSON (rows are added; default "
                    "experiments/results/layout_choice.json)")
    args = ap.parse_args(argv)
    if args.out:
        global PATH
        PATH = Path(args.out)
    if args.report:
        return report()
    import anndata as ad

    from experiments.quality import score

    rows = json.loads(PATH.read_text()) if PATH.exists() else []
    with tempfile.TemporaryDirectory() as tmp:
        for spec in args.data:
            a = dataset(spec)
            src = os.path.join(tmp, "in.h5ad")
            a.write_h5ad(src)
            labels = a.obs["cell_type"].astype(str)
            for layout in args.layouts:
                for seed in args.seeds:
                    row, out = run_one(src, layout, seed, tmp)
                    b = ad.read_h5ad(out)
                    sc, _ = score(np.asarray(b.layers["sccase"]), labels[b.obs_names].to_numpy(), None)
                    row.update(data=spec, cells=a.n_obs, layout=layout, seed=seed,
                               ari=sc["ari"], ami=sc["ami"])
                    print(json.dumps(row), flush=True)
                    rows = [r for r in rows if (r["data"], r["layout"], r["seed"]) != (spec, layout, seed)]
                    rows.append(row)
                    PATH.write_text(json.dumps(rows, indent=1) + "\n")
    report()


def report():
    rows = json.loads(PATH.read_text())
    print("| data | cells | Z | seeds | iterations | wall s (mean) | peak RSS GB (max) | ARI | AMI |")
    print("|---|---|---|---|---|---|---|---|---|")
    keys = sorted({(r["data"], r["layout"]) for r in rows}, key=lambda x: (x[0], x[1]))
    for data, layout in keys:
        rs = [r for r in rows if (r["data"], r["layout"]) == (data, layout)]
        z = "dense" if layout == "dense" else f"{layout.split(':')[1]} candidates a cell"
        print(f"| {data} | {rs[0]['cells']} | {z} | {len(rs)} | {', '.join(str(r['n_iter']) for r in rs)} | "
              f"{np.mean([r['wall_s'] for r in rs]):.1f} | {max(r['peak_rss_gb'] for r in rs):.2f} | "
              f"{np.mean([r['ari'] for r in rs]):.3f} | {np.mean([r['ami'] for r in rs]):.3f} |")


if __name__ == "__main__":
    main()
