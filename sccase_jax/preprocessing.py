r"""Preprocessing (paper Eq. 1): peak filter, TF-IDF, binarisation.  Arrays in, arrays out.

All functions take counts as peaks x cells (``C``; AnnData stores the transpose) and keep
scipy-sparse input sparse.

TF-IDF variants:

``"paper"`` (Eq. 1)
    :math:`x_{ij} = \frac{c_{ij}}{\sum_k c_{kj}} \log\frac{n}{\sum_t c_{it}}`: each cell
    scaled to sum 1 (L1), idf from the peak's total count.  For count (non-binary) data
    a peak with more reads than cells would get a negative idf; it is clipped at 0.
``"l2"`` (released code)
    :math:`x_{ij} = c_{ij} \log\frac{n}{\mathrm{df}_i}` with each cell then scaled to unit
    L2 norm (scikit-learn's ``TfidfTransformer(smooth_idf=False)`` with ``idf - 1``).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from sccase_jax.validate import InputError

__all__ = ["binarize", "check_preprocessed", "filter_peaks", "idf", "preprocess", "tfidf"]

TFIDF_VARIANTS = ("paper", "l2")


def _csr(C):
    return sp.csr_matrix(C, dtype=np.float64)


def filter_peaks(C, min_cells_frac: float = 0.01):
    """Keep peaks accessible in at least ``min_cells_frac`` of the cells.

    Returns ``(C_kept, keep)`` with ``keep`` a boolean mask over the peaks.
    """
    if not 0.0 <= min_cells_frac <= 1.0:
        raise InputError(f"min_cells_frac must be in [0, 1], got {min_cells_frac}")
    C = _csr(C)
    n = C.shape[1]
    df = np.asarray((C > 0).sum(axis=1)).ravel()
    keep = df >= min_cells_frac * n
    keep &= df > 0
    return C[keep], keep


def binarize(C):
    """1 where a count is positive, else 0 (sparse stays sparse)."""
    C = _csr(C).copy()
    C.data = (C.data > 0).astype(np.float64)
    C.eliminate_zeros()
    return C


def idf(C, variant: str = "paper") -> np.ndarray:
    """The inverse document frequency of each peak of the peaks x cells counts ``C``.

    ``"paper"``: ``log(n / total count of the peak)``, clipped at 0; ``"l2"``:
    ``log(n / number of cells where the peak is open)``.  A peak without any read gets
    ``log(n)``.
    """
    C = _csr(C)
    n = C.shape[1]
    if variant == "paper":
        row = np.asarray(C.sum(axis=1)).ravel()
        return np.maximum(np.log(n / np.where(row > 0, row, 1.0)), 0.0)
    df = np.asarray((C > 0).sum(axis=1)).ravel()
    return np.log(n / np.where(df > 0, df, 1.0))


def tfidf(C, variant: str = "paper"):
    """TF-IDF of peaks x cells counts; cells must have at least one count (see module doc)."""
    if variant not in TFIDF_VARIANTS:
        raise InputError(f"tfidf variant must be one of {TFIDF_VARIANTS}, got {variant!r}")
    C = _csr(C)
    if variant == "paper":
        col = np.asarray(C.sum(axis=0)).ravel()
        X = sp.diags(idf(C, variant)) @ C @ sp.diags(1.0 / np.where(col > 0, col, 1.0))
    else:
        X = sp.diags(idf(C, variant)) @ C
        norm = np.sqrt(np.asarray(X.multiply(X).sum(axis=0)).ravel())
        X = X @ sp.diags(1.0 / np.where(norm > 0, norm, 1.0))
    X = sp.csr_matrix(X)
    X.eliminate_zeros()
    return X


def preprocess(
    C,
    *,
    min_cells_frac: float = 0.0,
    tfidf_variant: str = "l2",
    binarize_counts: bool = False,
    drop_empty_cells: bool = False,
):
    """Peak filter, optional binarisation, TF-IDF: the ``X`` that :func:`sccase_jax.fit` takes.

    ``C`` is raw counts, peaks x cells (the transpose of an AnnData's cells x peaks X:
    ``preprocess(adata.X.T)``).  The defaults are :func:`sccase_jax.enhance`'s: no peak
    filter beyond dropping peaks without any read (``min_cells_frac=0``; the paper's 1 %
    is ``min_cells_frac=0.01``) and the L2 TF-IDF (``tfidf_variant="paper"`` is Eq. 1),
    chosen by measured clustering quality (docs/results.md).

    Returns ``(X, peak_mask, cell_mask)``: X is the preprocessed peaks x cells CSR matrix
    over the kept peaks and cells.  Cells left without counts by the peak filter make TF-IDF
    undefined: they raise :class:`~sccase_jax.validate.InputError` (naming how many) unless
    ``drop_empty_cells`` is set, which removes them.
    """
    C, peak_mask = filter_peaks(C, min_cells_frac)
    if C.shape[0] == 0:
        if min_cells_frac == 0:
            raise InputError("no peak has a read in any cell: the count matrix is empty")
        raise InputError(
            f"no peak is accessible in at least {min_cells_frac:.2%} of the cells; "
            "lower min_cells_frac"
        )
    if binarize_counts:
        C = binarize(C)
    cell_counts = np.asarray(C.sum(axis=0)).ravel()
    cell_mask = cell_counts > 0
    n_empty = int(np.sum(~cell_mask))
    if n_empty:
        if not drop_empty_cells:
            raise InputError(
                f"{n_empty} of {C.shape[1]} cells have no counts in the {C.shape[0]} kept peaks;"
                " drop them with drop_empty_cells=True (CLI: --drop-empty-cells)"
            )
        C = C[:, cell_mask]
    # Dropping cells can leave a peak seen in fewer cells; the filter above already decided.
    return tfidf(C, tfidf_variant), peak_mask, cell_mask


def check_preprocessed(X) -> int:
    """Refuse an all-zero preprocessed matrix; return how many cells are all zero in it.

    TF-IDF gives a peak open in every cell an idf of 0 (and the ``"paper"`` variant clips
    the idf of a peak with more reads than cells at 0), so counts that are not zero can
    still give zero profiles: a single cell, identical cells, or cells whose only peaks
    are open everywhere.  An all-zero ``X`` (peaks x cells) leaves nothing to fit and raises
    :class:`~sccase_jax.validate.InputError`; the caller decides what to do about the returned
    number of all-zero cells (:func:`sccase_jax.enhance` warns).
    """
    X = sp.csr_matrix(X)
    if X.count_nonzero() == 0:
        raise InputError(
            f"the preprocessed (TF-IDF) matrix of {X.shape[1]} cells x {X.shape[0]} peaks is "
            "all zero: every kept peak is open in every cell, so its idf is 0 (e.g. a single "
            "cell or identical cells); there is nothing to enhance"
        )
    return int(np.sum(np.asarray((X != 0).sum(axis=0)).ravel() == 0))
