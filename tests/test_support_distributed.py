"""The support-restricted fit over two jax.distributed processes (2 CPU devices each)
equals the single-process fit."""

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))

CHILD = r"""
import json, sys
import jax
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.config.update("jax_enable_x64", True)
jax.distributed.initialize(sys.argv[1], num_processes=2, process_id=int(sys.argv[2]))
import numpy as np
from jax.experimental import multihost_utils
from test_support import small_problem
from sccase_jax.layout import shard
from sccase_jax.params import SolverConfig
from sccase_jax.sharding import cell_mesh
from sccase_jax.solver.over_terms import run

assert len(jax.devices()) == 4 and len(jax.local_devices()) == 2
obj, data, layout, f, hp = small_problem(7, m=20, n=16, d=5, k=3, lam=30.0, off=0.0)
slayout, sdata, sf = shard(layout, data, f, cell_mesh())
res = run(obj, sdata, slayout, sf, SolverConfig(max_iter=6, tol=0.0))
Z = multihost_utils.process_allgather(res.Z, tiled=True)
print(json.dumps(dict(loss=np.asarray(res.loss).tolist(), Z=np.asarray(Z).tolist())))
"""


def _free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not hasattr(jax.config, "jax_cpu_collectives_implementation"),
                    reason="needs JAX's CPU collectives (gloo)")
def test_two_process_fit_equals_single_process_fit():
    from test_support import small_problem

    from sccase_jax.params import SolverConfig
    from sccase_jax.solver.over_terms import run

    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2").strip()
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join([HERE, os.path.dirname(HERE), env.get("PYTHONPATH", "")])
    addr = f"localhost:{_free_port()}"
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, addr, str(i)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    outs = [p.communicate(timeout=240) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    obj, data, layout, f, hp = small_problem(7, m=20, n=16, d=5, k=3, lam=30.0, off=0.0)
    one = run(obj, data, layout, f, SolverConfig(max_iter=6, tol=0.0))
    for out, _ in outs:
        r = json.loads(out.strip().splitlines()[-1])
        np.testing.assert_allclose(r["loss"], np.asarray(one.loss), rtol=1e-10)
        np.testing.assert_allclose(r["Z"], np.asarray(one.Z), rtol=1e-9, atol=1e-12)
