"""Fingerprints of fit, sweep, enhance and the command line on real data, recorded once.

``python tests/golden.py --record`` writes ``tests/data/golden.json``: for the bundled
Granja bm600 data and the shared D6T1 2k data, the SHA-256 of every output array (W, H, Z,
loss history, enhanced layer, ...) of ``sccase_jax.fit``, ``sccase_jax.sweep``,
``sccase_jax.enhance`` and ``sccase-jax enhance``, with a few summary numbers and the
platform they were computed on.  ``tests/test_golden.py`` recomputes them: a change of the
code's structure must leave every bit of every result as it was.  Bits are compared where
the platform (CPU, jax and jaxlib versions) is the recording's; elsewhere XLA may round
differently and the summary numbers are compared to a relative 1e-4 instead.  To compare
bits on another platform, record the earlier commit there and point ``SCCASE_GOLDEN`` at
that record (``git worktree add /tmp/base REV && cd /tmp/base && python tests/golden.py
--record``, then ``SCCASE_GOLDEN=/tmp/base/tests/data/golden.json python -m pytest
tests/test_golden.py``).

Everything here goes through the public API only (``sccase_jax.fit`` etc. and the
command line), so it survives any reorganisation of the modules.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import platform
import subprocess
import sys

import numpy as np
import scipy.sparse as sp

HERE = pathlib.Path(__file__).resolve().parent
# SCCASE_GOLDEN names another record (e.g. one made on this machine from an earlier commit,
# to compare bits where the committed record's platform differs).
GOLDEN = pathlib.Path(os.environ.get("SCCASE_GOLDEN", HERE / "data" / "golden.json"))
# A copy of ../shared/data/granja2019_D6T1_2k.h5ad (1.6 MB) is kept here, so that a clean
# clone runs every comparison on the same bytes.
DATA = HERE / "data"

# The settings whose defaults changed after the record was made, pinned to the values the
# record was made with, so that every recorded computation stays the same one: the rule on
# the iterate (x_tol, default 1e-4 since; the record's fits stop on the relative change of F
# alone).
PINNED = {"x_tol": 0.0}
PINNED_FLAGS = ["--x-tol", "0"]
# ... and, for enhance and the command line, the output's neighbours: "auto" was 300 on both
# recorded sets (600 and 2,055 cells) and follows the cells' entries since.
PINNED_OUTPUT = {"neighbors": 300}
PINNED_OUTPUT_FLAGS = ["--neighbors", "300"]

# dataset -> (file or None for the bundled bm600, number of components)
DATASETS = {"bm600": (None, 7), "D6T1_2k": ("granja2019_D6T1_2k.h5ad", 12)}


def platform_id() -> dict:
    import jax
    import jaxlib

    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as fh:
            lines = fh.read().splitlines()
        cpu = next(ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name"))
        flags = next(ln.split(":", 1)[1].split() for ln in lines if ln.startswith("flags"))
        cpu += " | " + hashlib.sha256(" ".join(sorted(flags)).encode()).hexdigest()[:12]
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "machine": platform.machine(), "jax": jax.__version__,
            "jaxlib": jaxlib.__version__, "numpy": np.__version__}


def fingerprint(a) -> dict:
    """SHA-256 of an array's bytes (dense or scipy sparse) with its shape, dtype and sums."""
    if sp.issparse(a):
        a = sp.csr_matrix(a)
        parts = [a.data, a.indices, a.indptr]
        shape, dtype, total = a.shape, a.dtype, float(a.sum(dtype=np.float64))
    else:
        a = np.ascontiguousarray(np.asarray(a))
        parts = [a]
        shape, dtype, total = a.shape, a.dtype, float(np.nansum(a, dtype=np.float64))
    h = hashlib.sha256()
    for p in parts:
        h.update(np.ascontiguousarray(p).tobytes())
    return {"sha256": h.hexdigest(), "shape": list(shape), "dtype": str(dtype), "sum": total}


def load(name: str):
    import anndata as ad

    from sccase_jax.datasets import granja_bm600

    file, k = DATASETS[name]
    return (granja_bm600() if file is None else ad.read_h5ad(DATA / file)), k


def run_fit(name: str) -> dict:
    import sccase_jax

    adata, k = load(name)
    X, _, _ = sccase_jax.preprocess(adata.X.T)
    res = sccase_jax.fit(X, k, seed=0, dtype="float32", **PINNED)
    return {"W": fingerprint(res.W), "H": fingerprint(res.H), "Z": fingerprint(res.Z),
            "loss": fingerprint(np.asarray(res.loss)), "n_iter": int(res.n_iter),
            "status": str(res.status), "initial_loss": float(res.initial_loss)}


def run_sweep(name: str) -> dict:
    import sccase_jax

    adata, k = load(name)
    X, _, _ = sccase_jax.preprocess(adata.X.T)
    res = sccase_jax.sweep(X, lams=[1e5, 1e6], ks=[k - 2, k], seed=0, max_iter=5,
                           dtype="float32", **PINNED)
    return {"final_loss": fingerprint(np.asarray(res.final_loss)),
            "n_iter": np.asarray(res.n_iter).astype(int).tolist(),
            "Z": fingerprint(np.asarray(res.Z)), "W": fingerprint(np.asarray(res.W)),
            "H": fingerprint(np.asarray(res.H))}


# Keys written since the record was made, left out of the comparison on purpose: the
# recorded keys must stay bit for bit as they were, and a new key has no recorded value.
# obsp/sccase_weights (the output weights B, stored so that the layer can be computed on
# demand) is checked against the recorded layer itself by tests/test_enhanced.py, which
# recomputes the layer from it bit for bit.
ADDED_KEYS = frozenset({"obsp/sccase_weights"})


def _anndata(out) -> dict:
    keys = {"X": out.X, **{f"layers/{k}": out.layers[k] for k in out.layers.keys()},
            **{f"obsm/{k}": out.obsm[k] for k in out.obsm.keys()},
            **{f"varm/{k}": out.varm[k] for k in out.varm.keys()},
            **{f"obsp/{k}": out.obsp[k] for k in out.obsp.keys()}}
    keys = {k: v for k, v in keys.items() if k not in ADDED_KEYS}
    rec = {k: fingerprint(v) for k, v in keys.items()}
    info = out.uns["sccase"]
    rec["loss"] = fingerprint(np.asarray(info["loss"], np.float64))
    rec["n_iter"] = int(info["n_iter"])
    rec["obs_names"] = hashlib.sha256("\n".join(out.obs_names).encode()).hexdigest()
    rec["var_names"] = hashlib.sha256("\n".join(out.var_names).encode()).hexdigest()
    return rec


def run_enhance(name: str) -> dict:
    import sccase_jax

    adata, k = load(name)
    return _anndata(sccase_jax.enhance(adata, k, seed=0, dtype="float32", **PINNED,
                                       **PINNED_OUTPUT))


def run_cli(name: str, workdir) -> dict:
    import anndata as ad

    adata, k = load(name)
    workdir = pathlib.Path(workdir)
    inp, out = workdir / f"{name}_in.h5ad", workdir / f"{name}_out.h5ad"
    adata.write_h5ad(inp)
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    r = subprocess.run([sys.executable, "-m", "sccase_jax.cli", "enhance", str(inp), str(out),
                        "--k", str(k), "--max-iter", "10", "--quiet", *PINNED_FLAGS,
                        *PINNED_OUTPUT_FLAGS], env=env,
                       capture_output=True, text=True, timeout=1200)
    if r.returncode:
        raise RuntimeError(f"sccase-jax enhance failed: {r.stderr[-2000:]}")
    return _anndata(ad.read_h5ad(out))


RUNS = {"fit": run_fit, "sweep": run_sweep, "enhance": run_enhance, "cli": run_cli}


def record(workdir) -> dict:
    out = {"platform": platform_id(), "results": {}}
    for name in DATASETS:
        for entry, fn in RUNS.items():
            args = (name, workdir) if entry == "cli" else (name,)
            out["results"][f"{entry}/{name}"] = fn(*args)
            print(f"recorded {entry}/{name}", file=sys.stderr, flush=True)
    return out


if __name__ == "__main__":
    import tempfile

    import jax

    # The tests run with 64-bit JAX on (tests/conftest.py), which changes the draws of
    # the random mask: record in the same mode (every fit here is float32 all the same).
    jax.config.update("jax_enable_x64", True)
    if "--record" not in sys.argv:
        sys.exit("usage: python tests/golden.py --record")
    with tempfile.TemporaryDirectory() as d:
        rec = record(d)
    GOLDEN.parent.mkdir(exist_ok=True)
    GOLDEN.write_text(json.dumps(rec, indent=1, sort_keys=True) + "\n")
    print(f"wrote {GOLDEN}", file=sys.stderr)
