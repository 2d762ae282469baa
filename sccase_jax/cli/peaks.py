"""``sccase-jax peaks OUT.h5ad --groupby cell_type --out DIR``: cell-type-specific peaks.

IN is the output of ``sccase-jax enhance``.  Every check (the file, the group column,
missing labels, a single group, the method) runs before DIR is created; then DIR receives

* ``specific_peaks.tsv``: the tidy table of :func:`sccase_jax.tl.specific_peaks`
  (``group, rank, peak, score, p, p_adj`` and, for the factor method, ``factor``);
* ``bed/GROUP.bed``: each group's peaks in rank order (chr, start, end, peak, rank, score);
* ``heatmap.png``: groups x the top ``--heatmap-top`` peaks of every group, the group mean
  of the enhanced layer (computed for those peaks only when the output stores no dense
  layer; the TF-IDF of the counts for an input that is no enhance output), z-scored per peak.

IN may be any input :func:`sccase_jax.readers.read` reads; an output written without its
dense layer works as it is (the differential tests compute the enhanced values peak block
by peak block, :func:`sccase_jax.tl.specific_peaks`).
"""

from __future__ import annotations

import os
import sys

import numpy as np

from sccase_jax.cli.args import int_at_least
from sccase_jax.validate import InputError

__all__ = ["METHODS", "RANK_BY", "add_parser", "group_means", "run"]

# sccase_jax.tl.peaks.METHODS / RANK_BY, spelt out: the parser must not import JAX.
METHODS = ("factor", "wilcoxon", "t-test")
RANK_BY = ("share", "loading")


def add_parser(subparsers):
    """Add the ``peaks`` subcommand to an argparse subparsers object."""
    p = subparsers.add_parser("peaks", help="cell-type-specific peaks: tables, BED files, heatmap")
    p.add_argument("input", help="an enhanced .h5ad (the output of sccase-jax enhance)")
    p.add_argument("--groupby", required=True, help="obs column of the groups (cell types, clusters)")
    p.add_argument("--out", required=True, help="output directory (created if missing)")
    p.add_argument("--n-top", type=int_at_least("n_top"), default=100,
                   help="peaks per group (default 100)")
    p.add_argument("--method", choices=METHODS, default="factor",
                   help="factor: the group's most specific factor, its peaks by W (default); "
                        "wilcoxon / t-test: a differential test of each peak on --layer")
    p.add_argument("--rank-by", choices=RANK_BY, default="share",
                   help="factor method: the factor's share of a peak's loadings (default) or "
                        "the loading W itself (the release)")
    p.add_argument("--layer", default=None,
                   help="layer of the differential test and the heatmap (default sccase; 'X': "
                        "the TF-IDF of the counts)")
    p.add_argument("--heatmap-top", type=int_at_least("heatmap_top"), default=10,
                   help="peaks per group in the heatmap (default 10)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=run)
    return p


def group_means(M, labels: np.ndarray, groups) -> np.ndarray:
    """Groups x columns: the mean of ``M``'s rows (cells) in each group."""
    import scipy.sparse as sp

    idx = {g: i for i, g in enumerate(groups)}
    rows = np.array([idx[x] for x in labels])
    A = sp.csr_matrix((np.ones(rows.size), (rows, np.arange(rows.size))),
                      shape=(len(groups), rows.size))
    sums = np.asarray(A @ M)
    return sums / np.bincount(rows, minlength=len(groups))[:, None]


def _heatmap_matrix(adata, table, labels, layer, n_show):
    import scipy.sparse as sp

    from sccase_jax.preprocessing import tfidf
    from sccase_jax.tl.peaks import implicit_layer

    groups = sorted(table["group"].unique())
    top = table[table["rank"] <= n_show]
    peaks = list(dict.fromkeys(p for g in groups for p in top.loc[top["group"] == g, "peak"]))
    cols = adata.var_names.get_indexer(peaks)
    layer = "sccase" if layer is None else layer
    if layer != "X" and layer in adata.layers:
        M = adata.layers[layer][:, cols]
    elif layer == "sccase" and implicit_layer(adata):
        from sccase_jax.tl import enhanced

        M = enhanced(adata, peaks=cols)  # the chosen peaks only, computed on demand
    else:
        M = tfidf(sp.csr_matrix(adata.X, dtype=np.float64).T, "l2").T.tocsr()[:, cols]
    M = M.toarray() if sp.issparse(M) else np.asarray(M, float)
    means = group_means(M, labels, groups)
    sd = means.std(axis=0)
    z = (means - means.mean(axis=0)) / np.where(sd > 0, sd, 1.0)
    return z, groups, peaks


def run(args) -> int:
    """Run ``peaks``; user errors raise :class:`~sccase_jax.validate.InputError`."""
    from sccase_jax.evaluation.plotting import plot_peak_heatmap
    from sccase_jax.readers import read  # pandas and the readers: not at start-up
    from sccase_jax.tl.peaks import check_groups, peak_coordinates, specific_peaks, write_bed

    out_dir = os.path.abspath(args.out)
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise InputError(f"--out exists and is not a directory: {out_dir}")
    adata = read(args.input)
    labels = check_groups(adata, args.groupby)
    if args.layer not in (None, "X", "sccase") and args.layer not in adata.layers:
        have = ", ".join(map(repr, adata.layers.keys())) or "none"
        raise InputError(f"layer {args.layer!r} not found in adata.layers (available: {have})")
    table = specific_peaks(adata, args.groupby, args.n_top, method=args.method,
                           rank_by=args.rank_by, layer=args.layer, inplace=False)
    peak_coordinates(adata, table["peak"].unique())  # refused before anything is written
    z, groups, peaks = _heatmap_matrix(adata, table, labels, args.layer, args.heatmap_top)

    os.makedirs(out_dir, exist_ok=True)
    table.to_csv(os.path.join(out_dir, "specific_peaks.tsv"), sep="\t", index=False)
    beds = write_bed(adata, table, os.path.join(out_dir, "bed"))
    plot_peak_heatmap(z, groups, peaks, os.path.join(out_dir, "heatmap.png"),
                      title=f"{args.method} peaks by {args.groupby}")
    if not args.quiet:
        print(f"sccase-jax: wrote {len(table)} rows for {len(groups)} groups, {len(beds)} BED "
              f"files and heatmap.png to {out_dir}", file=sys.stderr)
    return 0
