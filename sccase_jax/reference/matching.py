"""Peak matching between a reference and the target: by name or by genomic overlap.

``"name"``: target and reference peaks with the same name.  ``"overlap"``: genomic
intervals that overlap by at least one base (half-open ``[start, end)``), from
``chr``/``chrom``/``chromosome``/``seqnames`` + ``start`` + ``end`` columns of ``var`` or
from names ``chr:start-end`` (also ``chr-start-end`` and ``chr_start_end``); intervals are
sorted per chromosome and searched with :func:`numpy.searchsorted`.  ``"auto"``
(default): overlap when both sides have coordinates, else names.  The order of the peaks
is never assumed.
"""

from __future__ import annotations

import re
from typing import NamedTuple

import numpy as np
import scipy.sparse as sp

from sccase_jax.validate import InputError

__all__ = ["PeakMatch", "ReferenceError", "match_peaks", "overlapping", "parse_peak_names",
           "peak_intervals"]

_CHROM_COLS = ("chr", "chrom", "chromosome", "seqnames")
_START_COLS = ("start", "chromStart")
_END_COLS = ("end", "chromEnd")
_NAME_RE = re.compile(r"^(.+?)[:_-](\d+)[-_](\d+)$")


class ReferenceError(InputError):  # noqa: A001 - a domain name, not the builtin
    """A reference that cannot be used (one-line message; the CLI exits with status 2)."""


class PeakMatch(NamedTuple):
    """How reference peaks map onto target peaks.

    Attributes
    ----------
    T
        Sparse 0/1 matrix (target peaks x reference peaks); the mapped reference is
        ``T @ ref.T``.
    method
        ``"name"`` or ``"overlap"``.
    n_target, n_matched
        Target peaks, and target peaks with at least one matched reference peak.
    n_ref, n_ref_used
        Reference peaks, and reference peaks matched to at least one target peak.
    """

    T: sp.csr_matrix
    method: str
    n_target: int
    n_matched: int
    n_ref: int
    n_ref_used: int

    @property
    def fraction(self) -> float:
        """Fraction of the target peaks that were matched."""
        return self.n_matched / max(self.n_target, 1)


def parse_peak_names(names):
    """``(chrom, start, end)`` arrays from ``chr:start-end`` style names, or ``None``.

    Accepts the separators ``chr:start-end``, ``chr-start-end`` and ``chr_start_end``.
    Returns ``None`` unless every name parses with ``start < end``.
    """
    chrom, start, end = [], [], []
    for nm in names:
        m = _NAME_RE.match(str(nm))
        if m is None:
            return None
        chrom.append(m.group(1))
        start.append(int(m.group(2)))
        end.append(int(m.group(3)))
    start, end = np.asarray(start, np.int64), np.asarray(end, np.int64)
    if len(start) and np.any(end <= start):
        return None
    return np.asarray(chrom, dtype=object), start, end


def peak_intervals(var):
    """``(chrom, start, end)`` of the peaks of an AnnData ``var`` frame, or ``None``.

    Columns (``chr``/``chrom``/``chromosome``/``seqnames``, ``start``, ``end``) win over
    the index names.
    """
    cols = {c.lower(): c for c in var.columns}
    pick = lambda opts: next((cols[o.lower()] for o in opts if o.lower() in cols), None)  # noqa: E731
    c, s, e = pick(_CHROM_COLS), pick(_START_COLS), pick(_END_COLS)
    if c is not None and s is not None and e is not None:
        try:
            start = np.asarray(var[s], dtype=np.int64)
            end = np.asarray(var[e], dtype=np.int64)
        except (TypeError, ValueError):
            return parse_peak_names(var.index)
        return np.asarray(var[c].astype(str), dtype=object), start, end
    return parse_peak_names(var.index)


def overlapping(t_iv, r_iv):
    """Index pairs ``(rows, cols)`` of the intervals of ``t_iv`` and ``r_iv`` (each ``(chrom,
    start, end)`` arrays) that overlap by at least one base (half-open intervals)."""
    return _overlap_pairs(t_iv, r_iv)


def _overlap_pairs(t_iv, r_iv):
    """Index pairs (target, reference) of overlapping half-open intervals."""
    tc, ts, te = t_iv
    rc, rs, re_ = r_iv
    rows, cols = [], []
    for chrom in np.intersect1d(np.unique(tc), np.unique(rc)):
        ti = np.flatnonzero(tc == chrom)
        ri = np.flatnonzero(rc == chrom)
        order = np.argsort(rs[ri], kind="stable")
        ri, starts, ends = ri[order], rs[ri][order], re_[ri][order]
        width = int(np.max(ends - starts))
        # Candidates start in (s - width, e): any reference interval overlapping [s, e).
        lo = np.searchsorted(starts, ts[ti] - width, side="right")
        hi = np.searchsorted(starts, te[ti], side="left")
        cnt = np.maximum(hi - lo, 0)
        if not cnt.sum():
            continue
        t_rep = np.repeat(ti, cnt)
        offs = np.arange(cnt.sum()) - np.repeat(np.cumsum(cnt) - cnt, cnt)
        cand = np.repeat(lo, cnt) + offs
        ok = ends[cand] > ts[t_rep]
        rows.append(t_rep[ok])
        cols.append(ri[cand[ok]])
    if not rows:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(rows), np.concatenate(cols)


def match_peaks(target_var, ref_var, method: str = "auto") -> PeakMatch:
    """Match reference peaks to target peaks by name or genomic overlap (see module doc).

    ``target_var`` and ``ref_var`` are AnnData ``var`` frames (index = peak names).
    """
    if method not in ("auto", "name", "overlap"):
        raise InputError(f"peak_match must be 'auto', 'name' or 'overlap', got {method!r}")
    n_t, n_r = len(target_var), len(ref_var)
    t_iv = r_iv = None
    if method != "name":
        t_iv, r_iv = peak_intervals(target_var), peak_intervals(ref_var)
        if method == "overlap" and (t_iv is None or r_iv is None):
            side = "target" if t_iv is None else "reference"
            raise ReferenceError(
                f"peak_match='overlap' needs chr/start/end columns or chr:start-end names; the "
                f"{side} peaks have neither"
            )
    if method == "name" or t_iv is None or r_iv is None:
        used = "name"
        ref_pos = {str(nm): i for i, nm in enumerate(ref_var.index)}
        pairs = [(i, ref_pos[str(nm)]) for i, nm in enumerate(target_var.index) if str(nm) in ref_pos]
        rows = np.asarray([p[0] for p in pairs], np.int64)
        cols = np.asarray([p[1] for p in pairs], np.int64)
    else:
        used = "overlap"
        rows, cols = _overlap_pairs(t_iv, r_iv)
    T = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(n_t, n_r))
    T.sum_duplicates()
    T.data[:] = 1.0
    return PeakMatch(T, used, n_t, int(np.unique(rows).size), n_r, int(np.unique(cols).size))
