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
implementation of the method in XLA costs at least about this; the ratio printed is the
floor of ``iteration / product`` that the 1.3x target is measured against.  Shapes: the
real 2k data after the package's preprocessing (8,742 peaks x 2,055 cells, k = 6) and the
synthetic 4k and 8k data of ``benchmark.py`` (19,134 x 4,000 and 25,310 x 8,000, k = 9);
inputs random, X dense.  Loops of ``--loop`` iterations against as many products in a
loop, interleaved, best of ``--reps``.

    python experiments/iteration_floor.py real2k synth4k      # experiments/results/iteration_floor.txt
"""

from __future__ import annotations

import argparse
import time
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from sccase_jax.ops import inner

SHAPES = {"real2k": (8742, 2055, 6), "synth2k": (12672, 2000, 9),
          "synth4k": (19134, 4000, 9), "synth8k": (25310, 8000, 9)}


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


@partial(jax.jit, static_argnames="iters")
def products(G, A, iters):
    # G's largest eigenvalue is about 1 (see run): the iterates neither overflow nor decay,
    # and no scaling pass is fused onto the product (which XLA:CPU would take off its
    # fast matmul path).
    return lax.fori_loop(0, iters, lambda _, A: G @ A, A)


def timed(f, *args, **kw):
    t = time.perf_counter()
    jax.block_until_ready(f(*args, **kw))
    return time.perf_counter() - t


def run(name, loop, reps):
    m, n, k = SHAPES[name]
    rng = np.random.default_rng(0)
    f32 = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731
    X = f32(rng.random((m, n), dtype=np.float32) * (rng.random((m, n)) < 0.05))
    A = rng.random((n, n), dtype=np.float32)
    G = f32((A + A.T) / n)  # entries about 1 / n: largest eigenvalue about 1
    del A
    R = jnp.asarray(rng.random((n, n)) < 0.8)
    Z = f32(rng.random((n, n), dtype=np.float32) / n)
    GS = G @ jnp.where(R, Z, 0)
    W = f32(rng.random((m, k), dtype=np.float32))
    H = f32(rng.random((k, n), dtype=np.float32))
    args = (G, X, R, Z, GS, W, H)
    for it in (1, 1 + loop):  # compile
        timed(skeleton, *args, iters=it)
        timed(products, G, Z, iters=it)
    sk, pr = [], []
    for _ in range(reps):
        sk.append(timed(skeleton, *args, iters=1 + loop) - timed(skeleton, *args, iters=1))
        pr.append(timed(products, G, Z, iters=1 + loop) - timed(products, G, Z, iters=1))
    it, p = min(sk) / loop, min(pr) / loop
    print(f"| {name} ({m} x {n}, k = {k}) | {it:.4g} | {p:.4g} | {it / p:.2f} |", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data", nargs="+", choices=sorted(SHAPES))
    ap.add_argument("--loop", type=int, default=5)
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args()
    print(f"JAX {jax.__version__}, {jax.devices()[0].device_kind}; loops of {a.loop}, best of {a.reps}")
    print("| data | skeleton iteration s | product s | floor of iteration / product |")
    print("|---|---|---|---|")
    for name in a.data:
        run(name, a.loop, a.reps)


if __name__ == "__main__":
    main()
