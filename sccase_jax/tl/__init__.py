"""Tools on AnnData, in scanpy's manner: :func:`enhance` (scCASE / scCASER), the enhanced
matrix on demand (:func:`enhanced` for chosen cells, peaks or regions, dense or lazy;
:func:`enhanced_matrix` in implicit form; :func:`enhanced_layer` whole; :func:`write_enhanced`
to a file block by block), :func:`specific_peaks` (cell-type-specific peaks) and
:func:`write_bed`."""

from sccase_jax.tl.enhanced import enhanced, enhanced_layer, enhanced_matrix, write_enhanced
from sccase_jax.tl.frontend import enhance, get_counts
from sccase_jax.tl.peaks import specific_peaks, write_bed

__all__ = ["enhance", "enhanced", "enhanced_layer", "enhanced_matrix", "get_counts",
           "specific_peaks", "write_bed", "write_enhanced"]
