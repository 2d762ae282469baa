"""Z restricted to a candidate support per cell (atlas scale): the host side.

:mod:`~sccase_jax.support.build` (supports, local Grams, the start and the mask, never
n x n) and :mod:`~sccase_jax.support.fit` (``fit_support``: the whole fit from a peaks x
cells X).  The layout itself is :class:`sccase_jax.layout.SupportLayout`; the fit runs the
one solver over loss terms (:mod:`sccase_jax.solver.over_terms`).  docs/atlas.md has the
mathematics and the memory model.
"""
