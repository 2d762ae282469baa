r"""Loss terms as objects: a term is a pure function of the factors, the data and Z's layout.

A term is a small frozen dataclass whose weights are pytree leaves (so a sum of terms can be
``jit``-ed and ``vmap``-ed over its weights) and whose other settings are static.  It
states its ``value(factors, data, layout)`` once, against the layout's operations
(:mod:`sccase_jax.layout`), so one statement serves the dense and the support layout.
Its ``grad`` is analytic where a term writes one (the tests check it against
:func:`jax.grad`), else :func:`jax.grad` of ``value``.

Exact steps from autodiff.  Along a direction ``D`` of one block (``"W"``, ``"H"`` or
``"Z"``) with the others fixed, ``q(t) = F(x + t D)`` has

.. math::

    q'(0) = \langle g, D\rangle ,\qquad q''(t) = \langle D, \nabla^2 F(x + t D)\, D\rangle ,

and ``\nabla^2 F\, D`` is the directional derivative of the gradient, one
:func:`jax.jvp` of ``grad``.  When ``F`` is quadratic along the line (every built-in term is,
in Z and in W) ``q''`` is constant and the minimiser is

.. math::

    t^* = -\frac{\langle g, D\rangle}{\langle D, \nabla^2 F\, D\rangle}

(0 when the curvature is not positive and finite: no move instead of a wrong one).  A term
that is not quadratic along the line gets the Newton step of its value from ``x``, which is
what the line searches guard.  So a new term gets exact Z and W steps without a
hand-derived formula: :meth:`Term.slope_curvature` is the only place they are computed, and
:class:`Objective` sums the slopes and curvatures of its terms before dividing.

Registration.  :func:`register_term` makes a class a frozen dataclass pytree (the fields
named in its ``leaves``, ``("weight",)`` by default, are leaves; the rest are static) and
enters it in :data:`TERMS` under a name; the built-in names cannot be replaced.  A
registered term with a ``weight`` field is selectable in ``fit`` and ``enhance``
(``terms={name: weight}``, checked by :func:`check_terms`) and on the command line
(``--term NAME:WEIGHT``): it is fitted with the built-in terms on either layout of Z.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from sccase_jax.options import parse_term
from sccase_jax.params import Factors
from sccase_jax.solver.linesearch import safe_div
from sccase_jax.validate import InputError, check_real

__all__ = [
    "BLOCKS",
    "DEGREE",
    "TERMS",
    "Objective",
    "Term",
    "TermData",
    "check_terms",
    "extra_terms",
    "get_term",
    "register_term",
    "taylor_coefficients",
]

BLOCKS = ("W", "H", "Z")


class TermData(NamedTuple):
    """What the terms read besides the factors and the layout (fixed during a fit).

    ``X`` (peaks x cells, dense or ``BCOO``); ``P`` (m x k) and ``M`` (k, 1.0 on the
    reference columns) for scCASER's reference pull; ``batch`` (n x B one-hot) for the batch
    term; ``depth`` (n relative depths) for the depth term.  ``None``: not used.
    """

    X: Any
    P: Any = None
    M: Any = None
    batch: Any = None
    depth: Any = None


class Term:
    """Base of every loss term (subclasses are registered with :func:`register_term`)."""

    leaves: tuple = ("weight",)
    # True: at most quadratic in Z and in W, quartic in H, along any line (every built-in
    # term): a solver may then compute a move's change of F from Taylor coefficients.
    polynomial: bool = False

    def value(self, factors: Factors, data: TermData, layout) -> Any:
        """The term's value (a scalar); pure and jittable."""
        raise NotImplementedError

    def grad(self, factors: Factors, data: TermData, layout) -> Factors:
        """``Factors(dW, dH, dZ)``: :func:`jax.grad` of :meth:`value` unless a term writes it."""
        return jax.grad(lambda f: self.value(f, data, layout))(factors)

    def value_and_grad(self, factors: Factors, data: TermData, layout):
        """``(value, grad)``; a term whose two share a costly product writes it once here."""
        return self.value(factors, data, layout), self.grad(factors, data, layout)

    def slope_curvature(self, factors: Factors, data: TermData, layout, block: str, D):
        """``(<g, D>, <D, Hess D>)`` along ``D`` of ``block``, the curvature by :func:`jax.jvp`
        of :meth:`grad` (exact for an analytic gradient too: it is differentiated as written)."""
        return _slope_curvature(self.grad, factors, data, layout, block, D)

    def curvature(self, factors: Factors, data: TermData, layout, block: str, D):
        """``<D, Hess D>`` alone: the tangent of one :func:`jax.jvp` of :meth:`grad`, so
        what only the gradient's value needs (``W^T X`` for a Z or H direction) is not
        formed."""
        return _curvature(self.grad, factors, data, layout, block, D)

    def higher(self, factors: Factors, data: TermData, layout, block: str, delta):
        """The term's exact change ``F(x + delta) - F(x)`` less ``<grad, delta>``: its Taylor
        coefficients of order 2 and up along ``delta``, summed (a term marked
        ``polynomial``).  By default half the curvature in Z and W (quadratic there) and
        nested :func:`jax.jvp` of :meth:`value` to degree 4 in H; a term may write it in
        closed form (the tests check it against this default)."""
        if DEGREE[block] == 2:
            return 0.5 * self.curvature(factors, data, layout, block, delta)
        return sum(taylor_coefficients(self, factors, data, layout, block, delta,
                                       DEGREE[block], first=2))

    def exact_step(self, factors: Factors, data: TermData, layout, block: str, D):
        """The minimiser ``t*`` of the term along ``x + t D`` (see the module docstring)."""
        slope, curv = self.slope_curvature(factors, data, layout, block, D)
        return safe_div(-slope, curv)


# The degree of a polynomial term along a line in each block: every built-in term is at
# most quadratic in Z and in W and at most quartic in H.
DEGREE = {"Z": 2, "W": 2, "H": 4}


def taylor_coefficients(objective, factors, data, layout, block: str, delta, order: int,
                        first: int = 1):
    """``(c_first, ..., c_order)``, ``c_i = phi^(i)(0) / i!`` of ``phi(s) = F(x + s delta)``
    in ``block`` (``objective`` a term or an :class:`Objective`): nested :func:`jax.jvp`,
    no difference of two values of F."""
    x = getattr(factors, block)

    def phi(t):
        return objective.value(factors._replace(**{block: x + t * delta}), data, layout)

    def deriv(f):
        return lambda t: jax.jvp(f, (t,), (jnp.ones_like(t),))[1]

    t0 = jnp.zeros((), x.dtype)
    out, f, fact = [], phi, 1.0
    for i in range(1, order + 1):
        f, fact = deriv(f), fact * i
        if i >= first:
            out.append(f(t0) / fact)
    return tuple(out)


def _along(grad: Callable, factors, data, layout, block: str, D):
    """``(g, Hess D)`` in ``block``: one :func:`jax.jvp` of ``grad``."""
    if block not in BLOCKS:
        raise ValueError(f"block must be one of {BLOCKS}, got {block!r}")

    def g(x):
        return getattr(grad(factors._replace(**{block: x}), data, layout), block)

    return jax.jvp(g, (getattr(factors, block),), (D,))


def _slope_curvature(grad: Callable, factors, data, layout, block: str, D):
    gx, hD = _along(grad, factors, data, layout, block, D)
    return jnp.vdot(gx, D), jnp.vdot(D, hD)


def _curvature(grad: Callable, factors, data, layout, block: str, D):
    # Only the tangent is used: under jit the gradient's own value is not computed.
    return jnp.vdot(D, _along(grad, factors, data, layout, block, D)[1])


@jax.tree_util.register_pytree_node_class
@dataclasses.dataclass(frozen=True, eq=False)
class Objective:
    """A sum of terms: its value, gradient and exact steps are the sums of the terms'."""

    terms: tuple

    def value(self, factors, data, layout):
        return sum(t.value(factors, data, layout) for t in self.terms)

    def grad(self, factors, data, layout) -> Factors:
        grads = [t.grad(factors, data, layout) for t in self.terms]
        return jax.tree.map(lambda *g: sum(g), *grads)

    def value_and_grad(self, factors, data, layout):
        parts = [t.value_and_grad(factors, data, layout) for t in self.terms]
        return sum(p[0] for p in parts), jax.tree.map(lambda *g: sum(g), *(p[1] for p in parts))

    def slope_curvature(self, factors, data, layout, block: str, D):
        parts = [t.slope_curvature(factors, data, layout, block, D) for t in self.terms]
        return sum(p[0] for p in parts), sum(p[1] for p in parts)

    def curvature(self, factors, data, layout, block: str, D):
        return sum(t.curvature(factors, data, layout, block, D) for t in self.terms)

    def higher(self, factors, data, layout, block: str, delta):
        return sum(t.higher(factors, data, layout, block, delta) for t in self.terms)

    def exact_step(self, factors, data, layout, block: str, D):
        slope, curv = self.slope_curvature(factors, data, layout, block, D)
        return safe_div(-slope, curv)

    def tree_flatten(self):
        return (self.terms,), None

    @classmethod
    def tree_unflatten(cls, _aux, children):
        return cls(tuple(children[0]))


TERMS: dict[str, type] = {}
BUILTIN = frozenset({"data", "similarity", "ridge_w", "ridge_h", "reference", "batch", "depth"})


def register_term(name: str, *, replace: bool = False):
    """Decorator: make ``cls`` a frozen dataclass pytree and register it under ``name``.

    .. code-block:: python

        @register_term("l1_z")
        class L1Z(Term):
            weight: float

            def value(self, factors, data, layout):
                return self.weight * jnp.sum(jnp.abs(factors.Z))

    The fields named in ``cls.leaves`` (default ``("weight",)``) are pytree leaves, the
    others static.  A registered name is replaced only with ``replace=True``, a built-in
    one never.
    """

    def add(cls):
        if name in TERMS and (name in BUILTIN or not replace):
            why = "a built-in term" if name in BUILTIN else "registered (pass replace=True)"
            raise ValueError(f"term {name!r} is already {why}")
        if not issubclass(cls, Term):
            raise TypeError(f"{cls.__name__} must subclass sccase_jax.terms.Term")
        if "__dataclass_fields__" not in cls.__dict__:
            cls = dataclasses.dataclass(frozen=True, eq=False)(cls)
        names = [f.name for f in dataclasses.fields(cls)]
        leaves = [f for f in names if f in cls.leaves]
        jax.tree_util.register_dataclass(
            cls, data_fields=leaves, meta_fields=[f for f in names if f not in leaves])
        cls.name = name
        TERMS[name] = cls
        return cls

    return add


# The option that sets each built-in term's weight: an extra term (``terms=``) is never one.
BUILTIN_OPTIONS = {
    "data": "always fitted, weight 1", "similarity": "lam", "ridge_w": "gamma1",
    "ridge_h": "gamma2", "reference": "alpha, with a reference",
    "batch": "batch_key with batch_method='term' and batch_weight", "depth": "correct_depth",
}


def check_terms(option: str, value) -> tuple | None:
    """The extra terms of a fit in canonical form: ``((name, weight), ...)`` in the order
    given, or ``None`` for none.

    ``value``: a mapping ``{name: weight}``, one ``"name:weight"`` string or an iterable of
    such strings or of ``(name, weight)`` pairs.  Each name must be registered
    (:func:`register_term`) and not built in (the built-ins are set by their own options),
    its class must have a ``weight`` field, each weight a finite number >= 0, each name
    given once; else an :class:`~sccase_jax.validate.InputError`.
    """
    if value is None:
        return None
    if isinstance(value, Mapping):
        items = list(value.items())
    elif isinstance(value, str):
        items = [parse_term(value)]
    else:
        try:
            items = [parse_term(x) if isinstance(x, str) else tuple(x) for x in value]
        except TypeError:
            raise InputError(f"{option} must be a mapping {{name: weight}} or a list of "
                             f"'name:weight' strings, got {value!r}") from None
    out = []
    for item in items:
        if len(item) != 2 or not isinstance(item[0], str):
            raise InputError(f"{option}: each term is a (name, weight) pair, got {item!r}")
        name, weight = item
        if name in BUILTIN:
            raise InputError(f"{option}: {name!r} is a built-in term, set by its own option "
                             f"({BUILTIN_OPTIONS[name]}), not by {option}")
        if name not in TERMS:
            extra = sorted(set(TERMS) - BUILTIN)
            raise InputError(f"{option}: unknown term {name!r}; registered (besides the "
                             f"built-ins): {extra or 'none'} (sccase_jax.terms.register_term)")
        if "weight" not in {f.name for f in dataclasses.fields(TERMS[name])}:
            raise InputError(f"{option}: term {name!r} has no weight field")
        if name in (n for n, _ in out):
            raise InputError(f"{option}: term {name!r} is given twice")
        out.append((name, check_real(f"the weight of term {name!r}", weight)))
    return tuple(out) or None


def extra_terms(spec, dtype) -> tuple:
    """The term objects of :func:`check_terms`'s ``((name, weight), ...)``, each weight a
    ``dtype`` scalar (a pytree leaf); ``()`` for ``None``."""
    return tuple(TERMS[name](weight=jnp.asarray(w, dtype)) for name, w in (spec or ()))


def get_term(name: str) -> type:
    """The term class registered under ``name``."""
    try:
        return TERMS[name]
    except KeyError:
        raise ValueError(f"unknown term {name!r}; registered: {sorted(TERMS)}") from None
