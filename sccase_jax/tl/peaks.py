"""Cell-type-specific peaks of an enhanced AnnData: :func:`specific_peaks`, BED export.

Two kinds of ranking, both returned as one tidy table (``group, rank, peak, score, p,
p_adj``, plus ``factor`` for the factor method):

* ``method="factor"`` (the model's own, as the authors' ``identify_specific_peaks``): for
  each group, every factor's embedding row ``H[f]`` is tested one-sided (Mann-Whitney U,
  the group's cells greater than the other cells'); the factor with the largest effect
  (the AUC ``U / (n_g n_o)``) is the group's factor, and its peaks are ranked by ``W``.
  ``rank_by="share"`` (default) ranks by the share of that factor in the peak's loadings,
  ``W[p, f] / sum_f' W[p, f']`` (ties by ``W[p, f]``): peaks that belong to this factor
  rather than to every factor.  ``rank_by="loading"`` ranks by ``W[p, f]`` itself (the
  release's choice; ``score = W[p, f] / max_p W[p, f]``).  ``p`` and ``p_adj`` are the
  factor's test (Benjamini-Hochberg over all groups x factors) on every row of the group.
* ``method="wilcoxon"`` / ``"t-test"``: a differential accessibility test of each peak,
  the group against the rest, on a layer of the AnnData (default the enhanced layer;
  ``layer="X"``: the L2 TF-IDF of the counts in ``X``), by scanpy's ``rank_genes_groups``
  (its score, p and Benjamini-Hochberg adjusted p).  An output without its dense layer is
  tested on the enhanced values computed on demand, :data:`PEAK_BLOCK_ENTRIES` at a time
  (each peak's test uses that peak's values only; the adjusted p is taken over all peaks).

The table goes to ``adata.uns[key_added]`` (a DataFrame) when ``inplace``.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import scipy.sparse as sp

from sccase_jax.validate import InputError, check_int

__all__ = ["METHODS", "PEAK_BLOCK_ENTRIES", "RANK_BY", "check_groups", "factor_tests",
           "implicit_layer", "peak_coordinates", "specific_peaks", "write_bed"]

METHODS = ("factor", "wilcoxon", "t-test")
RANK_BY = ("share", "loading")
# Most cells x peaks entries of one block of the enhanced values tested at a time.
PEAK_BLOCK_ENTRIES = 1 << 25
_COORD = re.compile(r"^(?P<chr>[^:_\-]+)[:_\-](?P<start>\d+)[_\-](?P<end>\d+)$")


def check_groups(adata, groupby) -> np.ndarray:
    """The labels of ``adata.obs[groupby]`` as strings; one-line errors for a missing key,
    missing labels (NaN) or fewer than two groups."""
    if not isinstance(groupby, str) or groupby not in adata.obs:
        have = ", ".join(map(repr, list(adata.obs.columns)[:12])) or "none"
        raise InputError(f"groupby {groupby!r} is not a column of adata.obs (available: {have})")
    col = adata.obs[groupby]
    missing = int(col.isna().sum())
    if missing:
        raise InputError(f"obs[{groupby!r}] has {missing} missing labels (NaN); label or drop "
                         "those cells first")
    labels = col.astype(str).to_numpy()
    groups = np.unique(labels)
    if groups.size < 2:
        raise InputError(f"obs[{groupby!r}] has only one group ({groups[0]!r}); specific peaks "
                         "need at least two")
    return labels


def _bh(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values of a flat array."""
    p = np.asarray(p, float)
    order = np.argsort(p)
    ranked = p[order] * p.size / np.arange(1, p.size + 1)
    adj = np.minimum.accumulate(ranked[::-1])[::-1]
    out = np.empty_like(adj)
    out[order] = np.minimum(adj, 1.0)
    return out


def factor_tests(H: np.ndarray, labels: np.ndarray):
    """``(groups, auc, p, p_adj)``: for every group (rows) and factor (columns) of ``H`` (k x
    n), the one-sided Mann-Whitney test of the group's ``H[f]`` against the other cells';
    ``auc = U / (n_g n_o)``; ``p_adj`` Benjamini-Hochberg over the whole table."""
    from scipy import stats  # here, not at the top: scipy.stats costs the CLI ~0.4 s of start-up

    groups = np.unique(labels)
    k = H.shape[0]
    auc = np.zeros((groups.size, k))
    p = np.ones((groups.size, k))
    for gi, g in enumerate(groups):
        inside = labels == g
        a, b = H[:, inside], H[:, ~inside]
        res = stats.mannwhitneyu(a, b, alternative="greater", axis=1)
        auc[gi] = res.statistic / (a.shape[1] * b.shape[1])
        p[gi] = res.pvalue
    return groups, auc, p, _bh(p.ravel()).reshape(p.shape)


def _factor_table(adata, labels, key: str, n_top: int, rank_by: str) -> pd.DataFrame:
    try:
        W = np.asarray(adata.varm[f"{key}_W"], float)
        H = np.asarray(adata.obsm[f"X_{key}"], float).T
    except KeyError:
        raise InputError(f"adata has no varm[{key + '_W'!r}] / obsm[{'X_' + key!r}]: pass the "
                         "output of sccase_jax.enhance (or its key_added as key=...)") from None
    groups, auc, p, p_adj = factor_tests(H, labels)
    total = W.sum(axis=1)
    share = np.divide(W, total[:, None], out=np.zeros_like(W), where=total[:, None] > 0)
    names = adata.var_names.to_numpy()
    rows = []
    for gi, g in enumerate(groups):
        f = int(np.argmax(auc[gi]))
        w = W[:, f]
        if rank_by == "share":
            order = np.lexsort((-w, -share[:, f]))[:n_top]
            score = share[order, f]
        else:
            order = np.argsort(-w, kind="stable")[:n_top]
            score = w[order] / (w.max() if w.max() > 0 else 1.0)
        rows.append(pd.DataFrame({
            "group": g, "rank": np.arange(1, order.size + 1), "peak": names[order],
            "score": score, "p": p[gi, f], "p_adj": p_adj[gi, f], "factor": f,
            "factor_auc": auc[gi, f]}))
    return pd.concat(rows, ignore_index=True)


def implicit_layer(adata, key: str = "sccase") -> bool:
    """Whether ``adata`` is an enhance output without its dense layer that stores what
    reproduces it (the weights, or Z)."""
    info = adata.uns.get(key)
    return (key not in adata.layers and isinstance(info, dict) and "params" in info
            and (f"{key}_weights" in adata.obsp or f"{key}_Z" in adata.obsp))


def _rank(M, labels, names, n_top: int, method: str):
    """scanpy's ``rank_genes_groups`` of a cells x peaks block: ``{group: (names, scores,
    p, p_adj)}`` of its ``n_top`` best peaks."""
    import anndata as ad
    import scanpy as sc

    tmp = ad.AnnData(X=M, obs=pd.DataFrame({"g": pd.Categorical(labels)},
                                           index=[str(i) for i in range(M.shape[0])]),
                     var=pd.DataFrame(index=pd.Index(names)))
    sc.tl.rank_genes_groups(tmp, "g", method=method, n_genes=n_top, corr_method="benjamini-hochberg",
                            tie_correct=method == "wilcoxon")
    res = tmp.uns["rank_genes_groups"]
    return {g: (np.asarray(res["names"][g]).astype(str), np.asarray(res["scores"][g], float),
                np.asarray(res["pvals"][g], float), np.asarray(res["pvals_adj"][g], float))
            for g in res["names"].dtype.names}


def _rank_blocks(adata, labels, key: str, n_top: int, method: str):
    """:func:`_rank` over every peak of the implicit enhanced matrix, peak block by peak
    block; p adjusted (Benjamini-Hochberg) over all peaks, as scanpy adjusts them."""
    from sccase_jax.tl.enhanced import enhanced_matrix

    enh = enhanced_matrix(adata, key)
    n, m = enh.shape
    step = max(1, PEAK_BLOCK_ENTRIES // max(n, 1))
    names = adata.var_names.to_numpy().astype(str)
    parts: dict = {}
    for start in range(0, m, step):
        cols = slice(start, min(start + step, m))
        M = enh.select(peaks=cols).toarray()
        for g, (nm, sc_, p, _) in _rank(M, labels, names[cols], M.shape[1], method).items():
            parts.setdefault(g, []).append((nm, sc_, p))
    out = {}
    for g, blocks in parts.items():
        nm, sc_, p = (np.concatenate(x) for x in zip(*blocks))
        p = np.where(np.isnan(p), 1.0, p)
        adj = _bh(p)
        order = np.argsort(-sc_, kind="stable")[:n_top]
        out[g] = (nm[order], sc_[order], p[order], adj[order])
    return out


def _da_table(adata, labels, layer, key: str, n_top: int, method: str) -> pd.DataFrame:
    if layer in (None, key) and implicit_layer(adata, key):
        ranked = _rank_blocks(adata, labels, key, n_top, method)
        return _tidy(ranked)
    if layer == "X":
        from sccase_jax.preprocessing import tfidf

        M = tfidf(sp.csr_matrix(adata.X, dtype=np.float64).T, "l2").T.tocsr()
    else:
        layer = key if layer is None else layer
        if layer not in adata.layers:
            have = ", ".join(map(repr, adata.layers.keys())) or "none"
            raise InputError(f"layer {layer!r} not found in adata.layers (available: {have}; "
                             "'X' tests the TF-IDF of the counts)")
        M = adata.layers[layer]
    return _tidy(_rank(M, labels, adata.var_names.to_numpy().astype(str), n_top, method))


def _tidy(ranked: dict) -> pd.DataFrame:
    rows = [pd.DataFrame({"group": g, "rank": np.arange(1, len(nm) + 1), "peak": nm,
                          "score": sc_, "p": p, "p_adj": adj})
            for g, (nm, sc_, p, adj) in ranked.items()]
    return pd.concat(rows, ignore_index=True)


def specific_peaks(adata, groupby: str = "cell_type", n_top: int = 100, *, method: str = "factor",
                   rank_by: str = "share", layer: str | None = None, key: str = "sccase",
                   key_added: str | None = None, inplace: bool = True) -> pd.DataFrame:
    """The ``n_top`` most specific peaks of every group of ``obs[groupby]`` (tidy table).

    ``adata`` is the output of :func:`sccase_jax.enhance` (``key`` its ``key_added``).
    See the module docstring for the methods.  With ``inplace`` the table is also stored in
    ``adata.uns[key_added]`` (default ``f"{key}_specific_peaks"``); every argument is
    checked before any work (:class:`~sccase_jax.validate.InputError`).
    """
    n_top = check_int("n_top", n_top, 1)
    if method not in METHODS:
        raise InputError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if rank_by not in RANK_BY:
        raise InputError(f"rank_by must be one of {', '.join(RANK_BY)}, got {rank_by!r}")
    labels = check_groups(adata, groupby)
    n_top = min(n_top, adata.n_vars)
    if method == "factor":
        table = _factor_table(adata, labels, key, n_top, rank_by)
    else:
        table = _da_table(adata, labels, layer, key, n_top, method)
    if inplace:
        adata.uns[key_added or f"{key}_specific_peaks"] = table
    return table


def peak_coordinates(adata, peaks) -> pd.DataFrame:
    """``chr, start, end`` of ``peaks`` (var names): from ``var`` columns ``chrom`` (or
    ``chr``), ``start`` and ``end`` where present, else parsed from names such as
    ``chr1:100-600`` or ``chr1-100-600``."""
    peaks = pd.Index(peaks)
    var = adata.var
    chrom = next((c for c in ("chrom", "chr") if c in var.columns), None)
    if chrom is not None and {"start", "end"} <= set(var.columns):
        sub = var.loc[peaks, [chrom, "start", "end"]]
        return pd.DataFrame({"chr": sub[chrom].astype(str).to_numpy(),
                             "start": sub["start"].astype(np.int64).to_numpy(),
                             "end": sub["end"].astype(np.int64).to_numpy()}, index=peaks)
    parsed = [_COORD.match(str(p)) for p in peaks]
    bad = [str(p) for p, m in zip(peaks, parsed) if m is None]
    if bad:
        raise InputError(f"cannot read genomic coordinates from peak name {bad[0]!r} (and "
                         f"{len(bad) - 1} more): give var columns chr/start/end or names "
                         "like chr1:100-600")
    return pd.DataFrame({"chr": [m["chr"] for m in parsed],
                         "start": [int(m["start"]) for m in parsed],
                         "end": [int(m["end"]) for m in parsed]}, index=peaks)


def _safe_name(group: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(group)) or "group"


def write_bed(adata, table: pd.DataFrame, directory) -> list[str]:
    """One BED file per group of ``table`` (``GROUP.bed``: chr, start, end, peak, rank,
    score, in rank order) in ``directory`` (created); returns the paths."""
    import os

    coords = peak_coordinates(adata, table["peak"].unique())
    os.makedirs(directory, exist_ok=True)
    paths = []
    for group, sub in table.groupby("group", sort=True):
        c = coords.loc[sub["peak"]]
        bed = pd.DataFrame({"chr": c["chr"].to_numpy(), "start": c["start"].to_numpy(),
                            "end": c["end"].to_numpy(), "name": sub["peak"].to_numpy(),
                            "rank": sub["rank"].to_numpy(), "score": sub["score"].to_numpy()})
        path = os.path.join(directory, f"{_safe_name(group)}.bed")
        bed.to_csv(path, sep="\t", header=False, index=False)
        paths.append(path)
    return paths
