"""A fit over (layout, terms) placed on 4 forced host devices (layout.shard) equals the
1-device fit, on the dense and the support layout."""

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
from test_over_terms import _problem
from sccase_jax.layout import DenseLayout, shard
from sccase_jax.params import SolverConfig
from sccase_jax.sharding import cell_mesh
from sccase_jax.solver.over_terms import run
from sccase_jax.terms import Batch, Objective, sccase_terms

assert len(jax.devices()) == 4, jax.devices()
out = {}
data, R, support, f, hp = _problem(seed=3, n=12, off=0.0, alpha=2.0)
objective = Objective((*sccase_terms(hp, depth=True), Batch(jnp.asarray(5.0))))
cfg = SolverConfig(max_iter=4, tol=0.0)
for name, layout, f0 in (("dense", DenseLayout.create(data.X, R), f),
                         ("support", support, f._replace(Z=support.gather(f.Z)))):
    one = run(objective, data, layout, f0, cfg)
    slayout, sdata, sf = shard(layout, data, f0, cell_mesh())
    many = run(objective, sdata, slayout, sf, cfg)
    out[name] = dict(
        loss_one=np.asarray(one.loss).tolist(), loss_many=np.asarray(many.loss).tolist(),
        err=max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
                for a, b in ((one.W, many.W), (one.H, many.H), (one.Z, many.Z))),
        z_devices=len(many.Z.sharding.device_set))
try:
    d2, R2, s2, f2, _ = _problem(seed=0, n=6, d=2)
    shard(s2, d2, f2._replace(Z=s2.gather(f2.Z)), cell_mesh())
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
                       timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("layout", ["dense", "support"])
def test_sharded_fit_over_terms_equals_single_device_fit(sharded_run, layout):
    r = sharded_run[layout]
    assert r["z_devices"] == 4
    np.testing.assert_allclose(r["loss_many"], r["loss_one"], rtol=1e-10)
    assert r["err"] <= 1e-10


def test_uneven_split_is_refused(sharded_run):
    assert "do not split evenly" in sharded_run["uneven"]
