"""The alternating Z, W, H solver with Z restricted to a fixed support (ELL form).

The same loop as the dense solver (:mod:`sccase_jax.solver.driver`: history, stopping rule,
non-finite guard, one jitted :func:`jax.lax.while_loop`) and the same step rules:

1. Z: the exact quadratic step along the full gradient (paper Eq. 9-11, the dense solver's
   ``z_step="gradient"``; its curvature ``||X (D o R)||^2 = sum_j d_j^T L_j d_j``), projected
   and guarded.  Every ``z_step`` rule runs this one: the "free" step exists to save an
   n x n x n product that the restricted fit never forms.
2. W: the dense solver's move (:func:`~sccase_jax.solver.wh_steps.w_move_from`), with
   ``E = X S H^T`` from the support.
3. H: the ``h_step`` rule's start (``"backtrack"``: the paper's 0.2, shrunk; ``"exact"``: the
   quartic's minimiser, its coefficients restricted to the support) and the projected,
   guarded line search.

Every guarded move is accepted on its exact change of F computed from differences of the
iterates (as in the dense solver), so no comparison of two rounded values of F.  One
iteration costs O(n d^2 + n d k + nnz(X) k + (m + n) k^2); no n x n array exists.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from sccase_jax.ops import wt_x, x_matmul
from sccase_jax.params import SolverConfig
from sccase_jax.solver.driver import advance, drive, matmul_precision, to_result, tracked_fields
from sccase_jax.solver.linesearch import exact_h_step, line_search, safe_div, z_step_length
from sccase_jax.solver.wh_steps import w_move_from
from sccase_jax.support.objective import (
    SupportData,
    apply_ell,
    apply_ell_t,
    grad_h_support,
    grad_v_support,
    local_quad,
    pair_products,
    support_loss,
)

__all__ = ["SupportState", "init_state", "run", "update"]


class SupportState(NamedTuple):
    """Loop carry; ``Z`` holds the ELL values V (n x d), ``B = W^T X`` is a cache."""

    W: Any
    H: Any
    Z: Any
    B: Any
    loss: Any
    initial_loss: Any
    rel_change: Any
    x_change: Any
    iteration: Any
    loss_history: Any
    status: Any


def _sq(A):
    return jnp.vdot(A, A)


def init_state(data: SupportData, W, H, V, hp, config: SolverConfig) -> SupportState:
    B = wt_x(data.X, W)
    F = support_loss(data, W, H, V, hp, B=B)
    return SupportState(W=W, H=H, Z=V, B=B, **tracked_fields(F, V.dtype, config))


def z_move(data: SupportData, V, B, H, hp, config, zero):
    """The exact Z step along the gradient (restricted), projected and guarded."""
    D = grad_v_support(data, V, B, H, hp.lam)
    DR = jnp.where(data.mask, D, 0)
    d = z_step_length(_sq(D), local_quad(data.L, DR), hp.lam)

    def change(Vc, _d):
        # F is quadratic in Z: <D, dZ> + ||X dS||^2 + lam ||dZ||^2, exactly.
        dV = Vc - V
        dS = jnp.where(data.mask, dV, 0)
        return jnp.vdot(D, dV) + local_quad(data.L, dS) + hp.lam * _sq(dV), None

    V_new, dF, _ = line_search(V, D, d, 0.5, config.max_trials, change, zero, None,
                               accept_any=not config.guard)
    return V_new, dF


def _h_quartic(data, V, H, D, BS, WtW, hp):
    """Coefficients of ``F(H - t D) - F(H)`` (c1..c4) with Z restricted to the support."""
    idx = data.idx
    Ghh, Ghd, Gdd = H @ H.T, H @ D.T, D @ D.T
    Lhd = Ghd + Ghd.T
    a1 = pair_products(D, H, idx) + pair_products(H, D, idx)
    a2 = pair_products(D, D, idx)
    c1 = 2.0 * jnp.vdot(BS, D) - 2.0 * jnp.vdot(WtW, Ghd) - 2.0 * hp.gamma2 * jnp.vdot(H, D)
    # sim(t) = sum_supp (v^2 - 2 v T(t) + (1 - off) T(t)^2) + off ||K(t)||^2 with
    # T(t) = T - t a1 + t^2 a2 and K(t) = Ghh - t Lhd + t^2 Gdd.
    w, u = data.off, 1.0 - data.off
    T = pair_products(H, H, idx)
    c1 = c1 + hp.lam * (2.0 * jnp.vdot(V, a1) - w * 2.0 * jnp.vdot(Ghh, Lhd)
                        - u * 2.0 * jnp.vdot(T, a1))
    c2 = jnp.vdot(WtW, Gdd) + hp.gamma2 * _sq(D)
    c2 = c2 + hp.lam * (-2.0 * jnp.vdot(V, a2) + w * (_sq(Lhd) + 2.0 * jnp.vdot(Ghh, Gdd))
                        + u * (_sq(a1) + 2.0 * jnp.vdot(T, a2)))
    c3 = -2.0 * hp.lam * (w * jnp.vdot(Lhd, Gdd) + u * jnp.vdot(a1, a2))
    c4 = hp.lam * (w * _sq(Gdd) + u * _sq(a2))
    return c1, c2, c3, c4


def h_move(data: SupportData, V, W, H, B, hp, config, zero):
    """The H move: the ``h_step`` rule's start, projected and guarded line search."""
    S = jnp.where(data.mask, V, 0)
    BS = apply_ell(B, S, data.idx)
    WtW = W.T @ W
    HHt = H @ H.T
    T = pair_products(H, H, data.idx)
    D = grad_h_support(data, V, B, W, H, hp.lam, hp.gamma2)

    def change(Hc, _d):
        # F(Hc) - F(H) from differences: the reconstruction and ridge terms as in the dense
        # solver; the similarity term's change is -2 <V, T(Hc) - T(H)> + ||Hc Hc^T||^2 -
        # ||H H^T||^2 (on-support v^2 unchanged), with T(Hc) - T(H) = pair(dH, Hc) + pair(H, dH).
        dH = Hc - H
        dF = -2.0 * jnp.vdot(BS, dH) + jnp.vdot(WtW, dH @ Hc.T + H @ dH.T)
        dF = dF + hp.gamma2 * jnp.vdot(dH, Hc + H)
        dT = pair_products(dH, Hc, data.idx) + pair_products(H, dH, data.idx)
        dA = dH @ Hc.T + H @ dH.T
        dsim = -2.0 * jnp.vdot(V, dT) + data.off * jnp.vdot(dA, Hc @ Hc.T + HHt)
        dsim = dsim + (1.0 - data.off) * jnp.vdot(dT, 2.0 * T + dT)
        return dF + hp.lam * dsim, None

    if config.h_step == "exact":
        norm = jnp.sqrt(_sq(D))
        U = D / jnp.where(norm > 0, norm, 1)
        t = exact_h_step(_h_quartic(data, V, H, U, BS, WtW, hp))
        d0, shrink, trials = safe_div(t, norm), 0.5, config.max_trials
    elif config.h_step == "backtrack":
        d0, shrink, trials = config.h_step_init, config.h_step_shrink, config.h_max_trials
    else:
        raise ValueError(f"h_step {config.h_step!r} has no support-restricted form")
    H_new, dF, _ = line_search(H, D, d0, shrink, trials, change, zero, None)
    return H_new, dF


def update(state: SupportState, data: SupportData, hp, config: SolverConfig) -> SupportState:
    """One Z, W, H sweep."""
    F_prev = state.loss
    F_cur = F_prev
    if config.rescale_h:
        s = jnp.sum(state.H, axis=1, keepdims=True)
        H = state.H / jnp.where(s > 0, s, 1)
        F_cur = support_loss(data, state.W, H, state.Z, hp, B=state.B)
        state = state._replace(H=H, loss=F_cur)
    zero = jnp.zeros((), F_prev.dtype)
    V, dF_z = z_move(data, state.Z, state.B, state.H, hp, config, zero)
    S = jnp.where(data.mask, V, 0)
    E = x_matmul(data.X, apply_ell_t(state.H, S, data.idx).T)
    W, dF_w = w_move_from(state.W, state.H, E, data.P, data.M, hp, config, zero)
    B = wt_x(data.X, W)
    H, dF_h = h_move(data, V, W, state.H, B, hp, config, zero)
    change = (F_cur - F_prev) + dF_z + dF_w + dF_h
    F_new = support_loss(data, W, H, V, hp, B=B)
    return advance(state, dict(W=W, H=H, Z=V, B=B), F_new, config, F_prev, change,
                   caches=("B",))


def _run(data: SupportData, W, H, V, hp, config: SolverConfig = SolverConfig()):
    with matmul_precision(config):
        state = init_state(data, W, H, V, hp, config)
        return to_result(drive(state, lambda s: update(s, data, hp, config), config))


run = jax.jit(_run, static_argnames=("config",))
run.__doc__ = """The whole support-restricted fit on device: ``run(data, W0, H0, V0, hp, config)``;
returns a :class:`~sccase_jax.result.FitResult` whose ``Z`` is the ELL values (n x d)."""


def _steps(state, data, hp, config, until):
    from jax import lax

    from sccase_jax.result import RUNNING

    with matmul_precision(config):
        keep_going = lambda s: (s.status == RUNNING) & (s.iteration < until)  # noqa: E731
        return lax.while_loop(keep_going, lambda s: update(s, data, hp, config), state)


_start = jax.jit(lambda data, W, H, V, hp, config: init_state(data, W, H, V, hp, config),
                 static_argnames=("config",))
_steps_jit = jax.jit(_steps, static_argnames=("config",), donate_argnames=("state",))


def run_reporting(data: SupportData, W, H, V, hp, config: SolverConfig, report):
    """:data:`run` with ``report(state)`` called on the host after every iteration."""
    from sccase_jax.result import RUNNING

    with matmul_precision(config):
        state = _start(data, W, H, V, hp, config)
    while int(state.status) == RUNNING:
        state = _steps_jit(state, data, hp, config, state.iteration + 1)
        report(state)
    return to_result(state)
