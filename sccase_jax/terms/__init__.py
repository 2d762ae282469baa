"""Loss terms as objects, written once over Z's layout (:mod:`sccase_jax.layout`):
:mod:`~sccase_jax.terms.base` (``Term``, ``Objective``, exact steps from :func:`jax.jvp`,
``register_term``) and :mod:`~sccase_jax.terms.builtin` (scCASE's, scCASER's, batch, depth)."""

from sccase_jax.terms.base import (
    BLOCKS,
    TERMS,
    Objective,
    Term,
    TermData,
    check_terms,
    extra_terms,
    get_term,
    register_term,
)
from sccase_jax.terms.builtin import (
    Batch,
    DataFit,
    Depth,
    Reference,
    RidgeH,
    RidgeW,
    Similarity,
    sccase_terms,
)

__all__ = ["BLOCKS", "TERMS", "Batch", "DataFit", "Depth", "Objective", "Reference", "RidgeH",
           "RidgeW", "Similarity", "Term", "TermData", "check_terms", "extra_terms", "get_term",
           "register_term", "sccase_terms"]
