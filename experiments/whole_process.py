"""Whole-process time of the command line against the authors' release (sccase 0.2.5).

Each run is one fresh process, timed from the outside (wall clock from spawn to exit, peak
RSS from ``wait4``), on the same ``.h5ad`` file:

- ``sccase-jax enhance IN OUT --k K [--max-iter 3]``: interpreter start, imports, reading,
  preprocessing, the start (Jaccard, NMF), compiling, the iterations, the output and
  writing the ``.h5ad``.  ``first``: with an empty persistent compilation cache
  (``SCCASE_JAX_CACHE`` pointing at a new directory); ``cached``: the same command again.
  ``--auto-k`` rows leave ``--k`` out (the number of cell types is estimated).
- the release: ``scCASE.run(IN, method="scCASE", K=K)`` in a fresh interpreter (its 3
  hard-wired iterations; ``K="Auto"`` for the ``--auto-k`` row, its ASTER estimate).

    python -m experiments.benchmark install-release       # once: experiments/.release-venv
    python -m experiments.whole_process [--data granja2019_D6T1_2k] [--k 17] [--repeats 2]
    python -m experiments.whole_process --data /tmp/r2k_120k.h5ad --auto-k --release-only

Results: ``experiments/results/whole_process_<data>.json``, and a table on stdout (pasted
into docs/performance.md, "Whole process").
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from experiments.benchmark import RELEASE_VENV, machine
from experiments.common import D6T1_2K, RESULTS, ROOT, data_path

RELEASE_CODE = "import sys, scCASE\nK = sys.argv[2]\nscCASE.run(sys.argv[1], method='scCASE', K=K if K == 'Auto' else int(K))\n"


def timed(cmd, env=None, cwd=None):
    """Wall seconds and peak RSS (bytes) of one process, measured from outside."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    err = p.stderr.read().decode(errors="replace")
    p.stderr.close()
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        raise RuntimeError(f"{cmd[:4]} failed ({p.returncode}):\n{err[-3000:]}")
    return wall, usage.ru_maxrss * 1024


def jax_runs(infile, k, iters, repeats, tmp):
    """``first`` then ``cached`` runs of the CLI, ``repeats`` times each (fresh cache a first run)."""
    rows = []
    for rep in range(repeats):
        cache = os.path.join(tmp, f"cache{rep}-{iters}-{k}")
        env = dict(os.environ, SCCASE_JAX_CACHE=cache)
        env.pop("XLA_FLAGS", None)
        out = os.path.join(tmp, "out.h5ad")
        cmd = [sys.executable, "-m", "sccase_jax", "enhance", infile, out,
               "--quiet"]
        if k != "auto":
            cmd += ["--k", str(k)]
        if iters != "tol":
            cmd += ["--max-iter", str(iters)]
        for cache_state in ("first", "cached"):
            if os.path.exists(out):
                os.remove(out)
            wall, rss = timed(cmd, env=env, cwd=ROOT)
            rows.append(dict(impl="sccase_jax", k=k, iters=iters, cache=cache_state, wall_s=wall, peak_rss=rss))
            print(json.dumps(rows[-1]), flush=True)
    return rows


def release_runs(infile, k, repeats, tmp):
    py = os.path.join(RELEASE_VENV, "bin", "python")
    if not os.path.exists(py):
        raise SystemExit("no release venv: run `python -m experiments.benchmark install-release` first")
    env = {k_: v for k_, v in os.environ.items() if k_ != "PYTHONPATH"}
    rows = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory(dir=tmp) as empty:  # it silently loads ./Z0.npy
            wall, rss = timed([py, "-c", RELEASE_CODE, infile, "Auto" if k == "auto" else str(k)], env=env, cwd=empty)
        rows.append(dict(impl="release", k=k, iters="3", cache="-", wall_s=wall, peak_rss=rss))
        print(json.dumps(rows[-1]), flush=True)
    return rows


def table(rows):
    best = {}
    for r in rows:
        key = (r["impl"], str(r["k"]), str(r["iters"]), r["cache"])
        best[key] = min(best.get(key, float("inf")), r["wall_s"])
    rss = {}
    for r in rows:
        key = (r["impl"], str(r["k"]), str(r["iters"]), r["cache"])
        rss[key] = max(rss.get(key, 0), r["peak_rss"])
    lines = ["| program | k | iterations | compilation cache | wall s (best) | peak RSS GB | release / this |",
             "|---|---|---|---|---|---|---|"]
    for key in sorted(best):
        impl, k, iters, cache = key
        rel = best.get(("release", k, "3", "-"))
        ratio = f"{rel / best[key]:.1f}x" if rel and impl != "release" else "-"
        lines.append(f"| {impl} | {k} | {iters} | {cache} | {best[key]:.1f} | {rss[key] / 1e9:.2f} | {ratio} |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=D6T1_2K)
    ap.add_argument("--k", default="17", help="components for both programs (17 = 16 types + 1, as benchmark.py)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--auto-k", action="store_true", help="also run both with the number of types estimated")
    ap.add_argument("--no-release", action="store_true")
    ap.add_argument("--release-only", action="store_true", help="time the release alone")
    a = ap.parse_args(argv)
    infile = str(data_path(a.data))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        ks = [a.k] + (["auto"] if a.auto_k else [])
        for k in ks:
            for iters in () if a.release_only else ("3", "tol"):
                rows += jax_runs(infile, k, iters, a.repeats, tmp)
            if not a.no_release:
                rows += release_runs(infile, k, 1 if k == "auto" else a.repeats, tmp)
    os.makedirs(RESULTS, exist_ok=True)
    name = os.path.basename(a.data).removesuffix(".h5ad")
    out = os.path.join(RESULTS, f"whole_process_{name}{'_release' if a.release_only else ''}.json")
    with open(out, "w") as fh:
        json.dump(dict(rows=rows, data=a.data, machine=machine()), fh, indent=1)
    print(table(rows))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
