"""Where a whole command-line run spends its time: seconds per stage, from one profiled process.

Runs ``sccase-jax enhance IN OUT [args]`` in a fresh process under :mod:`cProfile` (wall
clock and peak RSS measured from outside), then reads the cumulative time of the functions
that make up each stage from the profile:

- ``start-up``: interpreter start and imports (the wall time outside the CLI's ``main``);
- ``read``: reading the input (``readers.read`` / ``io.read_h5ad``);
- ``preprocess``: peak filter and TF-IDF (``frontend._preprocessed``);
- ``reduce``: X to the device and G = X^T X, formed once before the k estimate
  (``problem.reduce`` on the dense Z layout; ``support.build.host_gram`` on the support
  layout where it keeps G);
- ``k``: the estimate of the number of cell types (``frontend._components``);
- ``start``: the fit's start (``problem.prepare`` or ``support.fit.prepare_support``: NMF,
  Jaccard, G or the support's local Grams);
- ``iterations``: the rest of the fit (the solver, the final checks);
- ``output``: the output weights, the support diagnostic and the enhanced layer;
- ``write``: writing the ``.h5ad``;
- ``compile``: XLA compilation and cache loads, wherever they happen (inside the stages
  above, not added to them).

``--python`` and ``--root`` time another checkout with the same stage names (stages its code
does not have show as ``-``), e.g. the code before a change (a ``git worktree``).

    python -m experiments.stages IN.h5ad [--label after] [--repeats 2] [-- --k 6 ...]
    python -m experiments.stages --report experiments/results/stages.json

Results: ``experiments/results/stages.json`` (rows are added; the same label, data and
arguments replace a row).
"""

from __future__ import annotations

import argparse
import json
import os
import pstats
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from experiments.common import RESULTS, ROOT

PATH = RESULTS / "stages.json"

# stage -> (file suffix, function name) candidates, cumulative times added
STAGES = {
    "read": [("sccase_jax/readers.py", "read"), ("sccase_jax/io.py", "read_h5ad")],
    "preprocess": [("sccase_jax/tl/frontend.py", "_preprocessed")],
    "reduce": [("sccase_jax/problem.py", "reduce"), ("sccase_jax/support/build.py", "host_gram")],
    "k": [("sccase_jax/tl/frontend.py", "_components")],
    "start": [("sccase_jax/problem.py", "prepare"), ("sccase_jax/support/fit.py", "prepare_support")],
    "fit": [("sccase_jax/fitting.py", "fit_with")],
    "output": [("sccase_jax/tl/store.py", "weights_and_z"), ("sccase_jax/tl/frontend.py", "_support"),
               ("sccase_jax/tl/store.py", "enhanced_output"), ("sccase_jax/tl/frontend.py", "_outputs"),
               ("sccase_jax/tl/frontend.py", "_outputs_sparse")],
    "write": [("anndata/_core/anndata.py", "write_h5ad")],
    "main": [("sccase_jax/cli/__init__.py", "main")],
    "compile": [("jax/_src/compiler.py", "compile_or_get_cached")],
}
ORDER = ["start-up", "read", "preprocess", "reduce", "k", "start", "iterations", "output", "write",
         "compile"]


def stage_times(prof: str) -> dict:
    st = pstats.Stats(prof)
    out = {}
    for stage, cands in STAGES.items():
        times = []  # cumulative time of each candidate present (recursion counted once)
        for suffix, fname in cands:
            ct = [v[3] for (file, _, name), v in st.stats.items()
                  if name == fname and file.endswith(suffix)]
            if ct:
                times.append(sum(ct))
        # "read": the first candidate found (readers.read calls io's reader); else the sum
        out[stage] = None if not times else times[0] if stage == "read" else sum(times)
    return out


def run_one(infile: str, args: list[str], python: str, root: str, tmp: str) -> dict:
    out = os.path.join(tmp, "out.h5ad")
    prof = os.path.join(tmp, "run.prof")
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    cmd = [python, "-m", "cProfile", "-o", prof, "-m", "sccase_jax", "enhance", infile, out,
           "--quiet", *args]
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    err = p.stderr.read().decode(errors="replace")
    if os.waitstatus_to_exitcode(status):
        raise RuntimeError(f"failed:\n{err[-3000:]}")
    if not os.path.exists(out):
        raise RuntimeError(f"no output written:\n{err[-3000:]}")
    t = stage_times(prof)
    fit, start = t.pop("fit") or 0.0, t.get("start") or 0.0
    main = t.pop("main") or 0.0
    row = {s: t.get(s) for s in ORDER if s in t}
    row["iterations"] = fit - start
    row["start-up"] = wall - main
    row.update(wall_s=wall, peak_rss_gb=usage.ru_maxrss / 2**20,
               out_mb=os.path.getsize(out) / 1e6, in_mb=os.path.getsize(infile) / 1e6)
    os.remove(out)
    return row


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("input", nargs="?")
    ap.add_argument("--label", default="after")
    ap.add_argument("--repeats", type=int, default=1, help="runs in a row (the first fills the "
                    "compilation cache: 'first', the others 'cached')")
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--root", default=str(ROOT))
    ap.add_argument("--report", nargs="*", default=None)
    argv = sys.argv[1:] if argv is None else list(argv)
    cut = argv.index("--") if "--" in argv else len(argv)
    a = ap.parse_args(argv[:cut])
    a.rest = argv[cut + 1 :]  # after "--": arguments for enhance
    if a.report is not None:
        return report([Path(p) for p in a.report] or [PATH])
    extra = a.rest
    rows = json.loads(PATH.read_text()) if PATH.exists() else []
    with tempfile.TemporaryDirectory() as tmp:
        cache = os.path.join(tmp, "xla")
        os.environ["SCCASE_JAX_CACHE"] = cache  # empty: the first run compiles
        for rep in range(a.repeats):
            row = run_one(a.input, extra, a.python, a.root, tmp)
            row.update(label=a.label, data=Path(a.input).name, args=" ".join(extra),
                       cache="first" if rep == 0 else "cached")
            print(json.dumps(row), flush=True)
            key = (row["label"], row["data"], row["args"], row["cache"])
            rows = [r for r in rows if (r["label"], r["data"], r["args"], r["cache"]) != key]
            rows.append(row)
            PATH.write_text(json.dumps(rows, indent=1) + "\n")
    report([PATH])


def report(paths):
    rows = [r for p in paths for r in json.loads(Path(p).read_text())]
    cols = ORDER
    print("| data | args | code | cache | " + " | ".join(cols) + " | wall s | peak RSS GB | file MB (in) |")
    print("|---" * (len(cols) + 7) + "|")
    for r in rows:
        cells = ["-" if r.get(c) is None else f"{r[c]:.1f}" for c in cols]
        print(f"| {r['data']} | {r['args'] or 'defaults'} | {r['label']} | {r['cache']} | "
              + " | ".join(cells) + f" | {r['wall_s']:.1f} | {r['peak_rss_gb']:.2f} | "
              f"{r['out_mb']:.0f} ({r['in_mb']:.0f}) |")


if __name__ == "__main__":
    main()
