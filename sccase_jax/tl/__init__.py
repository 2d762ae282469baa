"""Tools on AnnData, in scanpy's manner: :func:`enhance` (scCASE / scCASER) and
:func:`enhanced_layer` (the enhanced matrix recomputed from a stored result),
:func:`specific_peaks` (cell-type-specific peaks) and :func:`write_bed`."""

from sccase_jax.output import enhanced_layer
from sccase_jax.tl.frontend import enhance, get_counts
from sccase_jax.tl.peaks import specific_peaks, write_bed

__all__ = ["enhance", "enhanced_layer", "get_counts", "specific_peaks", "write_bed"]
