"""``python -m sccase_jax.cli``: the ``sccase-jax`` command (see :mod:`sccase_jax.__main__`)."""

from sccase_jax.__main__ import run

run()
