"""The support-restricted fit sharded over 4 forced host devices equals the 1-device fit."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))

CHILD = r"""
import json
import jax
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp
import numpy as np
from test_support import small_problem
from sccase_jax.params import SolverConfig
from sccase_jax.sharding import cell_mesh
from sccase_jax.support.sharding import shard_support
from sccase_jax.support.solver import run

assert len(jax.devices()) == 4, jax.devices()
out = {}
for off in (1.0, 0.0):
    data, W, H, V, hp = small_problem(7, m=20, n=16, d=5, k=3, lam=30.0, off=off)
    cfg = SolverConfig(max_iter=6, tol=0.0, h_step="exact" if off else "backtrack")
    one = run(data, W, H, V, hp, cfg)
    sdata, sW, sH, sV = shard_support(data, W, H, V, cell_mesh())
    assert sdata.L.addressable_shards[0].data.shape == (4, 5, 5)
    many = run(sdata, sW, sH, sV, hp, cfg)
    out[str(off)] = dict(
        loss_one=np.asarray(one.loss).tolist(), loss_many=np.asarray(many.loss).tolist(),
        z_err=float(np.max(np.abs(np.asarray(one.Z) - np.asarray(many.Z)))),
        h_err=float(np.max(np.abs(np.asarray(one.H) - np.asarray(many.H)))),
        w_err=float(np.max(np.abs(np.asarray(one.W) - np.asarray(many.W)))),
        z_devices=len(many.Z.sharding.device_set))
try:
    shard_support(*small_problem(0, n=6, d=2)[:4], cell_mesh())
    out["uneven"] = "accepted"
except ValueError as e:
    out["uneven"] = str(e)
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def sharded_run():
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4").strip()
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join([HERE, os.path.dirname(HERE), env.get("PYTHONPATH", "")])
    p = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("off", ["1.0", "0.0"])
def test_sharded_support_fit_equals_single_device_fit(sharded_run, off):
    r = sharded_run[off]
    assert r["z_devices"] == 4
    np.testing.assert_allclose(r["loss_many"], r["loss_one"], rtol=1e-10)
    assert r["z_err"] <= 1e-10 and r["h_err"] <= 1e-10 and r["w_err"] <= 1e-10


def test_uneven_split_is_refused(sharded_run):
    assert "do not split evenly" in sharded_run["uneven"]
