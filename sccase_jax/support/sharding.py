"""The support-restricted fit sharded over a device mesh on the cells axis.

Every per-cell array (the support ``idx``, its mask, the local Gram blocks ``L``, the ELL
values V of Z: all n x ...) is split on its leading axis over a 1-D mesh ``"cells"``
(:func:`sccase_jax.sharding.cell_mesh`); H (k x n) and a dense X (m x n) by columns; W, P,
M, ``off`` and a ``BCOO`` X are replicated.  The unchanged jitted
:func:`sccase_jax.support.solver.run` is then called on the placed arrays and XLA's SPMD
partitioner adds the communication: the gathers of H's and B's columns by the support's
indices (an all-gather of a k x n array, ``4 k n`` bytes), the segment sums of ``H Z^T``
and ``S H^T`` (a reduce-scatter of k x n) and the all-reduces of the scalars and k x k
Grams of the line searches.  Memory per device: 1/p of the O(n d^2) arrays plus the
replicated O((m + n) k).  Several hosts: ``jax.distributed.initialize()`` in every
process first; :func:`~sccase_jax.sharding.place` hands each process only its own rows
(docs/atlas.md).
"""

from __future__ import annotations

from jax.experimental import sparse as jsparse
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from sccase_jax.sharding import AXIS, place
from sccase_jax.support.objective import SupportData

__all__ = ["shard_support"]


def shard_support(data: SupportData, W, H, V, mesh: Mesh, axis: str = AXIS):
    """``(data, W, H, V)`` placed on ``mesh``, the cells axis split over ``axis``.

    The number of cells must be a multiple of the mesh size (drop or pad cells).
    """
    n = V.shape[0]
    size = mesh.shape[axis]
    if n % size:
        raise ValueError(f"{n} cells do not split evenly over {size} devices; drop or pad cells")
    rows, cols, rep = P(axis), P(None, axis), P()
    X = data.X if isinstance(data.X, jsparse.BCOO) else place(data.X, mesh, cols)
    data = SupportData(X=X, idx=place(data.idx, mesh, rows), mask=place(data.mask, mesh, rows),
                       L=place(data.L, mesh, rows), P=place(data.P, mesh, rep),
                       M=place(data.M, mesh, rep), off=place(data.off, mesh, rep))
    return data, place(W, mesh, rep), place(H, mesh, cols), place(V, mesh, rows)
