"""Speed and memory of sccase_jax against the authors' release (sccase 0.2.5) and the hardware.

Every measurement runs in its own subprocess (peak RSS from ``getrusage``), on the same
counts file (scipy ``.npz``, cells x peaks), one after the other.

    python -m experiments.benchmark install-release            # once: experiments/.release-venv
    python -m experiments.benchmark run synth2k:jax:tol synth2k:release real2k:jax:tol ...
    python -m experiments.benchmark crossover                  # dense G vs sparse X products
    python -m experiments.benchmark report                     # -> docs/performance.md

A run spec is ``CASE:IMPL[:ITERS]``: CASE is ``synth1k|synth2k|synth4k|synth8k|real2k|
real10k``, IMPL ``jax`` or ``release``, ITERS ``tol`` (fit to tol = 1e-6, at most 100
iterations) or a fixed number of iterations (release: 3 by default; fewer by capping its
hard-wired loop).  Results go to ``experiments/results/*.json``; ``report`` rewrites the
tables between the markers of ``docs/performance.md`` from them, leaving out the runs in
``SUPERSEDED``.  Children run with the repository root as working directory, so they
import this checkout's ``sccase_jax`` and ``experiments``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

from experiments.common import REAL, RESULTS, ROOT, SYNTH, counts, synthetic_counts

RELEASE_VENV = os.path.join(ROOT, "experiments", ".release-venv")
RELEASE_PINS = [
    "sccase==0.2.5", "numpy==1.26.4", "scipy==1.13.1", "scikit-learn==1.5.2", "pandas==2.2.3",
    "anndata==0.10.9", "scanpy==1.10.4", "episcanpy==0.3.2", "louvain==0.8.2",
    "leidenalg==0.10.2", "igraph==0.11.9", "setuptools<81", "kneed",
]
N_TYPES = {"synth": 8, "real": 16}

# Result files the report leaves out, and why (they stay in experiments/results/; the
# measurement is recorded in docs/notebook/).
SUPERSEDED = {
    "real10k_jax_tol_gpu.json": "ran the sparse X products under the GPU's former sparse "
    "penalty of 20; real10k_jax_tol_gpu-densegram.json is the same run with the dense G that "
    "gram='auto' now picks",
}


# -- data ---------------------------------------------------------------------------------
def counts_file(case, tmp):
    """Write the case's counts (cells x peaks, CSR float32) to ``tmp``; return path and k."""
    import scipy.sparse as sp

    path = os.path.join(tmp, f"{case}.npz")
    if case in SYNTH:
        C, _ = synthetic_counts(*SYNTH[case])
        k = N_TYPES["synth"] + 1
    else:
        C = counts(REAL[case])
        k = N_TYPES["real"] + 1
    if not os.path.exists(path):
        sp.save_npz(path, C, compressed=False)
    return path, k, C.shape, C.nnz


# -- children -----------------------------------------------------------------------------
JAX_CHILD = r"""
import json, resource, sys, time
t_start = time.perf_counter()
import jax, jax.numpy as jnp, numpy as np, scipy.sparse as sp
from sccase_jax.output import enhanced_matrix
from sccase_jax.problem import prepare
from sccase_jax.params import SolverConfig
from sccase_jax.preprocessing import preprocess
from sccase_jax.solver import run_donated as run
path, k, max_iter, tol, gram = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
precision = None if sys.argv[6] == "none" else sys.argv[6]
z_step = sys.argv[7]
rss = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
counts = sp.load_npz(path).T.tocsr().astype(np.float64)
rss_input = rss()
t = {}
t0 = time.perf_counter()
X, peak_mask, cell_mask = preprocess(counts, min_cells_frac=0.01, tfidf_variant="paper")
t["preprocess"] = time.perf_counter() - t0
t0 = time.perf_counter()
prob = prepare(X, k, gram=gram, dtype=jnp.float32)
jax.block_until_ready(prob)
t["initialisation"] = time.perf_counter() - t0
cfg = SolverConfig(max_iter=max_iter, tol=tol, precision=precision, z_step=z_step)
t0 = time.perf_counter()
compiled = run.lower(prob.data, prob.factors, prob.hp, config=cfg).compile()
t["compile"] = time.perf_counter() - t0
ma = compiled.memory_analysis()  # XLA's buffer plan of the whole fit, in bytes
nbytes = lambda a: sum(x.nbytes for x in jax.tree.leaves(a))
plan = dict(arguments=ma.argument_size_in_bytes, temps=ma.temp_size_in_bytes,
            outputs=ma.output_size_in_bytes, aliased=ma.alias_size_in_bytes,
            X=nbytes(prob.data.X), G=nbytes(prob.data.G), R=nbytes(prob.data.R))
t0 = time.perf_counter()
res = jax.block_until_ready(compiled(prob.data, prob.factors, prob.hp))
t["iterations"] = time.perf_counter() - t0
n_iter = int(res.n_iter)
t["per_iteration"] = t["iterations"] / max(n_iter, 1)
final_F = float(res.loss[max(n_iter - 1, 0)])
status = int(res.status)
Z = np.asarray(res.factors.Z)
gram_used = "dense" if prob.data.G is not None else "sparse"
del prob, res
t0 = time.perf_counter()
E = enhanced_matrix(X, Z)
t["output"] = time.perf_counter() - t0
if jax.default_backend() != "cpu":  # on a GPU compiling dominates: time the stages again, warm
    del E
    t0 = time.perf_counter()
    jax.block_until_ready(prepare(X, k, gram=gram, dtype=jnp.float32))
    t["initialisation_warm"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    E = enhanced_matrix(X, Z)
    t["output_warm"] = time.perf_counter() - t0
t["total"] = time.perf_counter() - t_start
peak = rss()
n = X.shape[1]
del E
stats = jax.devices()[0].memory_stats() or {}
device_peak = stats.get("peak_bytes_in_use")
A = jax.random.uniform(jax.random.PRNGKey(1), (n, n), jnp.float32)
B = jax.random.uniform(jax.random.PRNGKey(2), (n, n), jnp.float32)
def matmul_time(prec):
    mm = jax.jit(lambda a, b: jnp.matmul(a, b, precision=prec))
    mm(A, B).block_until_ready()
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter(); mm(A, B).block_until_ready(); best = min(best, time.perf_counter() - t0)
    return best
# The products of the fit run at cfg.precision: time the reference product the same way.
best = matmul_time(precision)
print(json.dumps(dict(times=t, n_iter=n_iter, peak_rss=peak, input_rss=rss_input, matmul_s=best, plan=plan,
                      cells=int(n), peaks=int(X.shape[0]), nnz=int(X.nnz), gram=gram_used,
                      final_loss=final_F, status=status, precision=precision, device_peak=device_peak,
                      z_step=z_step, products=2 if z_step == "gradient" else 1,
                      device_kind=jax.devices()[0].device_kind,
                      backend=jax.default_backend(), devices=len(jax.devices()))))
"""

RELEASE_CHILD = r"""
import builtins, json, resource, sys, time
t_start = time.perf_counter()
import numpy as np, scipy.sparse as sp
path, k, iters = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
from scCASE import model, preprocessing as pp
marks = {}
class Clock:
    def __init__(self, out): self.out = out
    def write(self, s):
        for key in ("Initializing", "Updating", "Finished"):
            if key in s and key not in marks: marks[key] = time.perf_counter()
        return self.out.write(s)
    def flush(self): self.out.flush()
if iters != 3:  # the release hard-wires 3 iterations: cap its outer loop for big sizes
    model.range = lambda *a: builtins.range(1, iters + 1) if a == (1, 4) else builtins.range(*a)
counts = sp.load_npz(path).T.tocsr()
t = {}
t0 = time.perf_counter()
data, _, _ = pp.select_peak(counts, None, 0.01)
data, _ = pp.tfidf(data)
t["preprocess"] = time.perf_counter() - t0
real_stdout, sys.stdout = sys.stdout, Clock(sys.stderr)
t0 = time.perf_counter()
X_imp, W, H, Z = model.run_scCASE(data, k, Lambda=pp.Lambda_calculate(data, "p"))
t_ret = time.perf_counter()
sys.stdout = real_stdout
t["initialisation"] = marks["Updating"] - t0
t["iterations"] = marks["Finished"] - marks["Updating"]
t["per_iteration"] = t["iterations"] / iters
t0 = time.perf_counter()
X_imp = pp.myscaler(X_imp.T).T
X_imp = pp.myscaler(X_imp)
t["output"] = (t_ret - marks["Finished"]) + time.perf_counter() - t0
t["total"] = time.perf_counter() - t_start
print(json.dumps(dict(times=t, n_iter=iters, peak_rss=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                      cells=int(data.shape[1]), peaks=int(data.shape[0]))))
"""

CROSSOVER_CHILD = r"""
import json, sys, time
import jax, jax.numpy as jnp, numpy as np, scipy.sparse as sp
jax.config.update("jax_default_matmul_precision", "highest")  # as in the fit (SolverConfig.precision)
from jax.experimental import sparse as jsparse
from experiments.common import synthetic_counts
from sccase_jax.problem import device_matrix
from sccase_jax.ops import gram_flops, gram_matmul
from sccase_jax.params import Data
out = []
L = 4
sizes = [(1000, 10000, 0.001), (1000, 10000, 0.005), (1000, 10000, 0.037), (2000, 20000, 0.002)]
if jax.default_backend() != "cpu":
    sizes += [(4000, 30000, 0.002), (4000, 30000, 0.01), (4000, 30000, 0.037)]
for n, m, dens in sizes:
    C, _ = synthetic_counts(n, m, density=dens)
    X = C.T.tocsr().astype(np.float32)  # peaks x cells, as the fit gets it
    Xd = jnp.asarray(X.toarray())
    dense = Data(X=Xd, G=Xd.T @ Xd, R=None, P=None, M=None)
    bcoo = Data(X=device_matrix(X, jnp.float32, "sparse"), G=None, R=None, P=None, M=None)
    del Xd
    A = jnp.asarray(np.random.default_rng(0).random((n, n), np.float32))
    row = dict(cells=n, peaks=m, density=X.nnz / (n * m), **{f"flops_{k}": v for k, v in gram_flops(n, X.nnz).items()})
    for name, d in (("dense", dense), ("sparse", bcoo)):
        # Products inside one jitted loop, as in a fit (a loop of 1 + L minus a loop of 1,
        # best of 3), each scaled so that the iterates stay of order one.
        s = float(jnp.linalg.norm(A) / jnp.linalg.norm(gram_matmul(d, A)))
        loop = lambda it, d=d: jax.jit(lambda A: jax.lax.fori_loop(0, it, lambda i, B: gram_matmul(d, B) * s, A))
        f1, fl = loop(1), loop(1 + L)
        f1(A).block_until_ready(); fl(A).block_until_ready()
        b1 = bl = float("inf")
        for _ in range(3):
            t0 = time.perf_counter(); f1(A).block_until_ready(); b1 = min(b1, time.perf_counter() - t0)
            t0 = time.perf_counter(); fl(A).block_until_ready(); bl = min(bl, time.perf_counter() - t0)
        row[f"{name}_s"] = (bl - b1) / L
    row["penalty"] = (row["sparse_s"] / row["flops_sparse"]) / (row["dense_s"] / row["flops_dense"])
    print(json.dumps(row), flush=True)
    out.append(row)
print("RESULT " + json.dumps(out))
"""


def _child(python, code, args, cwd, env=None):
    t0 = time.perf_counter()
    p = subprocess.run([python, "-c", code, *map(str, args)], cwd=cwd, capture_output=True,
                       text=True, env=env)
    if p.returncode != 0:
        raise RuntimeError(f"child failed ({p.returncode}):\n{p.stderr[-4000:]}")
    line = [x for x in p.stdout.splitlines() if x.startswith("{") or x.startswith("RESULT")][-1]
    return json.loads(line.removeprefix("RESULT ")), time.perf_counter() - t0


def machine():
    """A short description of this machine (CPU model, cores, memory, load)."""
    import jax

    cpu = "unknown"
    if os.path.exists("/proc/cpuinfo"):
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return dict(cpu=cpu, cores=os.cpu_count(), memory_gib=round(mem, 1),
                load_avg=os.getloadavg(), python=platform.python_version(),
                jax=jax.__version__, backend=jax.default_backend())


def install_release():
    """Create experiments/.release-venv with the pinned release (minutes; needs the index)."""
    py = os.environ.get("RELEASE_PYTHON", "python3.11")
    subprocess.run([py, "-m", "venv", RELEASE_VENV], check=True)
    subprocess.run([os.path.join(RELEASE_VENV, "bin", "pip"), "install", "-q", *RELEASE_PINS], check=True)


def run_specs(specs, gram="auto", precision="highest", tag="", z_step="auto"):
    os.makedirs(RESULTS, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for spec in specs:
            case, impl, *rest = spec.split(":")
            iters = rest[0] if rest else ("3" if impl == "release" else "tol")
            path, k, shape, nnz = counts_file(case, tmp)
            load = os.getloadavg()
            print(f"[{time.strftime('%H:%M:%S')}] {spec}: {shape[0]} cells x {shape[1]} peaks, k={k}, load {load[0]:.1f}",
                  flush=True)
            if impl == "jax":
                max_iter, tol = (100, 1e-6) if iters == "tol" else (int(iters), 0.0)
                res, wall = _child(sys.executable, JAX_CHILD,
                                   [path, k, max_iter, tol, gram, precision or "none", z_step], ROOT)
            elif impl == "release":
                py = os.path.join(RELEASE_VENV, "bin", "python")
                if not os.path.exists(py):
                    raise SystemExit("no release venv: run `benchmark.py install-release` first")
                with tempfile.TemporaryDirectory() as empty:  # it silently loads ./Z0.npy
                    env = {k_: v for k_, v in os.environ.items() if k_ != "PYTHONPATH"}
                    res, wall = _child(py, RELEASE_CHILD, [path, k, int(iters)], empty, env)
            else:
                raise SystemExit(f"unknown implementation {impl!r}")
            res.update(case=case, impl=impl, iters=iters, k=k, wall_s=wall, load_before=load,
                       load_after=os.getloadavg(), when=time.strftime("%Y-%m-%d %H:%M:%S"), tag=tag,
                       machine=machine())
            name = f"{case}_{impl}_{iters}{'_' + tag if tag else ''}.json"
            with open(os.path.join(RESULTS, name), "w") as fh:
                json.dump(res, fh, indent=1)
            print(json.dumps(res), flush=True)


def crossover(tag=""):
    os.makedirs(RESULTS, exist_ok=True)
    rows, _ = _child(sys.executable, CROSSOVER_CHILD, [], ROOT)
    with open(os.path.join(RESULTS, f"crossover{'_' + tag if tag else ''}.json"), "w") as fh:
        json.dump(dict(rows=rows, load_avg=os.getloadavg(), machine=machine()), fh, indent=1)
    for r in rows:
        print(r)


# -- report -------------------------------------------------------------------------------
def _load(tag=""):
    """Runs measured with ``tag`` (``""``: the untagged runs on the development machine),
    without the ``SUPERSEDED`` ones."""
    out = {}
    for f in sorted(os.listdir(RESULTS)) if os.path.isdir(RESULTS) else []:
        if f.endswith(".json") and not f.startswith(("crossover", "machine")) and f not in SUPERSEDED:
            r = json.load(open(os.path.join(RESULTS, f)))
            if isinstance(r, dict) and "case" in r and r.get("tag", "") == tag:  # runs of this script only
                out[(r["case"], r["impl"], r["iters"])] = r
    return out


def _tags():
    tags = set()
    for f in sorted(os.listdir(RESULTS)) if os.path.isdir(RESULTS) else []:
        if f.endswith(".json") and not f.startswith(("crossover", "machine")):
            r = json.load(open(os.path.join(RESULTS, f)))
            if isinstance(r, dict) and "case" in r:
                tags.add(r.get("tag", ""))
    return sorted(tags - {""})


def _fmt(x, unit=""):
    if x is None:
        return "not measured"
    if isinstance(x, float) and x != x:
        return "-"
    return f"{x:.3g}{unit}" if x < 100 else f"{x:.0f}{unit}"


def _gpu_section(tag, cpu):
    """Tables of the runs tagged ``tag`` (measured on another machine, e.g. a lent GPU)."""
    runs = _load(tag)
    if not runs:
        return []
    m = next(iter(runs.values())).get("machine", {})
    kind = next(iter(runs.values())).get("device_kind", "?")
    cpu_tag = m.get("backend") == "cpu"
    L = ["", f"## On {'this CPU' if cpu_tag else 'a GPU'} (runs tagged `{tag}`)", "",
         f"Device: {kind} ({m.get('backend', '?')}); host {m.get('cpu', '?')}, {m.get('cores', '?')} cores; "
         f"JAX {m.get('jax', '?')}.  "
         "`precision` is `SolverConfig.precision` of the fit and of its reference product "
         "(`highest`: true float32; `tensorfloat32`: tensor cores).  The release ratio "
         "divides the release's per-iteration time on the 2-core development CPU (above) by "
         + ("this run's (same machine)." if cpu_tag else
            "this GPU's: it compares what a user gets on each machine, not the same hardware."), "",
         "Init and output are timed cold (their compilation included) and, in brackets, "
         "again in the same process once compiled.", "",
         "| data | precision | iters | final F | init s (warm) | compile s | per iter s | output s (warm) | total s "
         "| matmul s | Z step | per iter / (p matmul) | device peak / (4 n^2 B) | release CPU per iter / this |",
         "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for (case, _impl, iters), r in sorted(runs.items()):
        t, n = r["times"], r["cells"]
        rel = cpu.get((case, "release", "3"))
        ratio = f"{rel['times']['per_iteration'] / t['per_iteration']:.0f}x" if rel else "n/a"
        dp = r.get("device_peak")
        L.append(f"| {case} | {r.get('precision')} | {r['n_iter']}{' (tol)' if iters == 'tol' else ''} | "
                 f"{r.get('final_loss', float('nan')):.6g} | {_fmt(t['initialisation'])} ({_fmt(t.get('initialisation_warm'))}) | "
                 f"{_fmt(t.get('compile'))} | {_fmt(t['per_iteration'])} | {_fmt(t['output'])} ({_fmt(t.get('output_warm'))}) | "
                 f"{_fmt(t['total'])} | {_fmt(r['matmul_s'])} | "
                 f"{r.get('z_step', 'gradient')} (p = {r.get('products', 2)}) | "
                 f"{t['per_iteration'] / (r.get('products', 2) * r['matmul_s']):.2f} | "
                 f"{(dp / (4 * n * n)) if dp else float('nan'):.1f} | {ratio} |")
    cross = os.path.join(RESULTS, f"crossover_{tag}.json")
    if os.path.exists(cross):
        rows = json.load(open(cross))["rows"]
        L += ["", f"Dense G vs sparse X on this device (`crossover --tag {tag}`):", "",
              "| cells x peaks | density | flops sparse / dense | dense s | sparse s | penalty |",
              "|---|---|---|---|---|---|"]
        for r in rows:
            L.append(f"| {r['cells']} x {r['peaks']} | {r['density']:.4f} | "
                     f"{r['flops_sparse'] / r['flops_dense']:.3f} | {_fmt(r['dense_s'])} | {_fmt(r['sparse_s'])} | "
                     f"{r['penalty']:.0f} |")
    return L


def report(path):
    res = _load()
    # The machine as each run recorded it (the untagged runs share one).
    machines = {json.dumps(r["machine"], sort_keys=True): r["machine"] for r in res.values()
                if "machine" in r}
    mach = next(iter(machines.values())) if machines else machine()
    L = ["Generated by `python -m experiments.benchmark report` from `experiments/results/*.json`",
         "(each number measured by `python -m experiments.benchmark run ...` in its own subprocess).", "",
         f"Machine: {mach['cpu']}, {mach['cores']} cores, {mach['memory_gib']} GiB, no GPU; "
         f"Python {mach['python']}, JAX {mach['jax']} ({mach['backend']}).  Load average (1 min) "
         "before each run: " + ", ".join(f"{c}:{i}:{it} {r['load_before'][0]:.1f}" for (c, i, it), r in sorted(res.items()))
         + ".  The ratio of a JAX iteration to the matmul measured in the same subprocess is the "
         "figure least sensitive to load.", "",
         ("GPU figures: see the sections *On a GPU* below." if any(
             next(iter(_load(t).values()), {}).get("backend") != "cpu" for t in _tags()) else
          "**GPU figures: not yet measured** (no device was lent to this task)."), "",
         "## Stages: sccase_jax vs the release (sccase 0.2.5)", "",
         "| data | cells x peaks | impl | iters | preprocess s | init s | compile s | per iter s | output s | total s | peak RSS GB | n^2 floats in GB |",
         "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for (case, impl, iters), r in sorted(res.items()):
        t = r["times"]
        n = r["cells"]
        L.append(f"| {case} | {n} x {r['peaks']} | {impl} | {r['n_iter']}"
                 f"{' (tol)' if iters == 'tol' else ''} | {_fmt(t['preprocess'])} | {_fmt(t['initialisation'])} | "
                 f"{_fmt(t.get('compile'))} | {_fmt(t['per_iteration'])} | {_fmt(t['output'])} | {_fmt(t['total'])} | "
                 f"{r['peak_rss'] / 1e9:.2f} | {4 * n * n / 1e9:.3f} |")
    L += ["", "## Ratios (release / sccase_jax, same data)", "",
          "| data | per iter | init | total (release 3 iters vs jax to tol) | peak memory |", "|---|---|---|---|---|"]
    cases = sorted({c for c, _, _ in res})
    for c in cases:
        rel = [r for (cc, i, _), r in res.items() if cc == c and i == "release"]
        jx = [r for (cc, i, _), r in res.items() if cc == c and i == "jax"]
        if not rel or not jx:
            continue
        r = rel[0]
        jt = [x for x in jx if x["iters"] == "tol"]
        j = jt[0] if jt else jx[0]
        tot = f"{r['times']['total'] / jt[0]['times']['total']:.1f}x" if jt and r["iters"] == "3" else "n/a"
        L.append(f"| {c} | {r['times']['per_iteration'] / j['times']['per_iteration']:.1f}x | "
                 f"{r['times']['initialisation'] / j['times']['initialisation']:.1f}x | {tot} | "
                 f"{r['peak_rss'] / j['peak_rss']:.2f}x |")
    L += ["", "## How close to the hardware", "",
          "An iteration cannot avoid p dense n x n x n products: p = 1 with the free Z step "
          "(`G (P o R)`, whose multiple updates the cache `G S`), which the default "
          "`z_step=\"auto\"` takes once the moves are small (its first, rough iterations take "
          "the paper's step, two products, and count in the averages below), p = 2 with the "
          "paper's step (`z_step=\"gradient\"`: `G (D o R)` for the exact step and the trial's "
          "`G S`).  `matmul` is the best of 5 jitted float32 "
          "n x n products measured in the same subprocess right after the fit.", "",
          "| data | Z step | per iter s | matmul s | per iter / matmul | per iter / (p matmul) "
          "| (peak RSS - input) / (4 n^2 bytes) |",
          "|---|---|---|---|---|---|---|"]
    for (case, impl, _iters), r in sorted(res.items()):
        if impl != "jax":
            continue
        n = r["cells"]
        p = r.get("products", 2)
        L.append(f"| {case} ({r['n_iter']} it) | {r.get('z_step', 'gradient')} (p = {p}) | "
                 f"{_fmt(r['times']['per_iteration'])} | {_fmt(r['matmul_s'])} | "
                 f"{r['times']['per_iteration'] / r['matmul_s']:.2f} | "
                 f"{r['times']['per_iteration'] / (p * r['matmul_s']):.2f} | "
                 f"{(r['peak_rss'] - r['input_rss']) / (4 * n * n):.1f} |")
    L += ["", "## Device memory of the fit (XLA's buffer plan)", "",
          "From `compiled.memory_analysis()` of the jitted fit (`run_donated`), in units of one "
          "n x n float32 array.  `temps` is the working memory of the whole while-loop fit; "
          "`solver` = arguments + temps + outputs - donated, without X (X, G and the boolean "
          "mask R are listed apart; X is the input, kept dense on device by `x_format=\"auto\"` "
          "up to a sixteenth of the RAM on CPU, `api.dense_limit`).", "",
          "| data | X | G | R | temps | solver without X |", "|---|---|---|---|---|---|"]
    seen = set()
    for (case, impl, _iters), r in sorted(res.items()):
        if impl != "jax" or "plan" not in r or case in seen:  # the plan does not depend on iters
            continue
        seen.add(case)
        p, u = r["plan"], 4.0 * r["cells"] ** 2
        solver = p["arguments"] + p["temps"] + p["outputs"] - p["aliased"] - p["X"]
        L.append(f"| {case} ({r.get('z_step', 'gradient')}) | {p['X'] / u:.2f} | {p['G'] / u:.2f} | "
                 f"{p['R'] / u:.2f} | {p['temps'] / u:.2f} | {solver / u:.2f} |")
    for tag in _tags():
        L += _gpu_section(tag, res)
    cross = os.path.join(RESULTS, "crossover.json")
    if os.path.exists(cross):
        rows = json.load(open(cross))["rows"]
        L += ["", "## Dense G vs sparse X: measured crossover", "",
              "One product with an n x n right-hand side: `G @ A` (n^3 multiply-adds) vs "
              "`X^T (X A)` with X as BCOO (2 nnz(X) n), each timed inside a jitted loop as in "
              "a fit.  `penalty` = time per sparse multiply-add "
              "/ time per dense one; `auto` takes sparse when penalty x 2 nnz n < n^3 "
              "(`sccase_jax.ops.SPARSE_PENALTY`).", "",
              "| cells x peaks | density | flops sparse / dense | dense s | sparse s | penalty |",
              "|---|---|---|---|---|---|"]
        for r in rows:
            L.append(f"| {r['cells']} x {r['peaks']} | {r['density']:.4f} | "
                     f"{r['flops_sparse'] / r['flops_dense']:.3f} | {_fmt(r['dense_s'])} | {_fmt(r['sparse_s'])} | "
                     f"{r['penalty']:.0f} |")
    text = "\n".join(L) + "\n"
    # Keep hand-written analysis: replace only what lies between the markers, if present.
    begin, end = "<!-- tables -->", "<!-- /tables -->"
    if os.path.exists(path) and begin in (old := open(path).read()) and end in old:
        text = old[: old.index(begin) + len(begin)] + "\n" + text + old[old.index(end):]
    with open(path, "w") as fh:
        fh.write(text)
    print(f"wrote {path}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("install-release")
    p = sub.add_parser("run")
    p.add_argument("specs", nargs="+")
    p.add_argument("--gram", default="auto")
    p.add_argument("--precision", default="highest",
                   help="SolverConfig.precision of the fit (none: JAX's default)")
    p.add_argument("--tag", default="", help="suffix of the result files, e.g. gpu")
    p.add_argument("--z-step", default="auto", choices=("auto", "free", "gradient"),
                   help="SolverConfig.z_step of the fit (gradient: the paper's two-product Z step)")
    p = sub.add_parser("crossover")
    p.add_argument("--tag", default="")
    p = sub.add_parser("report")
    p.add_argument("--out", default=os.path.join(ROOT, "docs", "performance.md"))
    a = ap.parse_args(argv)
    if a.cmd == "install-release":
        install_release()
    elif a.cmd == "run":
        run_specs(a.specs, a.gram, None if a.precision == "none" else a.precision, a.tag, a.z_step)
    elif a.cmd == "crossover":
        crossover(a.tag)
    else:
        report(a.out)


if __name__ == "__main__":
    main()
