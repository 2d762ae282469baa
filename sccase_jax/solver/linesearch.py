r"""Step sizes and the projected, guarded move.

Each rule returns the step ``d`` of a move ``x - d D`` along the gradient ``D``.

Z (paper Eq. 9-11).  ``F(Z - d D)`` is quadratic in ``d`` with slope ``-<D, D>`` at 0 and
curvature ``2 (||X (D o R)||^2 + lam ||D||^2)``, so the minimiser is

.. math:: d^* = \frac{\langle D, D\rangle}{2(\langle D\circ R, G (D\circ R)\rangle
                + \lambda \langle D, D\rangle)} .

W (paper Eq. 6-8).  Likewise, with ``||D H||^2 = <D^T D, H H^T>``,

.. math:: d^* = \frac{\langle D, D\rangle}{2(\langle D^\top D, H H^\top\rangle
                + \gamma \langle D, D\rangle)}

where ``gamma = gamma1`` (plus ``alpha`` on the scCASER reference block).  The printed
Eq. 8 and the released code drop ``gamma1``; pass ``gamma=0`` (plus ``alpha``) for that.

H.  ``F(H - d D)`` is a quartic; :func:`quartic_h_coefficients` gives its coefficients
from k x k and k x n products and :func:`exact_h_step` its best positive minimiser.  The
paper instead backtracks from 0.2 (:func:`line_search` with a shrink factor).

Every move is projected onto ``>= 0``; the exact step minimises the *unprojected* move, so
:func:`line_search` checks ``F`` at the projected point and shrinks when it increased.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from sccase_jax.ops import select_sum

__all__ = [
    "exact_h_step",
    "exact_w_step",
    "exact_z_step",
    "line_search",
    "project",
    "quartic_h_coefficients",
    "safe_div",
    "z_step_length",
]


def project(A):
    """Projection onto the non-negative orthant."""
    return jnp.maximum(A, 0)


def safe_div(num, den):
    """``num / den`` where ``den > 0`` and finite, else 0 (no move instead of a NaN)."""
    ok = (den > 0) & jnp.isfinite(den)
    return jnp.where(ok, num / jnp.where(ok, den, 1), 0)


def exact_z_step(D, R, GDR, lam):
    """Exact line minimiser for Z; ``R`` the mask and ``GDR = G @ (D o R)``."""
    # <D o R, G (D o R)> as one masked pass over D and the product (see select_sum).
    dgd = select_sum(R, D * GDR, jnp.zeros((), D.dtype))
    return z_step_length(jnp.vdot(D, D), dgd, lam)


def z_step_length(dd, dgd, lam):
    """The minimiser ``dd / (2 (dgd + lam dd))`` of F along a Z direction P from its two
    reductions ``dd = <P, P>`` and ``dgd = <P o R, G (P o R)>`` (0 when not finite or not
    positive); :func:`exact_z_step` forms them for the full gradient."""
    return safe_div(dd, 2.0 * (dgd + lam * dd))


def exact_w_step(D, HHt, gamma):
    """Exact line minimiser for a W block; ``HHt = H H^T``, ``gamma`` the ridge weight."""
    dd = jnp.vdot(D, D)
    return safe_div(dd, 2.0 * (jnp.vdot(D.T @ D, HHt) + gamma * dd))


def quartic_h_coefficients(H, D, Q, HQ, BS, WtW, lam, gamma2):
    r"""Coefficients ``(c1, c2, c3, c4)`` of ``F(H - d D) - F(H) = sum_i c_i d^i``.

    With ``Q = Z - H^T H``, ``A1 = H^T D + D^T H`` and ``A2 = D^T D``, the similarity term
    is ``lam ||Q + d A1 - d^2 A2||^2``; every inner product reduces to k x k Grams
    (``H H^T``, ``H D^T``, ``D D^T``) and the k x n products ``H Q`` and ``D Q``.
    """
    Ghh, Ghd, Gdd = H @ H.T, H @ D.T, D @ D.T
    DQ = D @ Q
    q_a1 = jnp.vdot(HQ, D) + jnp.vdot(DQ, H)  # <Q, H^T D> + <Q, D^T H>
    a1_a1 = 2.0 * jnp.vdot(Ghh, Gdd) + 2.0 * jnp.vdot(Ghd, Ghd.T)
    q_a2 = jnp.vdot(DQ, D)
    a1_a2 = 2.0 * jnp.vdot(Ghd, Gdd)
    a2_a2 = jnp.vdot(Gdd, Gdd)
    c1 = 2.0 * jnp.vdot(BS, D) - 2.0 * jnp.vdot(WtW, Ghd) - 2.0 * gamma2 * jnp.vdot(H, D)
    c1 = c1 + 2.0 * lam * q_a1
    c2 = jnp.vdot(WtW, Gdd) + gamma2 * jnp.vdot(D, D) + lam * (a1_a1 - 2.0 * q_a2)
    c3 = -2.0 * lam * a1_a2
    c4 = lam * a2_a2
    return c1, c2, c3, c4


def _cubic_real_roots(a, b, c, d):
    """The three roots of ``a t^3 + b t^2 + c t + d`` (complex Cardano; a != 0)."""
    cdt = jnp.complex128 if jnp.result_type(a) == jnp.float64 else jnp.complex64
    a, b, c, d = (jnp.asarray(v, cdt) for v in (a, b, c, d))
    p = (3 * a * c - b * b) / (3 * a * a)
    q = (2 * b**3 - 9 * a * b * c + 27 * a * a * d) / (27 * a**3)
    disc = jnp.sqrt((q / 2) ** 2 + (p / 3) ** 3)
    u = (-q / 2 + disc) ** (1 / 3)
    u = jnp.where(jnp.abs(u) == 0, (-q / 2 - disc) ** (1 / 3), u)
    w = jnp.asarray(np.exp(2j * np.pi * np.arange(3) / 3), cdt)
    uk = u * w
    tk = uk - p / (3 * jnp.where(jnp.abs(uk) == 0, 1, uk)) - b / (3 * a)
    return tk


def exact_h_step(coefs):
    """The best positive minimiser of ``phi(d) = c1 d + c2 d^2 + c3 d^3 + c4 d^4``.

    The real critical points come from the cubic ``phi'``; each is polished by two Newton
    steps (float32 Cardano loses digits) and the one with the lowest ``phi`` is returned.
    Without a positive critical point (or with a concave quadratic) the step is 0.
    """
    c1, c2, c3, c4 = coefs
    dtype = jnp.result_type(c1)
    scale_ok = c4 > 0
    roots = _cubic_real_roots(jnp.where(scale_ok, 4 * c4, 1), 3 * c3, 2 * c2, c1)
    t = roots.real.astype(dtype)
    # When c4 == 0 the polynomial is (at most) quadratic: its minimiser is -c1 / (2 c2).
    quad = safe_div(-c1, 2 * c2)
    t = jnp.where(scale_ok, t, jnp.stack([quad, quad, quad]))

    def dphi(s):
        return c1 + 2 * c2 * s + 3 * c3 * s**2 + 4 * c4 * s**3

    def d2phi(s):
        return 2 * c2 + 6 * c3 * s + 12 * c4 * s**2

    for _ in range(2):
        t = t - safe_div(dphi(t), d2phi(t)) * (d2phi(t) > 0)
    phi = c1 * t + c2 * t**2 + c3 * t**3 + c4 * t**4
    phi = jnp.where((t > 0) & jnp.isfinite(phi), phi, jnp.inf)
    best = jnp.argmin(phi)
    return jnp.where(jnp.isfinite(phi[best]) & (phi[best] < 0), t[best], 0).astype(dtype)


def line_search(x, D, d0, shrink, max_trials, objective, F_cur, aux0, accept_any=False):
    """Projected move ``max(x - d D, 0)`` with the step shrunk until F does not increase.

    Tries ``d0, d0 * shrink, ...`` (at most ``max_trials`` trials) and keeps the first
    candidate whose ``objective`` value is ``<= F_cur`` (a NaN never passes).  If none
    passes, ``x`` is kept.  ``objective(candidate, d)`` (``d`` the trial's step) returns
    ``(F, aux)``; ``aux`` (e.g. ``G S``) is returned with the accepted point, ``aux0``
    belongs to ``x``.  With
    ``accept_any`` the first trial is taken unconditionally (the released code's
    unguarded steps).

    Memory: the loop carries only the step, the latest trial's F and ``aux``; the
    accepted candidate is rebuilt from its step after the loop (one elementwise pass), so
    an n x n iterate costs the loop one ``aux`` buffer and one temporary, not a copy of the
    best candidate as well.

    Returns
    -------
    ``(x_new, F_new, aux_new)``
    """
    dtype = F_cur.dtype
    shrink = jnp.asarray(shrink, dtype)
    d0 = jnp.asarray(d0, dtype)

    # D may be a function that forms the direction afresh at each use (solver.z_step._Direction).
    direction = D if callable(D) else lambda d: D

    def trial(d):
        F, aux = objective(project(x - d * direction(d)), d)
        return F, aux, accept_any | (F <= F_cur)

    def cond(c):
        i, _, _, _, ok = c
        return (~ok) & (i < max_trials)

    def body(c):
        i, d, _, _, _ = c
        d = jnp.where(i > 0, d * shrink, d)
        F, aux, ok = trial(d)
        return i + 1, d, F, aux, ok

    if max_trials < 1:
        return x, F_cur, aux0
    # The first trial runs outside the loop so the carry has the aux structure and shapes.
    F1, aux1, ok1 = trial(d0)
    _, d, F, aux, ok = lax.while_loop(cond, body, (jnp.asarray(1, jnp.int32), d0, F1, aux1, ok1))
    pick = lambda new, old: jnp.where(ok, new, old)  # noqa: E731
    x_new = pick(project(x - d * direction(d)), x)
    return x_new, pick(F, F_cur), jax.tree.map(pick, aux, aux0)
