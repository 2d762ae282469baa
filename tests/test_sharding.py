"""The fit with its n x n arrays split over 4 (forced host) devices equals the 1-device fit."""

import json
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))

CHILD = r"""
import json
import jax
jax.config.update("jax_enable_x64", True)
import numpy as np
from helpers import tiny_problem
from sccase_jax.params import SolverConfig
from sccase_jax.sharding import cell_mesh, shard_problem
from sccase_jax.solver import run

assert len(jax.devices()) == 4, jax.devices()
data, f0, hp = tiny_problem(seed=3, m=16, n=12, k=3)
cfg = SolverConfig(max_iter=5, tol=0.0)
one = run(data, f0, hp, cfg)
mesh = cell_mesh()
sdata, sf0 = shard_problem(data, f0, mesh)
assert len(sdata.G.sharding.device_set) == 4 and sdata.G.addressable_shards[0].data.shape == (12, 3)
many = run(sdata, sf0, hp, cfg)
try:
    shard_problem(*tiny_problem(seed=0, m=12, n=9, k=3)[:2], mesh)
    uneven = "accepted"
except ValueError as e:
    uneven = str(e)
print(json.dumps(dict(
    loss_one=np.asarray(one.loss).tolist(), loss_many=np.asarray(many.loss).tolist(),
    z_err=float(np.max(np.abs(np.asarray(one.factors.Z) - np.asarray(many.factors.Z)))),
    z_scale=float(np.max(np.abs(np.asarray(one.factors.Z)))),
    w_err=float(np.max(np.abs(np.asarray(one.factors.W) - np.asarray(many.factors.W)))),
    z_devices=len(many.factors.Z.sharding.device_set), uneven=uneven)))
"""


@pytest.fixture(scope="module")
def sharded_run():
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4").strip()
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join([HERE, os.path.dirname(HERE), env.get("PYTHONPATH", "")])
    p = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


def test_sharded_fit_equals_single_device_fit(sharded_run):
    import numpy as np

    r = sharded_run
    np.testing.assert_allclose(r["loss_many"], r["loss_one"], rtol=1e-10)
    assert r["z_err"] <= 1e-10 * r["z_scale"]
    assert r["w_err"] <= 1e-9


def test_result_stays_distributed(sharded_run):
    assert sharded_run["z_devices"] == 4


def test_uneven_split_is_refused(sharded_run):
    assert "do not split evenly" in sharded_run["uneven"]
