"""Tools on AnnData, in scanpy's manner: :func:`enhance` (scCASE / scCASER) and
:func:`enhanced_layer` (the enhanced matrix recomputed from a stored result)."""

from sccase_jax.output import enhanced_layer
from sccase_jax.tl.frontend import enhance, get_counts

__all__ = ["enhance", "enhanced_layer", "get_counts"]
