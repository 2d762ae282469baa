"""The thin products of an iteration, jitted on their own, in the forms XLA could be given.

At the shape of the real 2k data (8,742 peaks x 2,055 cells, k = 6) the W step reads the
dense X twice, for ``X (S H^T)`` and ``W^T X``; the Z and H steps multiply thin k x n
matrices with n x n ones (``S H^T``, ``H S``, ``H Q^T``).  This times each in the layouts
and paddings one could choose (best and median of 30 calls, one process; inputs random,
X 10 % nonzero stored dense) and prints the largest difference from the plain form.

    python -m experiments.archive.thin_products    # output: experiments/results/thin_products.txt

Measured: padding k from 6 to 8 made ``X A`` about 0.5 ms faster (same values) and
``W^T X`` 2 ms slower; no other form beat the solver's.  Inside a fit the two passes over X
take 3.7-4.8 ms each, not 2.0-2.5 ms (docs/developers.md, section 8).
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

M, N, K = 8742, 2055, 6


def bench(name, f, *args, reps=30):
    g = jax.jit(f)
    out = g(*args)
    out.block_until_ready()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        g(*args).block_until_ready()
        ts.append(time.perf_counter() - t)
    print(f"{name:32s} best {min(ts) * 1e3:6.2f} ms  median {np.median(ts) * 1e3:6.2f} ms")
    return out


def pad_cols(A, kk):
    return jnp.pad(A, ((0, 0), (0, kk - A.shape[1])))


def main():
    rng = np.random.default_rng(0)
    X = jnp.asarray(rng.random((M, N), dtype=np.float32) * (rng.random((M, N)) < 0.1))
    W = jnp.asarray(rng.random((M, K), dtype=np.float32))
    A = jnp.asarray(rng.random((N, K), dtype=np.float32))
    S = jnp.asarray(rng.random((N, N), dtype=np.float32))
    H = jnp.asarray(rng.random((K, N), dtype=np.float32))
    print(f"X {M} x {N} (dense float32), k = {K}; JAX {jax.__version__} on {jax.devices()[0]}")

    r0 = bench("W.T @ X (the solver's)", lambda W, X: W.T @ X, W, X)
    bench("(X.T @ W).T", lambda W, X: (X.T @ W).T, W, X)
    for kk in (8, 16):
        r = bench(f"W.T @ X, k padded to {kk}", lambda W, X, kk=kk: (pad_cols(W, kk).T @ X)[:K], W, X)
        print(f"    max difference {float(jnp.max(jnp.abs(r - r0))):.2e}")
    bench("W^T stored k x m, @ X", lambda Wt, X: Wt @ X, W.T.copy(), X)
    r0 = bench("X @ A (the solver's)", lambda X, A: X @ A, X, A)
    for kk in (8, 16):
        r = bench(f"X @ A, k padded to {kk}", lambda X, A, kk=kk: (X @ pad_cols(A, kk))[:, :K], X, A)
        print(f"    max difference {float(jnp.max(jnp.abs(r - r0))):.2e}")
    bench("S @ H.T", lambda S, H: S @ H.T, S, H)
    bench("S @ H.T, k padded to 16", lambda S, H: (S @ pad_cols(H.T, 16))[:, :K], S, H)
    bench("H @ S", lambda H, S: H @ S, H, S)
    bench("H @ S.T", lambda H, S: H @ S.T, H, S)
    bench("(S @ H.T).T", lambda H, S: (S @ H.T).T, H, S)
    bench("S + 1 (a plain n x n pass)", lambda S: S + 1, S)


if __name__ == "__main__":
    main()
