r"""scCASER references: peak matching, reference builders and the reference loadings P.

A reference is an AnnData of **profiles x peaks** (bulk samples, pseudo-bulk cell types or
clusters of the target itself).  It enters the model (paper Eq. 13) as ``P`` (peaks x
``k1``), the loadings of a non-negative factorisation of the reference mapped onto the
target's kept peaks.

Peak matching (:func:`match_peaks`) never assumes the same peak order:

``"name"``
    target and reference peaks with the same name.
``"overlap"``
    genomic intervals that overlap by at least one base (half-open ``[start, end)``), from
    ``chr``/``chrom``/``chromosome``/``seqnames`` + ``start`` + ``end`` columns of ``var``
    or from names ``chr:start-end`` (also ``chr-start-end`` and ``chr_start_end``).
    Intervals are sorted per chromosome and searched with :func:`numpy.searchsorted`.
``"auto"`` (default)
    overlap when both sides have coordinates, else names.

The value of a target peak in the mapped reference is the **sum** over the reference peaks
matched to it (one for name matching; reads in the overlapping regions for overlap
matching).  Unmatched target peaks get 0.

Transform of the mapped reference (:func:`transform_reference`), chosen so that each
profile is on the scale of one column of the preprocessed target ``X``: the profile is
divided by its total over the mapped peaks (``"paper"`` TF-IDF, L1 per cell) and
multiplied by the target's idf; for the ``"l2"`` TF-IDF the profile is multiplied by the
target's idf and scaled to unit L2 norm.  A mapped profile is thus the TF-IDF profile of
an average cell of its type.

Builders (arrays in, AnnData out): :func:`bulk_reference`, :func:`pseudobulk_reference`,
:func:`self_reference`.
"""

from sccase_jax.reference.builders import bulk_reference, pseudobulk_reference, self_reference
from sccase_jax.reference.mapping import (
    check_reference,
    default_k_ref,
    map_reference,
    reference_block,
    reference_loadings,
    transform_reference,
)
from sccase_jax.reference.matching import (
    PeakMatch,
    ReferenceError,
    match_peaks,
    parse_peak_names,
    peak_intervals,
)

__all__ = [
    "PeakMatch",
    "ReferenceError",
    "bulk_reference",
    "check_reference",
    "default_k_ref",
    "map_reference",
    "match_peaks",
    "parse_peak_names",
    "peak_intervals",
    "pseudobulk_reference",
    "reference_block",
    "reference_loadings",
    "self_reference",
    "transform_reference",
]
