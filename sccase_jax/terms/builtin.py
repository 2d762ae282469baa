r"""The built-in loss terms of scCASE, scCASER and the release's corrections.

Each is stated once against Z's layout (:mod:`sccase_jax.layout`), so it holds on the dense
and on the support layout; ``S = Z o R``, ``B = W^T X``:

================  ===================================  ==========================
name              value                                gradient
================  ===================================  ==========================
``data``          ``||X S - W H||^2`` (Gram form)      analytic (paper Eq. 5)
``similarity``    ``lam ||Z - H^T H||^2``              analytic
``ridge_w``       ``gamma1 ||W||^2``                   analytic
``ridge_h``       ``gamma2 ||H||^2``                   analytic
``reference``     ``alpha ||P - W o M||^2`` (scCASER)  analytic
``batch``         ``mu ||A Z||^2`` (docs/batch.md)     :func:`jax.grad`
``depth``         ``lam ||Z - diag(p) H^T H||^2``      :func:`jax.grad`
================  ===================================  ==========================

The data term in Gram form, ``||X S - W H||^2 = <S, X^T X S> - 2 <B S, H> + <W^T W, H H^T>``,
reads X only through ``B`` and ``E = X (S H^T)``; its gradients are

.. math::

    \partial_Z = 2 (X^\top X S - B^\top H) \circ R ,\quad
    \partial_H = -2 B S + 2 W^\top W H ,\quad
    \partial_W = 2 (W H H^\top - X S H^\top) .

The similarity term, with ``T = H^T H`` on the layout and ``off`` the layout's weight of
its off-support part (1 on a dense layout), ``U = Z - (1 - off) T``:

.. math::

    \partial_Z = 2\lambda (Z - T) ,\qquad
    \partial_H = -2\lambda (H U + H U^\top - 2\, \mathrm{off}\, H H^\top H) .

``depth`` replaces ``similarity`` (the release's ``method="Correct seq depth"``); use one of
the two.  The batch term's batch means are ``Ob^T Z`` through the layout's ``apply`` (a
gather on a support), so it is exact on both layouts.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp

from sccase_jax.layout import gap_sq_higher
from sccase_jax.ops import inner, wt_x, x_matmul
from sccase_jax.params import Factors
from sccase_jax.terms.base import Term, TermData, register_term

__all__ = ["Batch", "DataFit", "Depth", "Reference", "RidgeH", "RidgeW", "Similarity", "sccase_terms"]


def _sq(A):
    return jnp.vdot(A, A)


def _zeros(factors):
    return Factors(*(jnp.zeros_like(a) for a in factors))


@register_term("data")
class DataFit(Term):
    """``weight ||X (Z o R) - W H||^2`` (weight 1 in scCASE)."""

    polynomial = True

    weight: Any = 1.0

    def value(self, factors, data: TermData, layout):
        return self.value_and_grad(factors, data, layout, grad=False)

    def grad(self, factors, data: TermData, layout):
        return self.value_and_grad(factors, data, layout, value=False)

    def value_and_grad(self, factors, data: TermData, layout, value=True, grad=True):
        """Both from one ``X^T X S`` (an n x n x n product on a dense layout)."""
        W, H, Z = factors
        S = layout.masked(Z)
        B = wt_x(data.X, W)
        GS, BS, WtW = layout.gram(S), layout.apply(B, S), W.T @ W
        F = self.weight * (inner(S, GS) - 2.0 * jnp.vdot(BS, H) + jnp.vdot(WtW, H @ H.T))
        if not grad:
            return F
        dZ = 2.0 * layout.masked(GS - layout.pairs(B, H))
        dH = -2.0 * BS + 2.0 * WtW @ H
        dW = 2.0 * (W @ (H @ H.T) - x_matmul(data.X, layout.apply_t(H, S).T))
        g = Factors(self.weight * dW, self.weight * dH, self.weight * dZ)
        return (F, g) if value else g

    def higher(self, factors, data: TermData, layout, block: str, delta):
        W, H, _ = factors
        if block == "Z":
            return self.weight * layout.curvature(delta)
        if block == "W":
            return self.weight * jnp.vdot(delta.T @ delta, H @ H.T)
        return self.weight * jnp.vdot(W.T @ W, delta @ delta.T)


@register_term("similarity")
class Similarity(Term):
    """``weight ||Z - H^T H||^2`` (weight ``lam``); off the support weighed by ``layout.off``."""

    polynomial = True

    weight: Any = 1e6

    def value(self, factors, data, layout):
        _, H, Z = factors
        return self.weight * layout.gap_sq(Z, H, H)

    def grad(self, factors, data, layout):
        W, H, Z = factors
        off = getattr(layout, "off", 1.0)
        T = layout.pairs(H, H)
        U = Z - (1.0 - off) * T
        dH = -2.0 * (layout.apply(H, U) + layout.apply_t(H, U) - 2.0 * off * (H @ H.T) @ H)
        dZ = 2.0 * (Z - T)
        return Factors(jnp.zeros_like(W), self.weight * dH, self.weight * dZ)

    def higher(self, factors, data, layout, block: str, delta):
        if block != "H":
            return self.weight * _sq(delta) if block == "Z" else 0.0
        H = factors.H
        return self.weight * gap_sq_higher(layout, factors.Z, H, delta, H, delta)


@register_term("ridge_w")
class RidgeW(Term):
    """``weight ||W||^2`` (weight ``gamma1``)."""

    polynomial = True

    weight: Any = 1.0

    def value(self, factors, data, layout):
        return self.weight * _sq(factors.W)

    def grad(self, factors, data, layout):
        return _zeros(factors)._replace(W=2.0 * self.weight * factors.W)

    def higher(self, factors, data, layout, block: str, delta):
        return self.weight * _sq(delta) if block == "W" else 0.0


@register_term("ridge_h")
class RidgeH(Term):
    """``weight ||H||^2`` (weight ``gamma2``)."""

    polynomial = True

    weight: Any = 1.0

    def value(self, factors, data, layout):
        return self.weight * _sq(factors.H)

    def grad(self, factors, data, layout):
        return _zeros(factors)._replace(H=2.0 * self.weight * factors.H)

    def higher(self, factors, data, layout, block: str, delta):
        return self.weight * _sq(delta) if block == "H" else 0.0


@register_term("reference")
class Reference(Term):
    """scCASER's pull ``weight ||P - W o M||^2`` (weight ``alpha``; ``M`` the k column mask)."""

    polynomial = True

    weight: Any = 0.0

    def value(self, factors, data: TermData, layout):
        return self.weight * _sq(data.P - factors.W * data.M[None, :])

    def grad(self, factors, data: TermData, layout):
        Mr = data.M[None, :]
        dW = 2.0 * self.weight * Mr * (factors.W * Mr - data.P)
        return _zeros(factors)._replace(W=dW)

    def higher(self, factors, data: TermData, layout, block: str, delta):
        return self.weight * _sq(delta * data.M[None, :]) if block == "W" else 0.0


@register_term("batch")
class Batch(Term):
    r"""The batch term ``weight ||A Z||^2 = weight sum_c n_c ||m_c - m||^2`` (weight
    ``mu = beta lam``): ``m_c`` the batch means of Z's columns, ``m`` their overall means."""

    polynomial = True

    weight: Any = 1e6

    def value(self, factors, data: TermData, layout):
        Z, Ob = factors.Z, data.batch
        n = layout.n_cells
        counts = jnp.sum(Ob, axis=0)
        means = layout.apply(Ob.T, Z) / counts[:, None]
        mean = layout.apply(jnp.ones((1, n), Ob.dtype), Z) / n
        return self.weight * jnp.sum(counts[:, None] * (means - mean) ** 2)

    def higher(self, factors, data: TermData, layout, block: str, delta):
        # A quadratic form in Z alone: its change beyond the slope is its value at delta.
        return self.value(factors._replace(Z=delta), data, layout) if block == "Z" else 0.0


@register_term("depth")
class Depth(Term):
    """The depth term ``weight ||Z - diag(p) H^T H||^2`` (weight ``lam``; ``p = data.depth``),
    in place of :class:`Similarity`."""

    polynomial = True

    weight: Any = 1e6

    def value(self, factors, data: TermData, layout):
        _, H, Z = factors
        return self.weight * layout.gap_sq(Z, H * data.depth[None, :], H)

    def higher(self, factors, data, layout, block: str, delta):
        if block != "H":
            return self.weight * _sq(delta) if block == "Z" else 0.0
        H, p = factors.H, data.depth[None, :]
        return self.weight * gap_sq_higher(layout, factors.Z, H * p, delta * p, H, delta)


def sccase_terms(hp, *, batch_mu=None, depth: bool = False, reference: bool = True) -> tuple:
    """The terms of paper Eq. 2 (with scCASER's pull) from :class:`~sccase_jax.params.Hyperparams`;
    ``batch_mu`` adds the batch term, ``depth`` swaps the similarity term for the depth term,
    ``reference=False`` leaves scCASER's pull out (a fit without a reference: its data then
    need no ``P`` and ``M``, and the W move is one block)."""
    sim = Depth(hp.lam) if depth else Similarity(hp.lam)
    terms = (DataFit(jnp.ones_like(hp.lam)), sim, RidgeW(hp.gamma1), RidgeH(hp.gamma2),
             *((Reference(hp.alpha),) if reference else ()))
    return terms if batch_mu is None else (*terms, Batch(batch_mu))
