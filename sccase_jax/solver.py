"""The alternating solver: ``init_state``, ``update`` (one Z, W, H sweep) and ``run``.

One iteration, in Gram form (``G = X^T X`` fixed, nothing m x n is formed):

1. Z: gradient D from the cached ``G S``; exact quadratic step along D without the entries
   held at the bound (one ``G (P o R)`` product); projected, guarded move; the cache is
   updated from that product plus the projection's correction on the few columns where an
   entry is cut to 0 (``z_step="free"``, docs/model.md).  ``z_step="gradient"``: the
   paper's step along D, whose trial forms ``G S`` by a second product; ``"auto"``
   (default): the paper's step while the moves are large (from the start), then free.
2. W: gradient from ``E = X S H^T`` (m x k); exact step for the reference block (if any),
   then for the free block; each projected and guarded.  Then ``B = W^T X`` (k x n).
3. H: gradient from ``B S``; backtracking from ``h_step_init`` (paper) or the exact quartic
   step; trials cost k x n^2 each.

Every guarded move is accepted on ``F(new) - F(old)`` computed from differences of the
iterates (for Z the exact expansion ``<D, dZ> + <dS, G Sc - G S> + lam ||dZ||^2``, and the
like), never by comparing two rounded values of F: near convergence a step changes F far
below its float32 resolution, and comparing rounded values rejected good Z steps (each
rejected trial costs one more n x n x n product: 2.4x slower iterations measured at 4,000
cells) and froze Z.

So an iteration costs one n x n x n product (two with ``z_step="gradient"``, in the rough
first iterations and in those that form ``G S`` afresh) plus O(n^2 k + nnz(X) k).
Memory: besides the data (X, G and the boolean mask R) and the iterate Z (in the buffer of
Z0 with :data:`run_donated`), XLA's buffer plan of the whole fit holds about four and a
half n x n arrays of working memory with the default Z step and four with the paper's
(XLA:CPU, ``experiments/memory_plan.py``): in the Z step the cache ``G S``, the gradient D,
and a product's operand and result (``P o R`` and ``G (P o R)``, which lives through the
line search); in the W and H steps the new Z (the previous one is kept for the non-finite
guard), its ``G S``, and ``S`` or ``Q = Z - H^T H``.  What keeps it there:
the mask is applied as a select (:func:`~sccase_jax.ops.masked`, no float copy of R); a Z
trial needs neither Q nor its change of S (:func:`_z_step`); masked reductions are one
elementwise pass into a dead buffer (:func:`~sccase_jax.ops.select_sum`); the H step's Q
does not share ``H^T H`` with the Z step (:func:`~sccase_jax.ops.gap`); the non-finite
guard does not keep the previous ``G S`` (:func:`advance`); three orderings that XLA
would otherwise choose differently: the gradient is formed inside each branch of the
``"auto"`` cond (:func:`_z_step`), the free step's two masked reductions run one after the
other (:func:`_z_step_free`), and Q is formed only once S is no longer needed
(:func:`_h_step`).  Through sparse X (no G) the plan is about the same (4.1-4.3 n x n
arrays of temporaries at 1,000-2,000 cells): the products write into their operand's
buffer (:func:`~sccase_jax.ops.gram_matmul`) and the Z step forms its gradient afresh at
each use instead of keeping it (:class:`_Direction`).  ``run`` executes
the whole fit as one :func:`jax.lax.while_loop`, stopping on ``|dF| / |F| < tol``, at
``max_iter``, or on a non-finite F (the last finite iterate is kept and reported).

That loop is generic: :func:`tracked_fields`, :func:`advance`, :func:`drive` and
:func:`to_result` hold the history, stopping rule and non-finite guard for any state
NamedTuple, so other solvers (the optax-driven one in :mod:`sccase_jax.variants`, the
masked sweep members in :mod:`sccase_jax.sweeps`) share them with :func:`update`.
"""

from __future__ import annotations

import contextlib
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from sccase_jax.gradients import grad_w_gram, grad_z_gram
from sccase_jax.losses import gram_loss
from sccase_jax.ops import gap, gram_matmul, masked, minus_outer, select_sum, wt_x, x_matmul
from sccase_jax.params import Data, Factors, Hyperparams, SolverConfig
from sccase_jax.steps import (
    exact_h_step,
    exact_w_step,
    exact_z_step,
    line_search,
    quartic_h_coefficients,
    z_step_length,
)

__all__ = [
    "CONVERGED",
    "MAX_ITER",
    "NONFINITE",
    "RUNNING",
    "Result",
    "SolverState",
    "advance",
    "drive",
    "init_state",
    "run",
    "run_donated",
    "to_result",
    "tracked_fields",
    "update",
]

RUNNING, CONVERGED, MAX_ITER, NONFINITE = 0, 1, 2, 3


class SolverState(NamedTuple):
    """Loop carry.  ``GS = G (Z o R)`` and ``B = W^T X`` are caches of the current point."""

    W: Any
    H: Any
    Z: Any
    GS: Any
    B: Any
    GS_drift: Any  # sum of |d| ||P|| of the Z moves since G S was last formed by a product
    rough: Any  # the last Z move was large: the next one takes the paper's step (z_step="auto")
    loss: Any
    initial_loss: Any
    rel_change: Any
    iteration: Any
    loss_history: Any  # (max_iter,), NaN where not reached
    status: Any


class Result(NamedTuple):
    """Outcome of :func:`run`.

    ``loss_history[:num_steps]`` holds F after each iteration; ``status`` is one of
    ``CONVERGED``, ``MAX_ITER`` or ``NONFINITE``.
    """

    factors: Factors
    loss_history: Any
    initial_loss: Any
    num_steps: Any
    converged: Any
    status: Any
    rel_change: Any  # |change of F| / |F| of the last iteration (inf before any)


def _sq(A):
    return jnp.vdot(A, A)


def init_state(data: Data, factors: Factors, hp: Hyperparams, config: SolverConfig):
    """State at the starting point; a non-finite F0 marks it ``NONFINITE`` at once."""
    W, H, Z = factors
    dtype = Z.dtype
    S = masked(Z, data.R)
    GS = gram_matmul(data, S)
    B = wt_x(data.X, W)
    F = gram_loss(S, GS, B, W, H, Z, data.P, data.M, hp)
    return SolverState(
        W=W, H=H, Z=Z, GS=GS, B=B, GS_drift=jnp.zeros((), dtype), rough=jnp.asarray(True),
        **tracked_fields(F, dtype, config),
    )


# Columns of the projection's correction multiplied per block in the "free" Z step
# (_clip_correction).  At 2,000 cells on the 2-core CPU one block took 9.5 ms (the usual
# case after the first iterations: none to a few entries cross zero), all 2,000 columns in
# blocks 121 ms against 91 ms for the whole product (blocks of 32: 171 ms; 256: 19 ms for
# one block).
Z_CLIP_BLOCK = 128

# G S is formed by a product again once the "free" Z moves since the last product add up to
# this fraction of ||Z|| (see _z_step).
Z_REFRESH = 0.1


class _Direction(NamedTuple):
    """The Z step's gradient D: ``full(tag)`` (n x n) and ``cols(idx)`` (gathered columns).

    With a formed G both return the one array D.  Through sparse X (``Data.G is None``) D is
    never kept: each call forms it afresh from ``G S``, Z, B and H (one elementwise pass of
    rank-k terms, :func:`~sccase_jax.gradients.grad_z_gram`) and XLA fuses it into the pass
    that uses it, ``cols`` only on the gathered columns.  ``tag`` (a runtime scalar of the
    place of use: the trial's step, the product just taken) ties that copy to its place:
    every operand gets a -0.0 computed from it (:func:`_negative_zero`, the same bits), so
    XLA neither merges two uses into one stored array (CSE) nor hoists one out of the line
    search (an ``optimization_barrier`` does neither on XLA:CPU: it is gone before CSE).
    The values are those of the stored D to the bit.  Why: the Z step then holds ``G S``,
    the product's operand-then-result (gram_matmul writes it in place) and a pass, not D
    besides.  With D stored, the sparse fit needed the same four n x n arrays as the dense
    path at once, but the product's block temporaries and long-lived small buffers between
    them made XLA's heap place a fifth (5.25 n^2 of temporaries at 1,000 cells, 5.13 at
    2,000, against 4.25 and 4.12 this way).  A use costs one more pass over G S and Z.
    """

    full: Any
    cols: Any


def _negative_zero(tag, dtype):
    """-0.0 (``x + -0.0`` is x to the bit, -0.0 included) from the bits of the runtime
    scalar ``tag``: XLA can neither fold it nor share it between two tags."""
    i = lax.bitcast_convert_type(jnp.asarray(tag, jnp.float32), jnp.int32)
    sign = jnp.int32(-(2**31))
    return lax.bitcast_convert_type((i | sign) & sign, jnp.float32).astype(dtype)


def _direction(state, data, hp):
    """The :class:`_Direction` of the state's gradient."""
    H, Z, GS, B = state.H, state.Z, state.GS, state.B
    if data.G is not None:
        D = grad_z_gram(GS, B, H, gap(Z, H), data.R, hp.lam)
        return _Direction(lambda tag=None: D, lambda idx: D[:, idx])

    def full(tag=None):
        if tag is None:
            return grad_z_gram(GS, B, H, gap(Z, H), data.R, hp.lam)
        # Every operand carries the tag, so that no part of D (such as one of its rank-one
        # terms) is independent of it: XLA would hoist such a part out of a loop and keep
        # it as one more n x n array.
        z = _negative_zero(tag, GS.dtype)
        Bz, Hz = B + z, H + z
        return grad_z_gram(GS + z, Bz, Hz, gap(Z + z, Hz), data.R, hp.lam)

    def cols(idx):
        # grad_z_gram on the columns idx (the gap's too): the same operations per entry.
        Hc = H[:, idx]
        return grad_z_gram(GS[:, idx], B, Hc, minus_outer(Z[:, idx], H, Hc), data.R[:, idx], hp.lam)

    return _Direction(full, cols)


def _crossing_columns(R, Z, D, d, c):
    """Columns where ``max(Z - d D, 0)`` cuts a positive entry (padded indices), and their count."""
    n = Z.shape[1]
    # 0 < Z < d D, written so that no part of it is independent of d (XLA would hoist such a
    # part out of the line search and keep it as one more n x n mask).
    cross = jnp.any((jnp.minimum(Z, d * D - Z) > 0) & R, axis=0)
    count = jnp.sum(cross, dtype=jnp.int32)
    cols = jnp.nonzero(cross, size=n, fill_value=0)[0].astype(jnp.int32)
    return jnp.concatenate([cols, jnp.zeros(c, jnp.int32)]), count


def _correction_block(data, Z, Dir, d, cols, valid):
    """``G (C o R)`` and ``dS`` on the gathered columns ``cols`` (``valid`` marks real ones);
    ``Dir`` the gradient's :class:`_Direction`."""
    zero = jnp.zeros((), Z.dtype)
    keep = data.R[:, cols] & valid[None, :]
    Zb = Z[:, cols]
    Y = Zb - d * Dir.cols(cols)
    GC = gram_matmul(data, jnp.where(keep & (Zb > 0), jnp.maximum(-Y, 0), zero))
    return GC, jnp.where(keep, jnp.maximum(Y, 0) - Zb, zero)


def _clip_correction(data, Z, Dir, d):
    """``(<dS, G (C o R)>, cols, count, GC)`` for a Z trial at step ``d`` along the gradient
    ``D`` of the :class:`_Direction` ``Dir``.

    ``<dS, G (C o R)>`` is the projection's part of ``<dS, G dS>``; ``cols`` (padded) and
    ``count`` are the columns where an entry crosses zero (:func:`_crossing_columns`) and
    ``GC`` the product ``G (C o R)`` on the first :data:`Z_CLIP_BLOCK` of them, which is
    all of ``G (C o R)`` when they fit in one block (zeros when nothing crosses).

    The trial is ``max(Z - d P, 0)``, ``P`` the gradient ``D`` without the entries held at the
    bound (``Z = 0 < D``), which equals ``max(Z - d D, 0)``; ``dS`` is its change of ``S``.
    ``C = max(Z - d P, 0) - (Z - d P)`` is non-zero only where a positive entry crosses zero
    (``Z > 0``, ``Z - d D < 0``): after the first few iterations none or a handful, most
    columns from a rough start.  Only the columns of ``C o R`` that hold a crossing are
    multiplied, :data:`Z_CLIP_BLOCK` gathered columns at a time in a ``lax.while_loop`` that
    runs no block when nothing crosses: n x block temporaries, no n x n one.
    """
    n = Z.shape[1]
    c = min(n, Z_CLIP_BLOCK)
    cols_all, count = _crossing_columns(data.R, Z, Dir.full(d), d, c)

    def body(carry):
        i, acc, first = carry
        cols = lax.dynamic_slice_in_dim(cols_all, i * c, c)
        GC, dS = _correction_block(data, Z, Dir, d, cols, i * c + jnp.arange(c) < count)
        return i + 1, acc + jnp.sum(dS * GC), jnp.where(i == 0, GC, first)

    zero = jnp.zeros((), Z.dtype)
    init = (jnp.asarray(0, jnp.int32), zero, jnp.zeros((n, c), Z.dtype))
    _, acc, first = lax.while_loop(lambda carry: carry[0] * c < count, body, init)
    return acc, cols_all, count, first


def _z_step(state, data, hp, config, F_cur):
    """One Z move; returns ``(Z, F_cur + change, G S, drift, stale, rough)``.

    ``stale`` says that the returned ``G S`` lacks part of the projection's correction and
    must be formed again by a product (:func:`update` does it after the H step, where few
    n x n arrays are alive); ``drift`` and ``rough`` are the state's ``GS_drift`` and
    ``rough``.  ``z_step="auto"`` takes the paper's step (:func:`_z_step_gradient`) while
    ``state.rough`` (from the start, and after a move of more than ``Z_REFRESH x ||Z||`` or
    with crossings in more than one block of columns), else the free step
    (:func:`_z_step_free`): from a rough start most entries of Z move and many cross zero,
    and the free step would need both its block loop over most columns and a fresh ``G S``.
    """
    # The gradient is formed inside each branch of the "auto" cond: an operand of a cond
    # lives through the whole branch, a branch's own array only as long as it is used.
    # Through sparse X it is formed afresh at each use (_Direction).
    grad = lambda: _direction(state, data, hp)  # noqa: E731
    if config.z_step not in ("auto", "free", "gradient"):
        raise ValueError(f"z_step must be 'auto', 'free' or 'gradient', got {config.z_step!r}")
    auto = config.z_step == "auto"
    paper = lambda: _z_step_gradient(state, grad(), data, hp, config, F_cur, auto)  # noqa: E731
    free = lambda: _z_step_free(state, grad(), data, hp, config, F_cur)  # noqa: E731
    if config.z_step == "gradient":
        return paper()
    if config.z_step == "free":
        return free()
    return lax.cond(state.rough, paper, free)


def _rough(Z, Z_new, R, moved2, c):
    """Whether a move was large: ``||dZ||^2 = moved2 > (Z_REFRESH ||Z||)^2``, or it cut
    positive entries of Z to 0 in more than ``c`` columns."""
    cut = jnp.sum(jnp.any((Z > 0) & (Z_new <= 0) & R, axis=0), dtype=jnp.int32)
    return (cut > c) | (moved2 > Z_REFRESH**2 * jnp.vdot(Z, Z))


def _z_step_free(state, Dir, data, hp, config, F_cur):
    """The free Z step: one n x n x n product (see :func:`_z_step`); ``Dir`` the gradient's
    :class:`_Direction`."""
    Z, GS = state.Z, state.GS
    sparse = data.G is None
    D = Dir.full()
    # The move is along P: the gradient without the entries that sit at the bound and that
    # it pushes outward (Z = 0, D > 0), which the projection would hold at 0 anyway.  The
    # exact step along P is then the minimiser of the move actually taken unless a positive
    # entry crosses zero, and G S of a trial is G S - d G (P o R) plus the projection's
    # correction on the few columns where an entry crosses: one n x n x n product per Z step
    # instead of two.  P o R and <P, P> come straight from D and Z, so P itself is never
    # an array: only the product's operand P o R, then G (P o R), live on.
    zero = jnp.zeros((), D.dtype)
    free = (Z > 0) | (D <= 0)
    zz = jnp.vdot(Z, Z)  # ||Z|| before the move: the scale for the drift of G S
    PR = jnp.where(data.R & free, D, zero)
    GP = gram_matmul(data, PR)
    # <P o R, G (P o R)> and <P, P> are masked reductions, which XLA:CPU writes out as one
    # n x n pass each first.  The second is tied to the first's value (0 x pgp, zero unless
    # pgp is not finite, when the step is rejected anyway), so it runs after that reduction,
    # into the first pass's dead buffer, and after the product, not beside GS, D and P o R.
    # Its condition max(Z, -D) > 0 selects the same D^2 as `free` (they differ only where
    # D = 0) but is not the same expression, so XLA does not keep `free` as a mask across
    # the product for it.
    if sparse:
        # PR was the product's operand and is now its result (gram_matmul); its mask is
        # formed again from Z and D (where D = 0 the two masks differ, and D GP = 0).
        D = Dir.full(GP[0, 0])
        pgp = select_sum(data.R & (jnp.maximum(Z, -D) > 0), D * GP, zero)
        D = Dir.full(pgp)
    else:
        pgp = select_sum(data.R, PR * GP, zero)
    pp = select_sum(jnp.maximum(Z, -D) > 0, D * D, zero * pgp)
    d = z_step_length(pp, pgp, hp.lam)

    def change(Zc, dt):
        # F(Zc) - F(Z) = <D, dZ> + <dS, G dS> + lam ||dZ||^2 (see _z_step_gradient) with
        # G dS = -dt G (P o R) + G (C o R), C the projection's correction.  A trial forms
        # no n x n array; G S of the accepted point is updated after the search.
        dZ = Zc - Z
        g = Dir.full(dt) + hp.lam * dZ
        corr, cols, count, GC = _clip_correction(data, Z, Dir, dt)
        return select_sum(data.R, dZ * (g - dt * GP), dZ * g) + corr, (dt, cols, count, GC)

    # max(Z - d P, 0) = max(Z - d D, 0): the search moves along D, so only D lives through it.
    n = Z.shape[1]
    c = min(n, Z_CLIP_BLOCK)
    none = (zero, jnp.zeros(n + c, jnp.int32), jnp.asarray(0, jnp.int32),
            jnp.zeros((n, c), D.dtype))
    Z_new, dF, (d_taken, cols, count, GC) = line_search(
        Z, Dir.full if sparse else D, d, 0.5, config.max_trials, change, zero, none,
        accept_any=not config.guard,
    )
    # G S of the accepted point: the update plus the projection's correction, which the
    # accepted trial multiplied already when its crossings fit in one block (the usual
    # case); else G S is marked stale and formed again by a product.  Neither Z nor D is
    # read after the search, so the new Z can take the old one's buffer.
    GS_new = (GS - d_taken * GP).at[:, cols[:c]].add(GC)
    # The updated G S also carries the rounding of every update since it was last formed by
    # a product: relative to G S that stays at the float resolution while Z changes little
    # (the usual case: 1e-5 of ||Z|| an iteration), but grows when Z shrinks or is replaced
    # (the first iterations from the Jaccard start, or F decaying towards 0).  So G S is
    # formed afresh once the moves since the last product add up to Z_REFRESH x ||Z||
    # (||dZ|| <= d ||P||).
    drift = state.GS_drift + d_taken * jnp.sqrt(pp)
    stale = (count > c) | (drift > Z_REFRESH * jnp.sqrt(zz))
    rough = (count > c) | (d_taken**2 * pp > Z_REFRESH**2 * zz)
    return Z_new, F_cur + dF, GS_new, jnp.where(stale, zero, drift), stale, rough


def _z_step_gradient(state, Dir, data, hp, config, F_cur, track_rough=False):
    """The paper's Z step (Eq. 9-11): exact step along the full gradient, then projected.

    Two n x n x n products: ``G (D o R)`` for the step and ``G Sc`` of the trial.
    """
    Z, GS = state.Z, state.GS
    sparse = data.G is None
    D = Dir.full()
    if sparse:
        # <D, D> before the product (from the D of its operand), <D o R, G (D o R)> from a
        # D formed again after it.
        dd = jnp.vdot(D, D)
        GDR = gram_matmul(data, masked(D, data.R))
        D = Dir.full(GDR[0, 0] + 0.0 * dd)
        d = z_step_length(dd, select_sum(data.R, D * GDR, jnp.zeros((), D.dtype)), hp.lam)
    else:
        d = exact_z_step(D, data.R, gram_matmul(data, masked(D, data.R)), hp.lam)

    def change(Zc, _d):
        # F(Zc) - F(Z) from differences.  F is quadratic in Z, so with dZ = Zc - Z,
        # dS = dZ o R and G dS = G Sc - G S it is exactly its second-order expansion
        #   <D, dZ> + <dS, G dS> + lam ||dZ||^2
        # (the terms in B^T H and H^T H of the expanded objective cancel against D).
        # Near convergence the decrease is far below the float resolution of F itself; a
        # comparison of two rounded F values then rejects good steps (each rejected trial
        # costs one more n x n x n product) and freezes Z.  The terms here are of the order
        # of the change itself (no large terms such as <dS, G S> that cancel), and a trial
        # needs only the gradient D besides Z and the two products: neither Q = Z - H^T H
        # nor dS has to live through the line search.  One masked pass (ops.select_sum),
        # and no k x n x n product B dS.
        dZ = Zc - Z
        GSc = gram_matmul(data, masked(Zc, data.R))
        g = Dir.full(_d) + hp.lam * dZ
        return select_sum(data.R, dZ * (g + (GSc - GS)), dZ * g), GSc

    zero = jnp.zeros((), F_cur.dtype)
    Z_new, dF, GS_new = line_search(
        Z, Dir.full if sparse else D, d, 0.5, config.max_trials, change, zero, GS,
        accept_any=not config.guard,
    )
    rough = jnp.asarray(False)
    if track_rough:
        c = min(Z.shape[1], Z_CLIP_BLOCK)
        rough = _rough(Z, Z_new, data.R, jnp.vdot(Z_new - Z, Z_new - Z), c)
    return Z_new, F_cur + dF, GS_new, zero, jnp.asarray(False), rough


def _w_step(W, H, S, data, hp, config, F_cur):
    X, P, M = data.X, data.P, data.M
    E = x_matmul(X, S @ H.T)  # m x k
    HHt = H @ H.T
    Mr = M[None, :]
    zero = jnp.zeros((), F_cur.dtype)

    def change_from(W0):
        def change(Wc, _d):
            # F(Wc) - F(W0) from differences (see the Z step), dW = Wc - W0.
            dW = Wc - W0
            dF = -2.0 * jnp.vdot(dW, E) + jnp.vdot(dW.T @ Wc + W0.T @ dW, HHt)
            dF = dF + hp.gamma1 * jnp.vdot(dW, Wc + W0)
            return dF - hp.alpha * jnp.vdot(dW * Mr, 2.0 * P - (Wc + W0) * Mr), None

        return change

    g1 = hp.gamma1 if config.w_step == "exact" else jnp.zeros_like(hp.gamma1)
    # Reference block (W1) first, then the free block (W2), each an exact quadratic step.
    for mask, ridge in ((Mr, g1 + hp.alpha), (1.0 - Mr, g1)):
        D = grad_w_gram(W, E, HHt, P, M, hp.gamma1, hp.alpha) * mask
        d = exact_w_step(D, HHt, ridge)
        W, dF, _ = line_search(
            W, D, d, 0.5, config.max_trials, change_from(W), zero, None,
            accept_any=not config.guard,
        )
        F_cur = F_cur + dF
    return W, F_cur


# A backtracking trial of the H step whose change of F is certainly positive is rejected
# without its one pass over Q (a k x n x n product): the Cauchy-Schwarz bound
# |<Q, E>| <= ||Q|| ||E|| gives a lower bound of the change that needs only k x k Grams.
# From the paper's first trial (0.2) the step is usually shrunk 8-9 times, and each of
# those trials is rejected by the bound alone.  The bound must clear this fraction of the
# change's largest term, so that rounding cannot make the exact change of a bound-rejected
# trial come out non-positive.
H_BOUND_MARGIN = 1e-4


def _h_trial_bound(dF_rest, e_e, qq, lam):
    """Lower bound of an H trial's change ``dF_rest + lam (||E||^2 - 2 <Q, E>)`` from
    ``e_e = ||E||^2`` and ``qq = ||Q||^2``, and the scale its margin is measured against."""
    q_bound = jnp.sqrt(qq * e_e)
    return dF_rest + lam * (e_e - 2.0 * q_bound), jnp.abs(dF_rest) + lam * (e_e + 2.0 * q_bound)


def _h_step(W, H, Z, S, B, hp, config, F_cur):
    """The H move; returns ``(H, F_cur + change, ||Z - H^T H||^2 at the new H)``."""
    BS = B @ S
    WtW = W.T @ W

    # Q is formed from a Z tied to B S (0 x an entry of it, zero unless B S is not finite,
    # when F is not finite either), so that XLA cannot form it during the W step, while S
    # is still alive: 0.7 n x n arrays less in the plan of the default fit at 1,000-4,000
    # cells (with the orderings in _z_step and _z_step_free).
    Q = gap(Z + 0.0 * BS[0, 0], H)  # not Z - H.T @ H: see ops.gap
    HQ = H @ Q
    qq = _sq(Q)
    zero = jnp.zeros((), F_cur.dtype)

    def change(Hc, _d):
        # F(Hc) - F(H) from differences, as in the Z step, and without any n x n array:
        # with dH = Hc - H, E = Hc^T Hc - H^T H = U^T V (U = [dH; H], V = [Hc; dH]) and
        #   ||Z - Hc^T Hc||^2 - ||Q||^2 = ||E||^2 - 2 <Q, E>,
        #   ||E||^2 = <U U^T, V V^T>,  <Q, E> = <dH, Hc Q^T> + <dH, H Q>,
        # so a trial costs one k x n x n product (Hc Q^T) and k x k Grams, and none when
        # the bound |<Q, E>| <= ||Q|| ||E|| already makes the change positive.  The aux is
        # the change of ||Z - H^T H||^2, for F at the new point.
        dH = Hc - H
        U = jnp.concatenate([dH, H])
        V = jnp.concatenate([Hc, dH])
        e_e = jnp.vdot(U @ U.T, V @ V.T)
        dF = -2.0 * jnp.vdot(BS, dH) + jnp.vdot(WtW, dH @ Hc.T + H @ dH.T)
        dF = dF + hp.gamma2 * jnp.vdot(dH, Hc + H)
        low, scale = _h_trial_bound(dF, e_e, qq, hp.lam)

        def exact():
            HcQt = lax.dot_general(Hc, Q, (((1,), (1,)), ((), ())))  # Hc Q^T, k x n
            q_e = jnp.vdot(dH, HcQt) + jnp.vdot(dH, HQ)
            sim = e_e - 2.0 * q_e
            return dF + hp.lam * sim, sim

        return lax.cond(low > H_BOUND_MARGIN * scale, lambda: (low, zero), exact)

    D = -2.0 * BS + 2.0 * WtW @ H - 2.0 * hp.lam * (HQ + H @ Q.T) + 2.0 * hp.gamma2 * H
    if config.h_step == "exact":
        # Solve along the unit direction: the raw quartic coefficients overflow float32.
        norm = jnp.sqrt(_sq(D))
        U = D / jnp.where(norm > 0, norm, 1)
        t = exact_h_step(quartic_h_coefficients(H, U, Q, HQ, BS, WtW, hp.lam, hp.gamma2))
        d0 = t / jnp.where(norm > 0, norm, 1)
        shrink, trials = 0.5, config.max_trials
    else:
        d0, shrink, trials = config.h_step_init, config.h_step_shrink, config.h_max_trials
    H, dF, dsim = line_search(H, D, d0, shrink, trials, change, zero, zero)
    return H, F_cur + dF, qq + dsim


def update(state: SolverState, data: Data, hp: Hyperparams, config: SolverConfig):
    """One Z, W, H sweep; returns the next state (status and history updated)."""
    F_prev = state.loss
    F_cur = F_prev
    if config.rescale_h:
        s = jnp.sum(state.H, axis=1, keepdims=True)
        H = state.H / jnp.where(s > 0, s, 1)
        S0 = masked(state.Z, data.R)
        F_cur = gram_loss(S0, state.GS, state.B, state.W, H, state.Z, data.P, data.M, hp)
        state = state._replace(H=H, loss=F_cur)

    # Each step returns its exact change of F, computed from differences of the iterates
    # (see _z_step); their sum is the iteration's change, free of the rounding noise that
    # the difference of two recomputed F values carries in float32.
    zero = jnp.zeros((), F_prev.dtype)
    Z, dF_z, GS, GS_drift, stale, rough = _z_step(state, data, hp, config, zero)
    S = masked(Z, data.R)
    W, dF_w = _w_step(state.W, state.H, S, data, hp, config, zero)
    B = wt_x(data.X, W)
    H, dF_h, sim = _h_step(W, state.H, Z, S, B, hp, config, zero)
    # Here, with the Z step's arrays gone, a stale G S costs the fewest n x n arrays to form.
    GS = lax.cond(stale, lambda: gram_matmul(data, masked(Z, data.R)), lambda: GS)
    change = (F_cur - F_prev) + dF_z + dF_w + dF_h
    # The history records F recomputed in full at the new point; its similarity term
    # ||Z - H^T H||^2 from the H step (||Q||^2 at the new Z plus the exact change of the
    # accepted H move) saves a pass and an n x n product.
    F_new = gram_loss(S, GS, B, W, H, Z, data.P, data.M, hp, similarity=sim)
    carry = dict(W=W, H=H, Z=Z, GS=GS, B=B, GS_drift=GS_drift, rough=rough)
    return advance(
        state, carry, F_new, config, F_prev, change, caches=("GS", "B", "GS_drift", "rough")
    )


# -- The generic driver -------------------------------------------------------------------
# Any solver whose state is a NamedTuple carrying the fields in ``_TRACKED`` (plus its own
# iterate, caches or optimiser state) shares the bookkeeping below: history, relative-change
# stopping rule, max_iter cap and the non-finite guard.  The analytic solver above and the
# optax-driven solver of :mod:`sccase_jax.variants` both use it.

_TRACKED = ("initial_loss", "rel_change", "iteration", "loss_history", "status")


def tracked_fields(F0, dtype, config: SolverConfig) -> dict:
    """The bookkeeping fields of a fresh state with loss ``F0`` (``NONFINITE`` if not finite)."""
    F0 = jnp.asarray(F0, dtype)
    return dict(
        loss=F0,
        initial_loss=F0,
        rel_change=jnp.asarray(jnp.inf, dtype),
        iteration=jnp.asarray(0, jnp.int32),
        loss_history=jnp.full((config.max_iter,), jnp.nan, dtype),
        # With max_iter = 0 the fit is the starting point: the loop never runs.
        status=jnp.where(
            jnp.isfinite(F0), RUNNING if config.max_iter > 0 else MAX_ITER, NONFINITE
        ).astype(jnp.int32),
    )


def advance(
    state, carry: dict, F_new, config: SolverConfig, F_prev=None, change=None, caches=()
):
    """Next state from the solver-specific ``carry`` and the new objective value ``F_new``.

    Records ``F_new`` in the history, computes the relative change ``|change| / |F_prev|``
    (``F_prev`` defaults to ``state.loss``, ``change`` to ``F_new - F_prev``; a solver that
    knows its change of F more accurately passes it) and the status.  On a non-finite ``F_new`` every field that is
    not bookkeeping (the iterate, optimiser state and ``loss``) keeps its previous
    value, so the last finite iterate is what comes back.  The fields named in ``caches``
    are exempt: a non-finite F ends the fit, whose result never reads a cache, and
    restoring one would keep the previous value alive beside the new one to the end of the
    iteration (for ``G S`` one more n x n array at the solver's peak).
    """
    F_prev = state.loss if F_prev is None else F_prev
    finite = jnp.isfinite(F_new)
    change = F_new - F_prev if change is None else change
    rel = jnp.abs(change) / jnp.maximum(jnp.abs(F_prev), jnp.finfo(F_new.dtype).tiny)
    rel = jnp.where(jnp.isfinite(rel), rel, jnp.inf)
    it = state.iteration + 1
    status = jnp.where(
        ~finite,
        NONFINITE,
        jnp.where(rel < config.tol, CONVERGED, jnp.where(it >= config.max_iter, MAX_ITER, RUNNING)),
    ).astype(jnp.int32)
    new = state._replace(
        **carry,
        loss=F_new,
        rel_change=rel,
        iteration=it,
        loss_history=(
            state.loss_history.at[state.iteration].set(F_new)
            if state.loss_history.shape[0]  # an empty history (max_iter = 0) is never written
            else state.loss_history
        ),
        status=status,
    )
    keep = lambda a, b: jnp.where(finite, a, b)  # noqa: E731
    new = new._replace(
        **{
            f: jax.tree.map(keep, getattr(new, f), getattr(state, f))
            for f in new._fields
            if f not in _TRACKED and f not in caches
        }
    )
    if config.progress:
        jax.debug.callback(_report, it, F_new, rel, status, ordered=False)
    return new


def _report(it, F, rel, status):
    from sccase_jax._progress import report

    report(it, F, rel, status)


def _keep_going(state):
    return state.status == RUNNING


def drive(state, step, config: SolverConfig):
    """Run ``state = step(state)`` in a :func:`jax.lax.while_loop` while the status is running.

    ``step`` must return the state through :func:`advance`.  Returns the final state with a
    run that ended on the cap marked ``MAX_ITER`` (also when ``max_iter == 0``).
    """
    state = lax.while_loop(_keep_going, step, state)
    status = jnp.where(
        (state.status == RUNNING) & (state.iteration >= config.max_iter), MAX_ITER, state.status
    )
    return state._replace(status=status.astype(jnp.int32))


def to_result(state) -> Result:
    """The :class:`Result` of a final state (any state with ``W``, ``H``, ``Z`` and the tracked fields)."""
    return Result(
        factors=Factors(state.W, state.H, state.Z),
        loss_history=state.loss_history,
        initial_loss=state.initial_loss,
        num_steps=state.iteration,
        converged=(state.status == CONVERGED) & jnp.isfinite(state.loss),
        status=state.status,
        rel_change=state.rel_change,
    )


def matmul_precision(config: SolverConfig):
    """Context that sets the precision of the products traced inside it (``config.precision``)."""
    if config.precision is None:
        return contextlib.nullcontext()
    return jax.default_matmul_precision(config.precision)


def _run(data: Data, factors0: Factors, hp: Hyperparams, config: SolverConfig = SolverConfig()):
    with matmul_precision(config):
        state = init_state(data, factors0, hp, config)
        return to_result(drive(state, lambda s: update(s, data, hp, config), config))


run = jax.jit(_run, static_argnames=("config",))
run.__doc__ = """Fit from ``factors0`` to convergence, ``max_iter`` or a non-finite F, on device.

``run(data, factors0, hp, config)``: jitted, ``config`` static.  ``factors0`` is left
intact; :data:`run_donated` is the same fit with ``factors0`` donated.
"""

run_donated = jax.jit(_run, static_argnames=("config",), donate_argnames=("factors0",))
run_donated.__doc__ = """:func:`run` with the buffers of ``factors0`` donated to the fit.

The n x n ``Z0`` buffer is then reused for the iterate instead of staying alive beside it
(one n x n array less at the peak); ``factors0`` must not be used afterwards.
:func:`sccase_jax.api.fit` uses it for the factors it creates itself.
"""
