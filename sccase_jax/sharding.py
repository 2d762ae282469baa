"""Run the same jitted fit with the n x n arrays split over a device mesh (cells axis).

Z, G, R (n x n) and H (k x n) are split by columns over a 1-D mesh named ``"cells"``; X
(m x n) is split by columns too; W, P, M and the hyperparameters are replicated.  The
unchanged :func:`sccase_jax.solver.run` is then called on the placed arrays: XLA's SPMD
partitioner inserts the collectives (the column-split ``G @ S`` needs one all-gather of S
per product; the scalar reductions of the line searches become all-reduces).  With d
devices each one holds about 1/d of every n x n array.

Several GPUs on one host::

    mesh = cell_mesh()                      # all local devices
    data, factors = shard_problem(prob.data, prob.factors, mesh)
    res = run(data, factors, prob.hp, config)

Several hosts: call ``jax.distributed.initialize()`` in every process first (coordinator
address, process count and id from the launcher or SLURM), build the same ``prob`` in
every process, then the same three lines; :func:`cell_mesh` then spans every process's
devices and :func:`shard_problem` gives each process only its own columns
(``jax.make_array_from_callback``).  See ``docs/scaling.md``.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from sccase_jax.params import Data, Factors

__all__ = ["cell_mesh", "place", "shard_problem"]

AXIS = "cells"


def cell_mesh(devices=None, axis: str = AXIS) -> Mesh:
    """A 1-D mesh over ``devices`` (default: every device of every process)."""
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.asarray(devices), (axis,))


def place(a, mesh: Mesh, spec: P):
    """Put ``a`` on ``mesh`` with ``spec``; each process supplies only its own shards."""
    if a is None:
        return None
    sharding = NamedSharding(mesh, spec)
    if isinstance(a, jax.Array) and a.is_fully_addressable and jax.process_count() == 1:
        return jax.device_put(a, sharding)
    host = np.asarray(jax.device_get(a))
    return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])


def shard_problem(data: Data, factors: Factors, mesh: Mesh, axis: str = AXIS):
    """``(data, factors)`` placed on ``mesh`` with every cells axis split over ``axis``.

    The number of cells must be a multiple of the mesh size.  A ``BCOO`` X (the sparse Gram
    path) is not supported here: use the dense G (``gram="dense"``).
    """
    n = factors.Z.shape[0]
    size = mesh.shape[axis]
    if n % size:
        raise ValueError(f"{n} cells do not split evenly over {size} devices; drop or pad cells")
    if not hasattr(data.X, "ndim") or type(data.X).__name__ == "BCOO":
        raise ValueError("shard_problem needs a dense X (use x_format='dense', gram='dense')")
    cols, rep = P(None, axis), P()
    data = Data(
        X=place(data.X, mesh, cols),
        G=place(data.G, mesh, cols),
        R=place(data.R, mesh, cols),
        P=place(data.P, mesh, rep),
        M=place(data.M, mesh, rep),
    )
    factors = Factors(
        W=place(factors.W, mesh, rep),
        H=place(factors.H, mesh, cols),
        Z=place(factors.Z, mesh, cols),
    )
    return data, factors
