"""The Z move: the registered Z step rules and the machinery of the free step.

Every rule returns ``(Z, F_cur + change, G S, drift, stale, rough)``: the new iterate, F
after the move (its exact change computed from differences of the iterates, see
:func:`_z_step_gradient`), the cache ``G S = G (Z o R)`` of the new point, ``drift`` (the
moves since ``G S`` was last formed by a product), ``stale`` (``G S`` lacks part of the
projection's correction and must be formed again: the alternating solver does it after
the H step, where few n x n arrays are alive) and ``rough`` (the move was large: the next
``"auto"`` step takes the paper's step).

``"gradient"``: the paper's step along D, whose trial forms ``G S`` by a second product.
``"free"``: the exact step along D without the entries held at the bound (one ``G (P o R)``
product), the cache updated from that product plus the projection's correction on the
few columns where an entry is cut to 0 (docs/model.md).  ``"auto"`` (default): the paper's
step while the moves are large (from the start), then free.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax.numpy as jnp
from jax import lax

from sccase_jax.objectives.sccase import grad_z_gram
from sccase_jax.ops import gap, gram_matmul, masked, minus_outer, select_sum
from sccase_jax.solver.linesearch import exact_z_step, line_search, z_step_length
from sccase_jax.solver.rules import step_rule

__all__ = ["Z_CLIP_BLOCK", "Z_REFRESH", "z_step_auto", "z_step_free", "z_step_gradient"]


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
    rank-k terms, :func:`~sccase_jax.objectives.sccase.grad_z_gram`) and XLA fuses it into the pass
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
        return grad_z_gram(GS[:, idx], B, Hc, minus_outer(Z[:, idx], H, Hc), data.R[:, idx],
                           hp.lam)

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
        dF = select_sum(data.R, dZ * (g - dt * GP), dZ * g) + corr
        return dF, (dt, cols, count, GC)

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
        dgd = select_sum(data.R, D * GDR, jnp.zeros((), D.dtype))
        d = z_step_length(dd, dgd, hp.lam)
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
        dF = select_sum(data.R, dZ * (g + (GSc - GS)), dZ * g)
        return dF, GSc

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


@step_rule("z_step", "gradient")
def z_step_gradient(state, data, hp, config, F_cur):
    """The paper's Z step (Eq. 9-11): the exact step along the full gradient, then
    projected; two n x n x n products (:func:`_z_step_gradient`)."""
    return _z_step_gradient(state, _direction(state, data, hp), data, hp, config, F_cur)


@step_rule("z_step", "free")
def z_step_free(state, data, hp, config, F_cur):
    """The exact step along the gradient without the entries held at the bound; one
    n x n x n product (:func:`_z_step_free`)."""
    return _z_step_free(state, _direction(state, data, hp), data, hp, config, F_cur)


@step_rule("z_step", "auto")
def z_step_auto(state, data, hp, config, F_cur):
    """The paper's step while ``state.rough`` (from the start, and after a move of more
    than ``Z_REFRESH x ||Z||`` or with crossings in more than one block of columns), else
    the free step: from a rough start most entries of Z move and many cross zero, and the
    free step would need both its block loop over most columns and a fresh ``G S``.

    The gradient is formed inside each branch of the cond: an operand of a cond lives
    through the whole branch, a branch's own array only as long as it is used.
    """
    paper = lambda: _z_step_gradient(  # noqa: E731
        state, _direction(state, data, hp), data, hp, config, F_cur, True)
    free = lambda: _z_step_free(state, _direction(state, data, hp), data, hp, config, F_cur)  # noqa: E731
    return lax.cond(state.rough, paper, free)
