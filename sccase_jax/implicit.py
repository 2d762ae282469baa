r"""The enhanced matrix in implicit form: computed on demand from the weights, never stored dense.

The enhanced matrix is :math:`E = (X B)^\top` (cells x peaks), with X the preprocessed
peaks x cells matrix (scipy CSR) and B the cells x cells output weights
(:func:`sccase_jax.output.output_weights`): scipy sparse when the output used each cell's
neighbours (the default keeps 300 per cell, and every support-restricted fit), a dense
n x n array when it used every cell.  Stored dense, E is cells x peaks floats (12 GB at
20,000 cells x 150,000 peaks); X and B together are about the size of the counts.

:class:`EnhancedMatrix` holds X, B, the optional min-max scaling (:class:`Scaling`) and
the layer's dtype, and gives any part of E on demand: rows and columns
(:meth:`EnhancedMatrix.select`, numpy-style indexing), cell blocks
(:meth:`EnhancedMatrix.blocks`), the whole matrix (:meth:`EnhancedMatrix.toarray`), a
lazily evaluated dask array (:meth:`EnhancedMatrix.to_dask`) and products with vectors
(:meth:`EnhancedMatrix.linear_operator`, for a PCA without the dense matrix).

Exactness.  Every entry is the same arithmetic wherever it is computed: entry (j, p) is
the sum over X's row p in its stored order of ``X[p, i] B[i, j]`` in float64 (scipy's
sparse x sparse and sparse x dense products both accumulate in that order), rounded to
float32, then scaled with the stored per-peak and per-cell ranges, then cast to the
layer's dtype.  So a block, a column subset or a single entry equals the corresponding
entry of the stored layer bit for bit.
"""

from __future__ import annotations

import uuid
from typing import NamedTuple

import numpy as np
import scipy.sparse as sp

from sccase_jax.validate import InputError

__all__ = ["BLOCK_ENTRIES", "EnhancedMatrix", "Scaling", "materialise"]

# Most entries of one dense block of E (and of its float64 product before rounding): at
# 150,000 peaks a block is then about 220 cells.
BLOCK_ENTRIES = 1 << 25


class Scaling(NamedTuple):
    """The released code's min-max scaling of E, per peak then per cell, as stored ranges.

    A scaled entry is ``((E[j, p] - peak_min[p]) / peak_span[p] - cell_min[j]) /
    cell_span[j]`` in float32 (spans of 0 stored as 1), the operations of
    :func:`sccase_jax.output.scale_block` in their order.
    """

    peak_min: np.ndarray
    peak_span: np.ndarray
    cell_min: np.ndarray
    cell_span: np.ndarray

    def apply(self, E: np.ndarray, cells, peaks) -> np.ndarray:
        """Scale rows ``cells`` x columns ``peaks`` of raw E in place (index arrays or None)."""
        pk = slice(None) if peaks is None else peaks
        ce = slice(None) if cells is None else cells
        E -= self.peak_min[pk]
        E /= self.peak_span[pk]
        E -= self.cell_min[ce][:, None]
        E /= self.cell_span[ce][:, None]
        return E

    def as_dict(self) -> dict:
        """The ranges as a dict of arrays (for ``uns``)."""
        return {k: np.asarray(v) for k, v in self._asdict().items()}

    @classmethod
    def from_dict(cls, d) -> Scaling:
        return cls(*(np.asarray(d[k], np.float32) for k in cls._fields))


def _peak_ranges(lo: np.ndarray, hi: np.ndarray):
    span = hi - lo
    return lo, np.where(span > 0, span, 1).astype(lo.dtype)


def _scale_rows(E: np.ndarray, lo, span):
    """Per-peak scaling of raw rows, in place; returns the rows' (min, span or 1)."""
    E -= lo
    E /= span
    rlo = E.min(axis=1) if E.shape[1] else np.zeros(E.shape[0], E.dtype)
    rhi = E.max(axis=1) if E.shape[1] else np.zeros(E.shape[0], E.dtype)
    return _peak_ranges(rlo, rhi)


def materialise(X, B, *, scale: bool = False, block: int = 1024, device: bool | None = None,
                progress=None):
    """``(E, scaling)``: the whole enhanced matrix in float32 (scaled in place when ``scale``)
    and its :class:`Scaling` (``None`` without ``scale``); one pass of products."""
    from sccase_jax.output import block_product

    m, n = X.shape
    E = np.empty((n, m), np.float32)
    rows = _rows(block, m)
    raw = block_product(X, B, rows, np.float32, device)
    for j in range(0, n, rows):
        E[j : j + rows] = raw(j)
        if progress is not None:
            progress(min(j + rows, n), n)
    if not scale:
        return E, None
    lo, span = _peak_ranges(E.min(axis=0) if n else np.zeros(m, np.float32),
                            E.max(axis=0) if n else np.zeros(m, np.float32))
    rlo, rspan = _scale_rows(E, lo, span)
    E -= rlo[:, None]
    E /= rspan[:, None]
    return E, Scaling(lo, span, rlo, rspan)


def _rows(block: int, m: int) -> int:
    return max(1, min(int(block), BLOCK_ENTRIES // max(m, 1)))


def _index(sel, size: int, what: str) -> np.ndarray:
    """Positions ``0..size-1`` chosen by ``sel`` (None, slice, int, ints or a boolean mask)."""
    if sel is None:
        return np.arange(size)
    if isinstance(sel, slice):
        return np.arange(size)[sel]
    a = np.asarray(sel)
    if a.dtype == bool:
        if a.shape != (size,):
            raise InputError(f"{what}: a boolean mask must have {size} entries, got {a.shape}")
        return np.flatnonzero(a)
    if a.dtype.kind not in "iu":
        raise InputError(f"{what} must be positions (integers), a boolean mask or a slice")
    a = a.reshape(-1).astype(np.int64)
    if a.size and (a.min() < -size or a.max() >= size):
        raise InputError(f"{what}: positions must lie in [0, {size}), got {a.min()}..{a.max()}")
    return np.where(a < 0, a + size, a)


class EnhancedMatrix:
    """E = (X B)^T on demand (see the module docstring), or a rows x columns view of it.

    Parameters
    ----------
    X
        Preprocessed peaks x cells matrix (scipy sparse or dense), as the fit saw it.
    B
        Cells x cells output weights (scipy sparse, or dense).
    scaling
        The stored min-max ranges when the output is scaled (:meth:`with_scaling` computes
        them), else ``None``.
    dtype
        The layer's dtype (float32 or float16): every value is rounded to float32 first.
    """

    ndim = 2

    def __init__(self, X, B, scaling: Scaling | None = None, dtype=np.float32, *,
                 cells=None, peaks=None):
        self.X = X.tocsr() if sp.issparse(X) else sp.csr_matrix(np.asarray(X))
        self.B = B.tocsc() if sp.issparse(B) else np.asarray(B)
        m, n = self.X.shape
        if self.B.shape != (n, n):
            raise InputError(f"the weights are {self.B.shape}, expected cells x cells = {(n, n)}")
        self.scaling = scaling
        self.dtype = np.dtype(dtype)
        self.cells = None if cells is None else np.asarray(cells, np.int64)
        self.peaks = None if peaks is None else np.asarray(peaks, np.int64)
        self._Xp = None  # X's rows of the chosen peaks, made on first use

    # -- shape and views ----------------------------------------------------------------------

    @property
    def shape(self) -> tuple[int, int]:
        m, n = self.X.shape
        return (n if self.cells is None else self.cells.size,
                m if self.peaks is None else self.peaks.size)

    @property
    def nbytes(self) -> int:
        """Bytes of the dense matrix in its dtype."""
        return int(np.prod(self.shape)) * self.dtype.itemsize

    def __repr__(self) -> str:
        n, m = self.shape
        return (f"EnhancedMatrix({n} cells x {m} peaks, {self.dtype}, "
                f"{'sparse' if sp.issparse(self.B) else 'dense'} weights"
                f"{', min-max scaled' if self.scaling is not None else ''})")

    def select(self, cells=None, peaks=None) -> EnhancedMatrix:
        """A view of the chosen rows (cells) and columns (peaks): positions in this view
        (integers, a boolean mask or a slice; ``None``: all)."""
        n, m = self.shape
        c = _index(cells, n, "cells")
        p = _index(peaks, m, "peaks")
        c = c if self.cells is None else self.cells[c]
        p = p if self.peaks is None else self.peaks[p]
        view = EnhancedMatrix.__new__(EnhancedMatrix)
        view.X, view.B, view.scaling, view.dtype = self.X, self.B, self.scaling, self.dtype
        view.cells = None if cells is None and self.cells is None else c
        view.peaks = None if peaks is None and self.peaks is None else p
        view._Xp = self._Xp if peaks is None else None
        return view

    def astype(self, dtype) -> EnhancedMatrix:
        """The same view with values cast to ``dtype`` (after rounding to float32)."""
        view = self.select()
        view.dtype = np.dtype(dtype)
        return view

    def _rows_of_X(self):
        if self._Xp is None:
            self._Xp = self.X if self.peaks is None else self.X[self.peaks]
        return self._Xp

    # -- values ---------------------------------------------------------------------------------

    def _values(self, cells: np.ndarray) -> np.ndarray:
        """Rows ``cells`` (positions in X's columns) of this view's columns, float32, scaled."""
        Bc = self.B[:, cells]
        P = self._rows_of_X() @ Bc
        E = (P.toarray() if sp.issparse(P) else np.asarray(P)).T.astype(np.float32, copy=False)
        E = np.ascontiguousarray(E)
        if self.scaling is not None:
            self.scaling.apply(E, cells, self.peaks)
        return E

    def _cell_positions(self) -> np.ndarray:
        return np.arange(self.X.shape[1]) if self.cells is None else self.cells

    def blocks(self, block: int = 1024, *, device: bool | None = None, progress=None):
        """Yield ``(start, E_block)``: consecutive rows of this view in the layer's dtype.

        Blocks hold at most ``block`` rows and :data:`BLOCK_ENTRIES` entries.  The whole
        matrix's blocks run through :func:`sccase_jax.output.block_product` (on the device
        for dense weights on a GPU, ``device``); ``progress(done, total)`` is called after
        each block.
        """
        n, m = self.shape
        rows = _rows(block, m)
        whole = self.cells is None and self.peaks is None
        if whole:
            from sccase_jax.output import block_product

            raw = block_product(self.X, self.B, rows, np.float32, device)
        pos = self._cell_positions()
        for j in range(0, n, rows):
            if whole:
                E = raw(j)
                if self.scaling is not None:
                    self.scaling.apply(E, pos[j : j + rows], None)
            else:
                E = self._values(pos[j : j + rows])
            if progress is not None:
                progress(min(j + rows, n), n)
            yield j, E.astype(self.dtype, copy=False)

    def toarray(self, block: int = 1024, *, progress=None) -> np.ndarray:
        """The dense matrix of this view, in the layer's dtype."""
        out = np.empty(self.shape, self.dtype)
        for j, E in self.blocks(block, progress=progress):
            out[j : j + E.shape[0]] = E
        return out

    def __array__(self, dtype=None, copy=None):
        E = self.toarray()
        return E if dtype is None else E.astype(dtype, copy=False)

    def __getitem__(self, key) -> np.ndarray:
        """numpy-style ``E[rows, cols]`` (slices, integers, integer arrays, boolean masks):
        the dense values (what dask's ``from_array`` asks for)."""
        if not isinstance(key, tuple):
            key = (key,)
        if len(key) > 2 or any(k is Ellipsis or k is None for k in key):
            raise InputError("index the enhanced matrix with at most [rows, columns]")
        rows, cols = (key + (slice(None),))[:2]
        scalar = [isinstance(k, (int, np.integer)) for k in (rows, cols)]
        out = self.select(np.atleast_1d(rows) if scalar[0] else rows,
                          np.atleast_1d(cols) if scalar[1] else cols).toarray()
        if scalar[0] and scalar[1]:
            return out[0, 0]
        if scalar[0]:
            return out[0]
        if scalar[1]:
            return out[:, 0]
        return out

    # -- scaling --------------------------------------------------------------------------------

    def with_scaling(self, block: int = 1024, *, progress=None) -> EnhancedMatrix:
        """The whole matrix with its min-max :class:`Scaling` computed (two passes of
        products over cell blocks: the per-peak ranges, then the per-cell ranges)."""
        if self.cells is not None or self.peaks is not None:
            raise InputError("the min-max ranges are those of the whole matrix: compute them "
                             "before selecting cells or peaks")
        plain = EnhancedMatrix(self.X, self.B, None, np.float32)
        n, m = plain.shape
        lo = np.full(m, np.inf, np.float32)
        hi = np.full(m, -np.inf, np.float32)
        for _, E in plain.blocks(block, progress=progress):
            np.minimum(lo, E.min(axis=0), out=lo)
            np.maximum(hi, E.max(axis=0), out=hi)
        lo, span = _peak_ranges(lo, hi) if n else (np.zeros(m, np.float32),) * 2
        rlo = np.empty(n, np.float32)
        rspan = np.empty(n, np.float32)
        for j, E in plain.blocks(block, progress=progress):
            rlo[j : j + E.shape[0]], rspan[j : j + E.shape[0]] = _scale_rows(E, lo, span)
        return EnhancedMatrix(self.X, self.B, Scaling(lo, span, rlo, rspan), self.dtype)

    # -- products with vectors, lazily evaluated arrays -----------------------------------------

    def linear_operator(self, center: bool = False):
        """This view as a scipy ``LinearOperator`` (float64), optionally with every column
        centred on its mean over the rows (what a PCA decomposes).

        ``E v = B_c^T (X_p^T v)`` and ``E^T u = X_p (B_c u)``: each product costs one pass
        over X's and B's stored entries; the min-max scaling and the centring are rank-one
        corrections.  Values are those of the layer before rounding to float32 (and the
        layer's dtype).
        """
        from scipy.sparse.linalg import LinearOperator

        Xp = self._rows_of_X()
        pos = self._cell_positions()
        Bc = self.B[:, pos] if self.cells is not None else self.B
        s = self.scaling
        if s is not None:
            pk = slice(None) if self.peaks is None else self.peaks
            lo = s.peak_min[pk].astype(np.float64)
            span = s.peak_span[pk].astype(np.float64)
            rlo = s.cell_min[pos].astype(np.float64)
            rspan = s.cell_span[pos].astype(np.float64)

        def raw_mv(v):
            return np.asarray(Bc.T @ (Xp.T @ v)).ravel()

        def raw_rmv(u):
            return np.asarray(Xp @ (Bc @ u)).ravel()

        def mv(v):
            v = np.asarray(v, np.float64).ravel()
            if s is None:
                return raw_mv(v)
            w = v / span
            return (raw_mv(w) - lo @ w - rlo * v.sum()) / rspan

        def rmv(u):
            u = np.asarray(u, np.float64).ravel()
            if s is None:
                return raw_rmv(u)
            w = u / rspan
            return (raw_rmv(w) - lo * w.sum()) / span - w @ rlo

        n, m = self.shape
        if center:
            mu = rmv(np.full(n, 1.0 / n)) if n else np.zeros(m)
            mv_c = lambda v: mv(v) - mu @ np.asarray(v, np.float64).ravel()  # noqa: E731
            rmv_c = lambda u: rmv(u) - mu * np.asarray(u, np.float64).sum()  # noqa: E731
            return LinearOperator((n, m), matvec=mv_c, rmatvec=rmv_c, dtype=np.float64)
        return LinearOperator((n, m), matvec=mv, rmatvec=rmv, dtype=np.float64)

    def to_dask(self, block: int = 1024):
        """A dask array of this view, computed block by block when asked (``pip install
        dask``); chunks of at most ``block`` rows x all columns."""
        try:
            import dask.array as da
        except ImportError:
            raise InputError("a lazily evaluated array needs dask: pip install 'dask[array]' "
                             "(or use the matrix's blocks/select without it)") from None
        n, m = self.shape
        rows = _rows(block, m)
        return da.from_array(self, chunks=(rows, m), asarray=False, fancy=False,
                             name=f"sccase-enhanced-{uuid.uuid4().hex}",
                             meta=np.empty((0, 0), self.dtype))
