"""A lower estimate of what one solver iteration can cost on this machine, against its product.

``experiments/iteration_profile.py`` times the solver's iteration against the one n x n x n
product it cannot avoid.  This script times a *skeleton* of that iteration inside one
jitted ``lax.while_loop``: the same product, the same thin products over the dense X and
over n x n arrays that the method needs every iteration, and only the fewest n x n
elementwise passes and reductions that any implementation of the guarded free Z step, the
W step and the H step must make (each array read once per use, nothing recomputed, no
backtracking trials, no crossing test, no correction):

- Z step: form the product's operand ``P o R`` from Z, ``G S`` and R (1 pass); the product
  ``G (P o R)``; its step length ``<P o R, G (P o R)>`` (1 reduction); the guard's change
  of F at the trial (1 reduction); the new Z and the new ``G S`` (2 passes);
- W step: ``S = Z o R`` (1 pass), ``S H^T`` (thin), ``X (S H^T)`` and ``W^T X`` (the two
  passes over the dense X);
- H step: ``B S`` (thin), ``Q = Z - H^T H`` (1 pass), ``H Q``, ``H Q^T`` (thin), ``||Q||^2``
  (1 reduction); F's ``<S, G S>`` (1 reduction).

Its arithmetic is not the solver's (the values are meaningless, kept finite and from being
optimised away), only its memory traffic and products are.  An iteration of any
implementation of the method in XLA costs at least about this: the floor of
``iteration / product`` that the 1.3x target is measured against.  It is timed on real
problems, beside the solver and the product in the same process, by

    python -m experiments.iteration_profile real2k synth4k --floor    # experiments/results/iteration_floor.txt

It is not run on its own.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from jax import lax

from sccase_jax.ops import inner


@partial(jax.jit, static_argnames=("iters", "product", "x_passes"))
def skeleton(G, X, R, Z, GS, W, H, iters, product=True, x_passes=True):
    """``iters`` skeleton iterations; ``product=False`` / ``x_passes=False`` leave out the
    n x n x n product (``G (P o R)`` becomes ``P o R`` plus one pass) or the two passes
    over X (``X (S H^T)`` and ``W^T X`` become thin stand-ins of the same shapes)."""
    zero = jnp.zeros((), Z.dtype)
    eps = jnp.asarray(1e-7, Z.dtype)

    def body(_, c):
        Z, GS, W, H, acc = c
        PR = jnp.where(R & (Z > 0), GS - Z, zero)  # the operand: 1 pass
        GP = G @ PR if product else PR + 1  # the product
        d = eps / (1 + jnp.abs(inner(PR, GP)))  # step length: 1 reduction (as ops.inner:
        # a plain sum fused onto the product would take it off XLA:CPU's fast matmul path)
        dF = jnp.sum(jnp.where(R, (Z - d * PR) * GP, zero))  # the guard's change: 1 reduction
        Z = jnp.maximum(Z - (d + eps * dF) * PR, 0)  # new Z: 1 pass
        GS = GS - d * GP  # new G S: 1 pass
        S = jnp.where(R, Z, zero)  # 1 pass
        SHt = S @ H.T  # thin
        E = X @ SHt if x_passes else jnp.tile(SHt, (X.shape[0] // SHt.shape[0] + 1, 1))[: X.shape[0]]
        W = jnp.maximum(W - eps * E, 0)
        B = W.T @ X if x_passes else W[: H.shape[1]].T  # W^T X (dense X)
        BS = B @ S  # thin
        Q = Z - H.T @ H  # 1 pass (k rank-one terms)
        HQ = H @ Q  # thin
        HQt = H @ Q.T  # thin
        qq = jnp.vdot(Q, Q)  # 1 reduction
        f = jnp.vdot(S, GS)  # F's <S, G S>: 1 reduction
        H = jnp.maximum(H - eps * (HQ + HQt - BS) / (1 + qq), 0)
        return Z, GS, W, H, acc + f

    return lax.fori_loop(0, iters, body, (Z, GS, W, H, zero))

