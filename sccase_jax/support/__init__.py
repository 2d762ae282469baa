"""scCASE with Z restricted to a candidate neighbour graph per cell (atlas scale).

:mod:`~sccase_jax.support.objective` (the restricted objective and its gradients, Z in ELL
form), :mod:`~sccase_jax.support.solver` (the alternating solver on the shared driver),
:mod:`~sccase_jax.support.build` (supports, local Grams and the start, never n x n) and
:mod:`~sccase_jax.support.fit` (``fit_support``: the whole fit from a peaks x cells X).
docs/atlas.md has the mathematics and the memory model.
"""
