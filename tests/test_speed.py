"""Whole-process start-up: the persistent compilation cache and the command line's imports.

Correctness only (no timing): the command line stores its compiled programs, the solver's
included (progress lines come from the host, not from a callback inside the program, which
would keep it out of the cache), and a second run loads them; ``--help`` imports no JAX.
"""

import os
import subprocess
import sys

from sccase_jax.datasets import granja_bm600


def _cli(args, env):
    return subprocess.run([sys.executable, "-m", "sccase_jax", *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=600)


def test_cli_caches_every_compiled_program(tmp_path):
    a = granja_bm600()
    small = a[:120, :1500].copy()
    small.write_h5ad(tmp_path / "in.h5ad")
    env = dict(os.environ, SCCASE_JAX_CACHE=str(tmp_path / "cache"))
    env.pop("XLA_FLAGS", None)
    r = _cli(["enhance", tmp_path / "in.h5ad", tmp_path / "a.h5ad", "--k", "3", "--max-iter", "3"], env)
    assert r.returncode == 0, r.stderr
    first = sorted(os.listdir(tmp_path / "cache"))
    assert any("nmf" in f for f in first) and any("steps" in f for f in first), first
    r = _cli(["enhance", tmp_path / "in.h5ad", tmp_path / "b.h5ad", "--k", "3", "--max-iter", "3"], env)
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(tmp_path / "cache")) == first  # everything was found, nothing new
    off = dict(env, SCCASE_JAX_CACHE="off")
    r = _cli(["enhance", tmp_path / "in.h5ad", tmp_path / "c.h5ad", "--k", "3", "--max-iter", "3",
              "--quiet"], off)
    assert r.returncode == 0 and sorted(os.listdir(tmp_path / "cache")) == first


def test_help_imports_no_jax():
    code = ("import sys, runpy; sys.argv = ['sccase-jax', '--help']\n"
            "try:\n    runpy.run_module('sccase_jax', run_name='__main__')\n"
            "except SystemExit:\n    pass\n"
            "assert 'jax' not in sys.modules, 'jax imported'\n"
            "assert 'anndata' not in sys.modules, 'anndata imported'\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "enhance" in r.stdout
